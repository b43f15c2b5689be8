"""A pipeline's image inputs: read and bounded (``--image``, ``--mask``, ``--control-image``, uploads), and which
pipelines take which.

An image is read from a path or from bytes with Pillow, its pixel count
checked from the header before any pixel is decoded (a decompression bomb is
refused in one line), and converted to RGB (a mask to L, and checked against
its image's size). :func:`input_keys` maps each input flag to the call key a
pipeline class takes it as: ``image`` for img2img, inpaint, Kontext, Fill and
image-to-video; ``mask_image``; ``strength``; and ``control_image``, which the
SD / SDXL ControlNet text-to-image pipelines call ``image``. A flag the
pipeline has no argument for is refused by name, before its weights load
where the class is known from the folder's ``model_index.json``.
"""

from __future__ import annotations

import inspect
import io
import json
from pathlib import Path
from typing import Any

from hasten.errors import HastenError

#: the most pixels an input image may hold (width x height): 4096 x 4096
MAX_PIXELS = 4096 * 4096
#: the input flags and the call key each becomes (ControlNet text-to-image pipelines: see :func:`input_keys`)
INPUT_FLAGS = {"--image": "image", "--mask": "mask_image", "--strength": "strength",
               "--control-image": "control_image"}


def _open(source, flag: str, max_pixels: int):
    from PIL import Image, UnidentifiedImageError

    if max_pixels < 1:
        raise HastenError(f"max_pixels must be >= 1, got {max_pixels}")
    try:
        with Image.open(source) as im:  # reads the header only
            w, h = im.size
            if w * h > max_pixels:
                raise HastenError(f"{flag}: {w}x{h} is {w * h} pixels, more than the {max_pixels} allowed")
            im.load()
            return im.copy()
    except HastenError:
        raise
    except Image.DecompressionBombError as err:
        raise HastenError(f"{flag}: refused as a decompression bomb ({err})") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        what = "not an image Pillow can read" if isinstance(err, UnidentifiedImageError) else str(err).split("\n")[0]
        raise HastenError(f"{flag}: {what}") from None


def read_image(path: str | Path, flag: str = "--image", mode: str = "RGB", max_pixels: int = MAX_PIXELS):
    """The image at ``path`` as a PIL image in ``mode``; a missing, unreadable or too large file -> one line."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise HastenError(f"{flag} {path}: no such file")
    image = _open(p, f"{flag} {path}", max_pixels).convert(mode)
    image.filename = str(path)  # what result.json records
    return image


def image_from_bytes(data: bytes, flag: str = "image", mode: str = "RGB", max_pixels: int = MAX_PIXELS):
    """An uploaded image (``data``) as a PIL image in ``mode``, with the limits of :func:`read_image`."""
    if not data:
        raise HastenError(f"{flag}: the upload is empty")
    image = _open(io.BytesIO(data), flag, max_pixels).convert(mode)
    image.filename = flag
    return image


def check_mask(mask, image, flag: str = "--mask") -> None:
    """Refuse a mask whose size differs from its image's."""
    if mask.size != image.size:
        raise HastenError(f"{flag}: the mask is {mask.size[0]}x{mask.size[1]} but the image is "
                          f"{image.size[0]}x{image.size[1]}; give a mask of the image's size")


def pipeline_class(spec: str):
    """The diffusers pipeline class of a saved folder (from ``model_index.json``), or None when not a folder."""
    index = Path(str(spec)).expanduser() / "model_index.json"
    if not index.is_file():
        return None
    try:
        name = json.loads(index.read_text())["_class_name"]
        import diffusers

        return getattr(diffusers, name)
    except (ValueError, KeyError, AttributeError, ImportError):
        return None  # the loader gives its own error


def input_keys(cls) -> dict[str, str]:
    """The input flags a pipeline class takes, each with its call key."""
    params = inspect.signature(cls.__call__).parameters
    components = inspect.signature(cls.__init__).parameters
    keys = {}
    control_as_image = "controlnet" in components and "control_image" not in params
    if "image" in params and not control_as_image:
        keys["--image"] = "image"
    for flag in ("--mask", "--strength"):
        if INPUT_FLAGS[flag] in params:
            keys[flag] = INPUT_FLAGS[flag]
    if "control_image" in params:
        keys["--control-image"] = "control_image"
    elif control_as_image:
        keys["--control-image"] = "image"
    return keys


def check_inputs_taken(cls, given: list[str]) -> dict[str, str]:
    """The call key of each flag in ``given``; a flag ``cls`` takes no input for is refused by name."""
    keys = input_keys(cls)
    refused = [f for f in given if f not in keys]
    if refused:
        taken = ", ".join(keys) or "none of them"
        raise HastenError(f"{', '.join(refused)}: {cls.__name__} takes no such input (it takes {taken})")
    return {f: keys[f] for f in given}


def probe_inputs(pipe, size: tuple[int, int] | None = None) -> dict[str, Any]:
    """Neutral inputs (mid-grey image, empty mask) a pipeline needs to be called at all, for a start-up probe."""
    from PIL import Image

    keys = input_keys(type(pipe))
    if "--image" not in keys and "--control-image" not in keys:
        return {}
    if size is None:
        factor = getattr(pipe, "vae_scale_factor", 8)
        network = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
        sample = getattr(getattr(network, "config", None), "sample_size", None)
        side = int(sample * factor) if isinstance(sample, int) else 64
        size = (side, side)
    grey = Image.new("RGB", size, (128, 128, 128))
    call = {key: grey for flag, key in keys.items() if flag in ("--image", "--control-image")}
    if "--mask" in keys:
        call["mask_image"] = Image.new("L", size, 255)
    return call


def is_video_pipeline(pipe) -> bool:
    """Whether a pipeline makes video (its call takes ``num_frames``)."""
    return pipe is not None and "num_frames" in inspect.signature(type(pipe).__call__).parameters
