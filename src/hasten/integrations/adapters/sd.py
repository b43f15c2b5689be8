"""The UNet families: unconditional DDPM / DDIM, and Stable Diffusion 1.x / 2.x with its image-to-image, inpainting
and ControlNet pipelines (:mod:`.sdxl` builds on :class:`UNetAdapter` too)."""

from __future__ import annotations

import inspect
from typing import Callable

import torch

from hasten.errors import HastenError
from hasten.inpaint import KnownRegion
from hasten.integrations.adapters.base import Adapter, Call, call_with, sample_size
from hasten.integrations.adapters.images import (control_by_index, control_window, image_latents, nets, per_row,
                                                 refuse_asymmetric_vae, unet_inpaint_channels)
from hasten.integrations.adapters.output import Decoding, divide_scaling
from hasten.integrations.schedulers import refuse_unscaled_ve


def unet_call(unet, residuals: Callable | None = None) -> Callable:
    """``call(x, t, cond)`` of a conditional UNet, as the Stable Diffusion family's pipelines run it.

    ``cond`` holds ``text``, and where the pipeline has them ``pooled`` and
    ``time_ids`` (SDXL's added conditioning), ``mask`` and ``masked`` (an
    inpainting UNet's extra input channels, after the latents).
    ``residuals(x, t, cond) -> (down, mid)`` adds a ControlNet's residuals.
    """

    def call(xm, t, c):
        added = {"text_embeds": c["pooled"], "time_ids": c["time_ids"]} if "pooled" in c else None
        down, mid = (None, None) if residuals is None else residuals(xm, t, c)
        if "mask" in c:
            xm = torch.cat([xm, c["mask"], c["masked"]], dim=1)
        return unet(xm, t, encoder_hidden_states=c["text"], added_cond_kwargs=added,
                    down_block_additional_residuals=down, mid_block_additional_residual=mid).sample

    return call


def unet_control_residuals(controlnet) -> Callable:
    """``residuals(x, t, cond) -> (down, mid)`` of a (Multi-)ControlNet for a UNet, weighted per row.

    ``cond`` holds ``control0``, ``control1``, ... (one control image per
    ControlNet) and ``control_weight`` (rows, nets), besides the prompt. The
    ControlNet scales its residuals by the per-row weights itself, as it
    scales them by the pipeline's float.
    """
    count, multi = len(nets(controlnet)), hasattr(controlnet, "nets")

    def residuals(xm, t, c):
        added = {"text_embeds": c["pooled"], "time_ids": c["time_ids"]} if "pooled" in c else None
        weights = [per_row(c["control_weight"][:, k], xm.ndim, xm.dtype) for k in range(count)]
        images = [c[f"control{k}"] for k in range(count)]
        return controlnet(xm, t, encoder_hidden_states=c["text"], controlnet_cond=images if multi else images[0],
                          conditioning_scale=weights if multi else weights[0], added_cond_kwargs=added,
                          return_dict=False)

    return residuals


class UNetAdapter(Adapter):
    """What the conditional UNet pipelines share: the UNet call, its default size, noise in the UNet's dtype."""

    network = "unet"

    def default_size(self) -> tuple[int, int]:
        return sample_size(self.pipe.unet.config.sample_size, self.pipe.vae_scale_factor)

    def validate(self, c: Call) -> None:
        if self.pipe.unet.config.time_cond_proj_dim is not None:
            raise HastenError("UNets with a guidance embedding (time_cond_proj_dim, LCM) are not supported yet")

    def network_call(self, c: Call) -> Callable:
        return unet_call(self.pipe.unet, self.residuals(c))

    def residuals(self, c: Call) -> Callable | None:
        return None

    def noise_dtype(self, c: Call) -> torch.dtype:
        return self.pipe.unet.dtype


class Img2Img:
    """Image-to-image (a mixin before a UNet adapter): the preprocessed image noised to ``strength``."""

    def initial_latents(self, c: Call) -> torch.Tensor:
        image = self.pipe.image_processor.preprocess(c.args["image"])
        return image_latents(c, self.pipe, image=image, batch_size=self.prompts(c), dtype=c.cond["text"].dtype)


class UNetInpaint:
    """Inpainting (a mixin before a UNet adapter): the mask as input channels (9-channel UNet), or the known region
    blended after every step (4-channel UNet)."""

    def validate(self, c: Call) -> None:
        super().validate(c)
        refuse_asymmetric_vae(self.pipe)
        unet_inpaint_channels(self.pipe)

    def masked_image(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return image * (mask < 0.5)

    def initial_latents(self, c: Call) -> torch.Tensor:
        pipe, args, dtype = self.pipe, c.args, c.cond["text"].dtype
        height, width, channels = args["height"], args["width"], unet_inpaint_channels(pipe)
        image = pipe.image_processor.preprocess(args["image"], height=height, width=width).to(torch.float32)
        outputs = image_latents(c, pipe, batch_size=c.count, num_channels_latents=pipe.vae.config.latent_channels,
                                dtype=dtype, image=image, is_strength_max=args["strength"] == 1.0, return_noise=True,
                                return_image_latents=channels == 4)
        condition = pipe.mask_processor.preprocess(args["mask_image"], height=height, width=width)
        masked = args["masked_image_latents"]
        masked = self.masked_image(image, condition) if masked is None else masked
        mask, masked = pipe.prepare_mask_latents(condition, masked, c.count, height, width, dtype, c.device,
                                                 args["generator"], False)
        if channels == 9:
            for side in c.sides:
                side.update(mask=mask, masked=masked)
        else:
            c.known = KnownRegion(mask.float(), outputs[2].float(), outputs[1].float())
        return outputs[0]


class ControlNet:
    """ControlNet (a mixin before a UNet adapter): the control image(s) as conditioning, their weights by index."""

    def validate(self, c: Call) -> None:
        super().validate(c)
        if nets(self.pipe.controlnet)[0].config.get("global_pool_conditions", False):
            raise HastenError("ControlNets with global_pool_conditions (guess mode) are not supported; supported: "
                              "ControlNets that take the prompt (global_pool_conditions=False, guess_mode=False)")

    def settle(self, c: Call) -> None:
        """No default size: the control image gives it."""

    def checked(self, c: Call) -> dict:
        starts, ends = control_window(len(nets(self.pipe.controlnet)), c.args["control_guidance_start"],
                                      c.args["control_guidance_end"])
        return {"control_guidance_start": starts, "control_guidance_end": ends}

    def initial_latents(self, c: Call) -> torch.Tensor:
        """The control image(s) as ``prepare_image`` makes them (no CFG copy: the denoiser pairs rows)."""
        pipe, args = self.pipe, c.args
        controlnet = pipe.controlnet
        images = args["image"] if hasattr(controlnet, "nets") else [args["image"]]
        if hasattr(controlnet, "nets") and isinstance(images[0], list):  # one list per prompt: per ControlNet instead
            images = [list(t) for t in zip(*images)]
        images = [call_with(pipe.prepare_image, args, image=im, batch_size=c.count, device=c.device,
                            dtype=controlnet.dtype, do_classifier_free_guidance=False, guess_mode=False)
                  for im in images]
        args["height"], args["width"] = images[0].shape[-2:]
        for side in c.sides:
            side.update({f"control{k}": im for k, im in enumerate(images)})
        c.by_index = control_by_index(controlnet, args, c.plan.grid.steps, c.device)
        return super().initial_latents(c)

    def residuals(self, c: Call) -> Callable:
        return unet_control_residuals(self.pipe.controlnet)


class UnconditionalAdapter(Adapter):
    """``DDPMPipeline`` and ``DDIMPipeline``: an unconditional ``UNet2DModel``."""

    count_argument = "batch_size"
    network = "unet"
    guidance = None
    takes = frozenset({"eta"})
    decoding = Decoding("diffusers.pipelines.pipeline_utils:ImagePipelineOutput", postprocess="pixels")

    def validate(self, c: Call) -> None:
        """Refuse stochastic DDIM, VE schedulers (these pipelines do not scale for them), and what DDPMPipeline
        cannot run."""
        pipe, eta = self.pipe, c.args.get("eta", 0.0)
        if eta != 0.0:
            raise HastenError(f"eta={eta} is not supported; hasten's DDIM is eta = 0 (use the DDPM scheduler for "
                              "stochastic sampling)")
        refuse_unscaled_ve(pipe, "DDPM, DDIM and other VP schedulers")
        name = type(pipe.scheduler).__name__
        takes_generator = "generator" in inspect.signature(pipe.scheduler.step).parameters
        if type(pipe).__name__ == "DDPMPipeline" and not takes_generator:
            raise HastenError(f"DDPMPipeline with {name} is not supported: the pipeline calls scheduler.step(..., "
                              f"generator=...), which {name}.step does not take (DDPMPipeline itself raises "
                              "TypeError); supported: schedulers whose step takes a generator, such as DDPM, DDIM or "
                              "DPMSolverMultistep")

    def prompts(self, c: Call) -> int:
        return 1

    def encode_text(self, c: Call) -> None:
        c.cond, c.uncond = {}, None

    def plan(self, c: Call):
        if c.args["num_inference_steps"] is None:
            c.args["num_inference_steps"] = 1000 if type(self.pipe).__name__ == "DDPMPipeline" else 50
        return super().plan(c)

    def initial_latents(self, c: Call) -> torch.Tensor:
        """Unit noise in the UNet's sample shape, drawn as the pipeline draws it."""
        from diffusers.utils.torch_utils import randn_tensor

        unet = self.pipe.unet
        shape = (c.count, unet.config.in_channels, *sample_size(unet.config.sample_size, 1))
        return randn_tensor(shape, generator=c.args["generator"], device=c.device, dtype=unet.dtype).float()

    def network_call(self, c: Call) -> Callable:
        unet = self.pipe.unet
        return lambda x, t, cond: unet(x, t).sample

    def noise_dtype(self, c: Call) -> torch.dtype:
        return self.pipe.unet.dtype


class StableDiffusionAdapter(UNetAdapter):
    """``StableDiffusionPipeline`` (1.x / 2.x; eps or v prediction), batched classifier-free guidance."""

    decoding = Decoding("diffusers.pipelines.stable_diffusion:StableDiffusionPipelineOutput",
                        unscale=divide_scaling, extras=(("nsfw_content_detected", None),))


class StableDiffusionImg2ImgAdapter(Img2Img, StableDiffusionAdapter):
    """``StableDiffusionImg2ImgPipeline``: the image noised to ``strength``, then the steps from there."""


class StableDiffusionInpaintAdapter(UNetInpaint, StableDiffusionAdapter):
    """``StableDiffusionInpaintPipeline``, with a 9-channel (inpainting) or a 4-channel UNet."""


class StableDiffusionControlNetAdapter(ControlNet, StableDiffusionAdapter):
    """``StableDiffusionControlNetPipeline`` (one ControlNet or a Multi-ControlNet)."""
