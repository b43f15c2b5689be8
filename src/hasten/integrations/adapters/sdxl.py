"""SDXL: two text encoders, pooled embeddings and size/crop (or aesthetic) time ids; text-to-image, image-to-image,
inpainting and ControlNet."""

from __future__ import annotations

import torch

from hasten.integrations.adapters.base import Call, call_with
from hasten.integrations.adapters.output import Decoding
from hasten.integrations.adapters.sd import ControlNet, Img2Img, UNetAdapter, UNetInpaint


def sdxl_unscale(pipe, z: torch.Tensor) -> torch.Tensor:
    """SDXL's VAE input: per-channel ``latents_mean`` / ``latents_std`` where the VAE has them, else ``z / scale``."""
    vae = pipe.vae
    mean, std = getattr(vae.config, "latents_mean", None), getattr(vae.config, "latents_std", None)
    if mean is None or std is None:
        return z / vae.config.scaling_factor
    shape = (1, len(mean), 1, 1)
    return z * torch.tensor(std).view(shape).to(z) / vae.config.scaling_factor + torch.tensor(mean).view(shape).to(z)


class SDXLAdapter(UNetAdapter):
    """``StableDiffusionXLPipeline``: two text encoders, pooled embeddings and size/crop time ids, batched CFG."""

    decoding = Decoding("diffusers.pipelines.stable_diffusion_xl.pipeline_output:StableDiffusionXLPipelineOutput",
                        unscale=sdxl_unscale, watermark=True)
    encoded = ("text", "-text", "pooled", "-pooled")
    refuses = frozenset({"negative_original_size", "negative_crops_coords_top_left", "negative_target_size"})
    sized_by_latents = False  # the image-input pipelines read the time ids' size off the latents

    def condition(self, c: Call) -> None:
        """The size and crop (or aesthetic) conditioning, one row per sample (the negative side's apart where the
        pipeline makes it apart)."""
        pipe, args = self.pipe, c.args
        size = (tuple(s * pipe.vae_scale_factor for s in c.latents.shape[-2:]) if self.sized_by_latents
                else (args["height"], args["width"]))
        original, target = args["original_size"] or size, args["target_size"] or size
        projection = (int(c.cond["pooled"].shape[-1]) if pipe.text_encoder_2 is None
                      else pipe.text_encoder_2.config.projection_dim)
        ids = call_with(pipe._get_add_time_ids, args, original_size=original, target_size=target,
                        negative_original_size=args.get("negative_original_size") or original,
                        negative_target_size=args.get("negative_target_size") or target, dtype=c.cond["text"].dtype,
                        text_encoder_projection_dim=projection)
        ids, negative = ids if isinstance(ids, tuple) else (ids, ids)
        c.cond["time_ids"] = ids.to(c.device).repeat(c.count, 1)
        if c.uncond is not None:
            c.uncond["time_ids"] = negative.to(c.device).repeat(c.count, 1)


class SDXLImg2ImgAdapter(Img2Img, SDXLAdapter):
    """``StableDiffusionXLImg2ImgPipeline`` (also the refiner's aesthetic-score conditioning)."""

    refuses = frozenset({"latents"})
    sized_by_latents = True


class SDXLInpaintAdapter(UNetInpaint, SDXLAdapter):
    """``StableDiffusionXLInpaintPipeline``, with a 9-channel (inpainting) or a 4-channel UNet."""

    refuses = frozenset()
    sized_by_latents = True

    def masked_image(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor | None:
        return None if image.shape[1] == 4 else image * (mask < 0.5)


class SDXLControlNetAdapter(ControlNet, SDXLAdapter):
    """``StableDiffusionXLControlNetPipeline`` (one ControlNet or a Multi-ControlNet)."""
