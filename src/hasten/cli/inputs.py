"""``--image``, ``--mask``, ``--strength``, ``--control-image``, ``--fps`` and ``--lora``: a pipeline's inputs on the
command line.

:func:`add_input_options` adds the flags; :func:`with_inputs` reads the
images (bounded, :mod:`hasten.integrations.images`) and adds them to a run's
call, refusing by name a flag the pipeline has no input for: before the
weights load for a saved folder (its class is in ``model_index.json``), just
after for a model id. Every other check runs before the model loads.
"""

from __future__ import annotations

import argparse
import dataclasses

from hasten.errors import HastenError
from hasten.integrations.images import INPUT_FLAGS, check_inputs_taken, check_mask, pipeline_class, read_image
from hasten.integrations.lora import check_lora_file, load_lora, parse_lora, use_lora
from hasten.opening import model_source, shipped_or_spec
from hasten.spec import RunSpec


def add_input_options(p: argparse.ArgumentParser) -> None:
    """The image-input and video-output flags of ``hasten sample`` and ``hasten bench``."""
    p.add_argument("--image", metavar="PATH", help="input image: img2img, inpaint, Flux Kontext / Fill, "
                   "image-to-video pipelines")
    p.add_argument("--mask", metavar="PATH", help="inpaint / Fill mask of --image's size (white = repaint)")
    p.add_argument("--strength", type=float, help="img2img / inpaint: how far the image is noised, in (0, 1] "
                   "(default: the pipeline's)")
    p.add_argument("--control-image", metavar="PATH", help="ControlNet pipelines: the control image")
    p.add_argument("--lora", metavar="PATH[:SCALE]", help="pipelines: load this LoRA (.safetensors, diffusers or "
                   "kohya layout) into the network at SCALE (default 1; 0 gives the base model); needs peft")
    p.add_argument("--fps", type=float, default=16.0, help="video models: frames per second of the MP4")


def given_inputs(args: argparse.Namespace) -> list[str]:
    """The input flags given on the command line."""
    return [flag for flag in INPUT_FLAGS if getattr(args, flag[2:].replace("-", "_"), None) is not None]


def with_inputs(spec: RunSpec, args: argparse.Namespace) -> RunSpec:
    """``spec`` with the input flags' images and strength in its call, each checked before the model loads."""
    if getattr(args, "fps", None) is not None and not (0 < args.fps <= 240):
        raise HastenError(f"--fps must be in (0, 240], got {args.fps}")
    if getattr(args, "lora", None) is not None:
        if isinstance(spec.model, str) and model_source(spec.model) == "embedded":
            raise HastenError(f"--lora applies to diffusers pipelines, not to the embedded model {spec.model}")
        check_lora_file(parse_lora(args.lora)[0])
    given = given_inputs(args)
    if not given:
        return spec
    if not isinstance(spec.model, str):
        keys = {f: INPUT_FLAGS[f] for f in given}
    else:
        if model_source(spec.model) == "embedded":
            raise HastenError(f"{', '.join(given)}: apply to diffusers pipelines (a folder, a model id or "
                              f"random:NAME), not to the embedded model {spec.model}")
        cls = pipeline_class(shipped_or_spec(spec.model))
        keys = check_inputs_taken(cls, given) if cls is not None else {f: INPUT_FLAGS[f] for f in given}
    if args.strength is not None and not (0 < args.strength <= 1):
        raise HastenError(f"--strength must be in (0, 1], got {args.strength}")
    if args.mask is not None and args.image is None:
        raise HastenError("--mask needs --image (the image the mask repaints)")
    call = dict(spec.call)
    for flag, key in keys.items():
        if flag == "--strength":
            call[key] = args.strength
        elif flag != "--mask":
            call[key] = read_image(getattr(args, flag[2:].replace("-", "_")), flag)
    if "--mask" in keys:
        call[keys["--mask"]] = read_image(args.mask, "--mask", mode="L")
        check_mask(call[keys["--mask"]], call[keys["--image"]])
    return dataclasses.replace(spec, call=call)


def check_opened(pipe, args: argparse.Namespace) -> None:
    """After the model opened (a model id, ``random:NAME``): refuse the input flags its class has no input for."""
    given = given_inputs(args)
    if given and pipe is not None:
        check_inputs_taken(type(pipe), given)


def apply_lora(pipe, args: argparse.Namespace) -> None:
    """``--lora PATH[:SCALE]``: load it into the opened pipeline and sample with it."""
    if getattr(args, "lora", None) is None or pipe is None:
        return
    path, scale = parse_lora(args.lora)
    load_lora(pipe, path, "lora")
    use_lora(pipe, "lora", scale)


def make_tiny_lora(kind: str, path: str) -> str:
    """``hasten make-tiny --lora FILE``: a small random LoRA for the tiny pipeline of ``kind``."""
    from hasten.testing.lora import save_tiny_lora
    from hasten.testing.pipelines import tiny_pipeline

    return str(save_tiny_lora(tiny_pipeline(kind), path))
