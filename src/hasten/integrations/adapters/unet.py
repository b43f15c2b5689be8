"""UNet families: unconditional DDPM / DDIM, Stable Diffusion 1.x / 2.x and SDXL."""

from __future__ import annotations

import inspect
from typing import Callable

import torch

from hasten.errors import HastenError
from hasten.integrations.adapters.base import (Adapter, Decoding, Prepared, _batch_size, _divide_scaling,
                                               _refuse_unknown, _refuse_unscaled_ve)
from hasten.integrations.denoisers import PipelineDenoiser
from hasten.integrations.schedulers import SchedulerPlan, plan_scheduler


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


def unet_denoiser(unet, grid, cond: dict, uncond: dict | None, guidance_scale: float, guidance_rescale: float = 0.0,
                  device=None, residuals: Callable | None = None, by_index: dict | None = None) -> PipelineDenoiser:
    """The denoiser of a conditional UNet (:func:`unet_call`), with batched classifier-free guidance."""
    return PipelineDenoiser(unet_call(unet, residuals), grid, cond, uncond, guidance_scale, guidance_rescale,
                            dtype=unet.dtype, device=device, by_index=by_index)


def _unet_latents(pipe, plan: SchedulerPlan, n: int, height: int, width: int, dtype, device, generator,
                  latents) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Initial latents (the pipeline's ``prepare_latents``) and step noise for a UNet text-to-image pipeline."""
    x = pipe.prepare_latents(n, pipe.unet.config.in_channels, height, width, dtype, device, generator, latents)
    return x, plan.draw_noise(x.shape, generator, device, pipe.unet.dtype)


def _refuse_guidance_embedding(unet) -> None:
    if unet.config.time_cond_proj_dim is not None:
        raise HastenError("UNets with a guidance embedding (time_cond_proj_dim, LCM) are not supported yet")


def _sdxl_unscale(pipe, z: torch.Tensor) -> torch.Tensor:
    """SDXL's VAE input: per-channel ``latents_mean`` / ``latents_std`` where the VAE has them, else ``z / scale``."""
    vae = pipe.vae
    mean, std = getattr(vae.config, "latents_mean", None), getattr(vae.config, "latents_std", None)
    if mean is None or std is None:
        return z / vae.config.scaling_factor
    shape = (1, len(mean), 1, 1)
    return z * torch.tensor(std).view(shape).to(z) / vae.config.scaling_factor + torch.tensor(mean).view(shape).to(z)


class UnconditionalAdapter(Adapter):
    """``DDPMPipeline`` and ``DDIMPipeline``: an unconditional ``UNet2DModel``."""

    count_argument = "batch_size"
    decoding = Decoding("diffusers.pipelines.pipeline_utils:ImagePipelineOutput", postprocess="pixels")

    def prepare(self, batch_size: int = 1, generator=None, num_inference_steps: int | None = None,
                output_type: str = "pil", return_dict: bool = True, eta: float = 0.0, **extra) -> Prepared:
        pipe = self.pipe
        _refuse_unknown(extra, self.prepare, pipe)
        self._check_call(eta)
        if num_inference_steps is None:
            num_inference_steps = 1000 if type(pipe).__name__ == "DDPMPipeline" else 50
        unet, device = pipe.unet, pipe._execution_device
        latents = self._latents(batch_size, generator, device)
        plan = plan_scheduler(pipe.scheduler, num_inference_steps, device)
        noise = plan.draw_noise(latents.shape, generator, device, unet.dtype)
        denoiser = PipelineDenoiser(lambda x, t, cond: unet(x, t).sample, plan.grid, {}, dtype=unet.dtype,
                                    device=device)
        return Prepared.from_plan(plan, denoiser, latents, noise, self.decoder(output_type, return_dict))

    def _check_call(self, eta: float) -> None:
        """Refuse stochastic DDIM, VE schedulers (these pipelines do not scale for them), and what DDPMPipeline
        cannot run."""
        pipe = self.pipe
        if eta != 0.0:
            raise HastenError(f"eta={eta} is not supported; hasten's DDIM is eta = 0 (use the DDPM scheduler for "
                              "stochastic sampling)")
        _refuse_unscaled_ve(pipe, "DDPM, DDIM and other VP schedulers")
        name = type(pipe.scheduler).__name__
        takes_generator = "generator" in inspect.signature(pipe.scheduler.step).parameters
        if type(pipe).__name__ == "DDPMPipeline" and not takes_generator:
            raise HastenError(f"DDPMPipeline with {name} is not supported: the pipeline calls scheduler.step(..., "
                              f"generator=...), which {name}.step does not take (DDPMPipeline itself raises "
                              "TypeError); supported: schedulers whose step takes a generator, such as DDPM, DDIM or "
                              "DPMSolverMultistep")

    def _latents(self, batch_size: int, generator, device) -> torch.Tensor:
        """Unit noise in the UNet's sample shape, drawn as the pipeline draws it."""
        from diffusers.utils.torch_utils import randn_tensor

        unet = self.pipe.unet
        size = unet.config.sample_size
        size = (size, size) if isinstance(size, int) else tuple(size)
        shape = (batch_size, unet.config.in_channels, *size)
        return randn_tensor(shape, generator=generator, device=device, dtype=unet.dtype).float()


class StableDiffusionAdapter(Adapter):
    """``StableDiffusionPipeline`` (1.x / 2.x; eps or v prediction), batched classifier-free guidance."""

    decoding = Decoding("diffusers.pipelines.stable_diffusion:StableDiffusionPipelineOutput",
                        unscale=_divide_scaling, extras=(("nsfw_content_detected", None),))

    def prepare(self, prompt=None, height=None, width=None, num_inference_steps: int = 50, guidance_scale: float = 7.5,
                negative_prompt=None, num_images_per_prompt: int = 1, generator=None, latents=None,
                prompt_embeds=None, negative_prompt_embeds=None, output_type: str = "pil", return_dict: bool = True,
                guidance_rescale: float = 0.0, clip_skip=None, **extra) -> Prepared:
        pipe = self.pipe
        _refuse_unknown(extra, self.prepare, pipe)
        unet = pipe.unet
        height = height or unet.config.sample_size * pipe.vae_scale_factor
        width = width or unet.config.sample_size * pipe.vae_scale_factor
        pipe._guidance_scale, pipe._guidance_rescale, pipe._clip_skip = guidance_scale, guidance_rescale, clip_skip
        pipe._cross_attention_kwargs, pipe._interrupt = None, False
        pipe.check_inputs(prompt, height, width, None, negative_prompt, prompt_embeds, negative_prompt_embeds)
        _refuse_guidance_embedding(unet)
        device = pipe._execution_device
        cond, uncond = self._encode_text(prompt, negative_prompt, num_images_per_prompt, guidance_scale, prompt_embeds,
                                         negative_prompt_embeds, clip_skip)
        plan = plan_scheduler(pipe.scheduler, num_inference_steps, device)
        n = _batch_size(prompt, prompt_embeds) * num_images_per_prompt
        x, noise = _unet_latents(pipe, plan, n, height, width, cond["text"].dtype, device, generator, latents)
        denoiser = unet_denoiser(unet, plan.grid, cond, uncond, guidance_scale, guidance_rescale, device)
        return Prepared.from_plan(plan, denoiser, x.float(), noise, self.decoder(output_type, return_dict))

    def _encode_text(self, prompt, negative_prompt, num_images_per_prompt: int, guidance_scale: float, prompt_embeds,
                     negative_prompt_embeds, clip_skip) -> tuple[dict, dict | None]:
        """The prompt's conditioning and, with classifier-free guidance (scale > 1), the negative one."""
        pipe = self.pipe
        cfg = guidance_scale > 1
        cond, uncond = self.encode(pipe.encode_prompt, prompt, pipe._execution_device, num_images_per_prompt, cfg,
                                   negative_prompt, prompt_embeds=prompt_embeds,
                                   negative_prompt_embeds=negative_prompt_embeds, clip_skip=clip_skip)
        return {"text": cond}, ({"text": uncond} if cfg else None)


class SDXLAdapter(Adapter):
    """``StableDiffusionXLPipeline``: two text encoders, pooled embeddings and size/crop time ids, batched CFG."""

    decoding = Decoding("diffusers.pipelines.stable_diffusion_xl.pipeline_output:StableDiffusionXLPipelineOutput",
                        unscale=_sdxl_unscale, watermark=True)

    def prepare(self, prompt=None, prompt_2=None, height=None, width=None, num_inference_steps: int = 50,
                guidance_scale: float = 5.0, negative_prompt=None, negative_prompt_2=None,
                num_images_per_prompt: int = 1, generator=None, latents=None, prompt_embeds=None,
                negative_prompt_embeds=None, pooled_prompt_embeds=None, negative_pooled_prompt_embeds=None,
                output_type: str = "pil", return_dict: bool = True, guidance_rescale: float = 0.0,
                original_size=None, crops_coords_top_left=(0, 0), target_size=None, clip_skip=None,
                **extra) -> Prepared:
        pipe = self.pipe
        _refuse_unknown(extra, self.prepare, pipe)
        height = height or pipe.default_sample_size * pipe.vae_scale_factor
        width = width or pipe.default_sample_size * pipe.vae_scale_factor
        pipe.check_inputs(prompt, prompt_2, height, width, None, negative_prompt, negative_prompt_2, prompt_embeds,
                          negative_prompt_embeds, pooled_prompt_embeds, negative_pooled_prompt_embeds)
        pipe._guidance_scale, pipe._guidance_rescale, pipe._clip_skip = guidance_scale, guidance_rescale, clip_skip
        pipe._cross_attention_kwargs, pipe._denoising_end, pipe._interrupt = None, None, False
        _refuse_guidance_embedding(pipe.unet)
        device = pipe._execution_device
        cond, uncond = self._encode_text(prompt, prompt_2, negative_prompt, negative_prompt_2, num_images_per_prompt,
                                         guidance_scale, prompt_embeds, negative_prompt_embeds, pooled_prompt_embeds,
                                         negative_pooled_prompt_embeds, clip_skip)
        embeds, pooled = cond["text"], cond["pooled"]
        plan = plan_scheduler(pipe.scheduler, num_inference_steps, device)
        n = _batch_size(prompt, prompt_embeds) * num_images_per_prompt
        x, noise = _unet_latents(pipe, plan, n, height, width, embeds.dtype, device, generator, latents)
        time_ids = self._time_ids(original_size or (height, width), crops_coords_top_left,
                                  target_size or (height, width), pooled, embeds.dtype, device, n)
        cond["time_ids"] = time_ids
        if uncond is not None:
            uncond["time_ids"] = time_ids
        denoiser = unet_denoiser(pipe.unet, plan.grid, cond, uncond, guidance_scale, guidance_rescale, device)
        return Prepared.from_plan(plan, denoiser, x.float(), noise, self.decoder(output_type, return_dict))

    def _encode_text(self, prompt, prompt_2, negative_prompt, negative_prompt_2, num_images_per_prompt: int,
                     guidance_scale: float, prompt_embeds, negative_prompt_embeds, pooled_prompt_embeds,
                     negative_pooled_prompt_embeds, clip_skip) -> tuple[dict, dict | None]:
        """Both text encoders' conditioning (embeddings, pooled) and, with guidance (scale > 1), the negative one."""
        pipe = self.pipe
        cfg = guidance_scale > 1
        embeds, neg, pooled, neg_pooled = self.encode(
            pipe.encode_prompt, prompt=prompt, prompt_2=prompt_2, device=pipe._execution_device,
            num_images_per_prompt=num_images_per_prompt, do_classifier_free_guidance=cfg,
            negative_prompt=negative_prompt, negative_prompt_2=negative_prompt_2,
            prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_prompt_embeds,
            pooled_prompt_embeds=pooled_prompt_embeds, negative_pooled_prompt_embeds=negative_pooled_prompt_embeds,
            clip_skip=clip_skip)
        return {"text": embeds, "pooled": pooled}, ({"text": neg, "pooled": neg_pooled} if cfg else None)

    def _time_ids(self, original_size, crops_coords_top_left, target_size, pooled: torch.Tensor, dtype, device,
                  n: int) -> torch.Tensor:
        """The size and crop conditioning (``add_time_ids``), one row per sample."""
        pipe = self.pipe
        projection = (int(pooled.shape[-1]) if pipe.text_encoder_2 is None
                      else pipe.text_encoder_2.config.projection_dim)
        return pipe._get_add_time_ids(original_size, crops_coords_top_left, target_size, dtype=dtype,
                                      text_encoder_projection_dim=projection).to(device).repeat(n, 1)
