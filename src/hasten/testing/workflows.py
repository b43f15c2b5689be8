"""Tiny image-input pipelines (img2img, inpaint, Kontext, Fill, ControlNet), built offline from configs.

Not used when sampling. Each shares the components of its text-to-image tiny
pipeline (:func:`hasten.testing.text_to_image.text_to_image_pipeline`) where the real
checkpoints do, and adds what the workflow needs: a 9-channel UNet for the
inpainting checkpoints, Flux Fill's wider transformer input, a ControlNet
sized to the tiny UNet or transformer. :func:`tiny_images` builds the small
image, mask and control image the calls take, in memory.
"""

from __future__ import annotations

import numpy as np
import torch

from hasten.errors import HastenError
from hasten.testing.text_to_image import text_to_image_pipeline

#: the image-input kinds of ``hasten make-tiny`` and the tests
WORKFLOW_KINDS = ("sd-img2img", "sd-inpaint", "sdxl-img2img", "sdxl-inpaint", "flux-img2img", "flux-inpaint",
                  "flux-kontext", "flux-fill", "sd-controlnet", "sdxl-controlnet", "flux-controlnet")


def tiny_images(size: int = 16, seed: int = 0) -> dict:
    """A small RGB image, a mask (white = repaint: the right half) and a control image, as PIL images."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
    mask = np.zeros((size, size), dtype=np.uint8)
    mask[:, size // 2:] = 255
    control = Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
    return {"image": image, "mask_image": Image.fromarray(mask), "control_image": control}


def workflow_call(kind: str) -> dict:
    """A small valid call of each tiny workflow pipeline (besides num_inference_steps, generator, output_type)."""
    images = tiny_images()
    base = {"sd": dict(prompt="a cat"), "sdxl": dict(prompt="a cat", height=16, width=16),
            "flux": dict(prompt="a cat", height=16, width=16, max_sequence_length=8)}[kind.split("-")[0]]
    workflow = kind.split("-", 1)[1]
    if workflow == "img2img":  # the UNet pipelines take their size from the image
        sized = {k: v for k, v in base.items() if kind.startswith("flux") or k not in ("height", "width")}
        return {**sized, "image": images["image"]}
    if workflow in ("inpaint", "fill"):
        return {**base, "image": images["image"], "mask_image": images["mask_image"]}
    if workflow == "kontext":
        return {**base, "image": images["image"], "max_area": 16 * 16, "_auto_resize": False}
    key = "control_image" if kind.startswith("flux") else "image"
    return {**base, key: images["control_image"]}


def workflow_pipeline(kind: str, seed: int = 0, unet_channels: int = 9, prediction: str = "epsilon",
                      scheduler_cls=None):
    """The tiny pipeline of a :data:`WORKFLOW_KINDS` entry.

    ``unet_channels``: 9 (the inpainting checkpoints' UNet, mask and masked
    image as extra input channels) or 4 (a text-to-image UNet in the inpaint
    pipeline, which then blends the known region back after every step), for
    ``sd-inpaint`` and ``sdxl-inpaint``. ``prediction`` and ``scheduler_cls``
    as for :func:`hasten.testing.text_to_image.text_to_image_pipeline` (the UNet families).
    """
    import diffusers as d

    if kind not in WORKFLOW_KINDS:
        raise HastenError(f"unknown tiny workflow pipeline {kind!r}; valid: {', '.join(WORKFLOW_KINDS)}")
    family, workflow = kind.split("-", 1)
    shared = {} if family == "flux" else {"prediction": prediction, "scheduler_cls": scheduler_cls}
    parts = text_to_image_pipeline(family, seed=seed, **shared).components
    torch.manual_seed(seed + 1)
    if workflow == "inpaint" and family != "flux" and unet_channels != 4:
        if unet_channels != 9:
            raise HastenError(f"unet_channels must be 4 or 9, got {unet_channels!r}")
        parts["unet"] = d.UNet2DConditionModel.from_config(parts["unet"].config, in_channels=9)
    if kind == "flux-fill":  # latents, masked image latents and the 2x2-packed mask, side by side
        config = dict(parts["transformer"].config)
        parts["transformer"] = d.FluxTransformer2DModel.from_config(config, in_channels=12, out_channels=4).eval()
    if workflow == "controlnet":
        parts["controlnet"] = _controlnet(family, parts)
    classes = {
        "sd-img2img": d.StableDiffusionImg2ImgPipeline, "sd-inpaint": d.StableDiffusionInpaintPipeline,
        "sdxl-img2img": d.StableDiffusionXLImg2ImgPipeline, "sdxl-inpaint": d.StableDiffusionXLInpaintPipeline,
        "flux-img2img": d.FluxImg2ImgPipeline, "flux-inpaint": d.FluxInpaintPipeline,
        "flux-kontext": d.FluxKontextPipeline, "flux-fill": d.FluxFillPipeline,
        "sd-controlnet": d.StableDiffusionControlNetPipeline, "sdxl-controlnet": d.StableDiffusionXLControlNetPipeline,
        "flux-controlnet": d.FluxControlNetPipeline,
    }
    cls = classes[kind]
    if family == "sdxl" and workflow in ("img2img", "inpaint"):
        parts["requires_aesthetics_score"] = False
    names = set(cls._get_signature_keys(cls)[0]) | set(cls._optional_components)
    pipe = cls(**{k: v for k, v in parts.items() if k in names})
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _controlnet(family: str, parts: dict):
    """A ControlNet sized to the tiny pipeline's network (its hint embedding downsamples as the VAE does)."""
    import diffusers as d

    if family == "flux":
        config = {k: v for k, v in parts["transformer"].config.items() if not k.startswith("_")}
        return d.FluxControlNetModel(**{k: config[k] for k in (
            "patch_size", "in_channels", "attention_head_dim", "num_attention_heads", "joint_attention_dim",
            "pooled_projection_dim", "guidance_embeds", "axes_dims_rope")}, num_layers=1, num_single_layers=1).eval()
    unet = parts["unet"]
    return d.ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(4, 8)).eval()
