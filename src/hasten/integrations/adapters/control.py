"""ControlNet for Stable Diffusion, SDXL and Flux: residuals computed inside the denoiser, per evaluation.

The ControlNet runs on the same input as the network, every evaluation, and
its residuals are added inside the network. Its weight at step i is
``controlnet_conditioning_scale * keep_i`` with ``keep_i = 0`` outside the
guidance window (``i / N < control_guidance_start`` or ``(i + 1) / N >
control_guidance_end``), as the pipelines compute it. hasten keeps that
weight as a function of the grid index (the denoiser's ``by_index``
conditioning), so a round that evaluates indices inside and outside the
window at once (CHORDS' cores, a ParaDiGMS window) weighs each row as the
sequential loop would at its index.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from hasten.errors import HastenError
from hasten.integrations.adapters.base import Prepared, _batch_size, _refuse_unknown
from hasten.integrations.adapters.flow import FluxAdapter
from hasten.integrations.adapters.unet import (SDXLAdapter, StableDiffusionAdapter, _refuse_guidance_embedding,
                                               _unet_latents, unet_denoiser)
from hasten.integrations.schedulers import plan_scheduler


def _nets(controlnet) -> list:
    """The ControlNets of a pipeline: one, or the members of a Multi-ControlNet."""
    return list(controlnet.nets) if hasattr(controlnet, "nets") else [controlnet]


def _window(count: int, start, end) -> tuple[list[float], list[float]]:
    """``control_guidance_start`` / ``end`` as one entry per ControlNet, broadcast as the pipelines do."""
    if not isinstance(start, list) and isinstance(end, list):
        start = len(end) * [start]
    elif not isinstance(end, list) and isinstance(start, list):
        end = len(start) * [end]
    elif not isinstance(start, list):
        start, end = count * [start], count * [end]
    return start, end


def control_weights(steps: int, scales: Sequence[float], starts: Sequence[float], ends: Sequence[float],
                    device) -> torch.Tensor:
    """(N, nets): each ControlNet's residual weight at each grid index, ``scale * keep_i`` (the pipelines' rule)."""
    rows = [[scale * (1.0 - float(i / steps < s or (i + 1) / steps > e)) for scale, s, e in zip(scales, starts, ends)]
            for i in range(steps)]
    return torch.tensor(rows, dtype=torch.float32, device=device)


def _scales(controlnet, scale, count: int) -> list[float]:
    """``controlnet_conditioning_scale`` per ControlNet: a float for all, or a list (one ControlNet takes its first)."""
    if hasattr(controlnet, "nets"):
        return [float(s) for s in scale] if isinstance(scale, (list, tuple)) else [float(scale)] * count
    return [float(scale[0] if isinstance(scale, (list, tuple)) else scale)]


def _refuse_guess_mode(controlnet) -> None:
    if _nets(controlnet)[0].config.get("global_pool_conditions", False):
        raise HastenError("ControlNets with global_pool_conditions (guess mode) are not supported; supported: "
                          "ControlNets that take the prompt (global_pool_conditions=False, guess_mode=False)")


def _per_row(weights: torch.Tensor, ndim: int, dtype) -> torch.Tensor:
    """One ControlNet's per-row weights (rows,), shaped to scale residuals of ``ndim`` dimensions."""
    return weights.to(dtype).view(-1, *([1] * (ndim - 1)))


def unet_control_residuals(controlnet) -> Callable:
    """``residuals(x, t, cond) -> (down, mid)`` of a (Multi-)ControlNet for a UNet, weighted per row.

    ``cond`` holds ``control0``, ``control1``, ... (one control image per
    ControlNet) and ``control_weight`` (rows, nets), besides the prompt. The
    ControlNet scales its residuals by the per-row weights itself, as it
    scales them by the pipeline's float.
    """
    count = len(_nets(controlnet))
    multi = hasattr(controlnet, "nets")

    def residuals(xm, t, c):
        added = {"text_embeds": c["pooled"], "time_ids": c["time_ids"]} if "pooled" in c else None
        weights = [_per_row(c["control_weight"][:, k], xm.ndim, xm.dtype) for k in range(count)]
        images = [c[f"control{k}"] for k in range(count)]
        return controlnet(xm, t, encoder_hidden_states=c["text"], controlnet_cond=images if multi else images[0],
                          conditioning_scale=weights if multi else weights[0], added_cond_kwargs=added,
                          return_dict=False)

    return residuals


def _unet_control_denoiser(pipe, grid, cond: dict, uncond: dict | None, guidance_scale: float, scale, starts, ends,
                           device):
    """The UNet's denoiser with the pipeline's (Multi-)ControlNet, weighted per grid index."""
    controlnet = pipe.controlnet
    weights = control_weights(grid.steps, _scales(controlnet, scale, len(_nets(controlnet))), starts, ends, device)
    return unet_denoiser(pipe.unet, grid, cond, uncond, guidance_scale, 0.0, device,
                         unet_control_residuals(controlnet), {"control_weight": weights})


def _control_images(pipe, image, width, height, n: int, num_images_per_prompt: int) -> list[torch.Tensor]:
    """The control image(s) as the pipeline's ``prepare_image`` makes them (no CFG copy: the denoiser pairs rows)."""
    controlnet = pipe.controlnet
    images = image if hasattr(controlnet, "nets") else [image]
    if hasattr(controlnet, "nets") and isinstance(images[0], list):  # one list per prompt: per ControlNet instead
        images = [list(t) for t in zip(*images)]
    return [pipe.prepare_image(image=im, width=width, height=height, batch_size=n,
                               num_images_per_prompt=num_images_per_prompt, device=pipe._execution_device,
                               dtype=controlnet.dtype, do_classifier_free_guidance=False, guess_mode=False)
            for im in images]


def _add_control(cond: dict, uncond: dict | None, images: list[torch.Tensor]) -> None:
    for conditioning in (cond, uncond) if uncond is not None else (cond,):
        conditioning.update({f"control{k}": im for k, im in enumerate(images)})


class StableDiffusionControlNetAdapter(StableDiffusionAdapter):
    """``StableDiffusionControlNetPipeline`` (one ControlNet or a Multi-ControlNet)."""

    def prepare(self, prompt=None, image=None, height=None, width=None, num_inference_steps: int = 50,
                guidance_scale: float = 7.5, negative_prompt=None, num_images_per_prompt: int = 1, generator=None,
                latents=None, prompt_embeds=None, negative_prompt_embeds=None, output_type: str = "pil",
                return_dict: bool = True, controlnet_conditioning_scale=1.0, control_guidance_start=0.0,
                control_guidance_end=1.0, clip_skip=None, **extra) -> Prepared:
        pipe = self.pipe
        _refuse_unknown(extra, self.prepare, pipe)
        controlnet = pipe.controlnet
        count = len(_nets(controlnet))
        starts, ends = _window(count, control_guidance_start, control_guidance_end)
        pipe.check_inputs(prompt, image, None, negative_prompt, prompt_embeds, negative_prompt_embeds,
                          controlnet_conditioning_scale=controlnet_conditioning_scale,
                          control_guidance_start=starts, control_guidance_end=ends)
        pipe._guidance_scale, pipe._clip_skip, pipe._cross_attention_kwargs, pipe._interrupt = (
            guidance_scale, clip_skip, None, False)
        _refuse_guess_mode(controlnet)
        _refuse_guidance_embedding(pipe.unet)
        device = pipe._execution_device
        cond, uncond = self._encode_text(prompt, negative_prompt, num_images_per_prompt, guidance_scale, prompt_embeds,
                                         negative_prompt_embeds, clip_skip)
        n = _batch_size(prompt, prompt_embeds) * num_images_per_prompt
        images = _control_images(pipe, image, width, height, n, num_images_per_prompt)
        height, width = images[0].shape[-2:]
        plan = plan_scheduler(pipe.scheduler, num_inference_steps, device)
        x, noise = _unet_latents(pipe, plan, n, height, width, cond["text"].dtype, device, generator, latents)
        _add_control(cond, uncond, images)
        denoiser = _unet_control_denoiser(pipe, plan.grid, cond, uncond, guidance_scale, controlnet_conditioning_scale,
                                          starts, ends, device)
        return Prepared.from_plan(plan, denoiser, x.float(), noise, self.decoder(output_type, return_dict))


class SDXLControlNetAdapter(SDXLAdapter):
    """``StableDiffusionXLControlNetPipeline`` (one ControlNet or a Multi-ControlNet)."""

    def prepare(self, prompt=None, prompt_2=None, image=None, height=None, width=None, num_inference_steps: int = 50,
                guidance_scale: float = 5.0, negative_prompt=None, negative_prompt_2=None,
                num_images_per_prompt: int = 1, generator=None, latents=None, prompt_embeds=None,
                negative_prompt_embeds=None, pooled_prompt_embeds=None, negative_pooled_prompt_embeds=None,
                output_type: str = "pil", return_dict: bool = True, controlnet_conditioning_scale=1.0,
                control_guidance_start=0.0, control_guidance_end=1.0, original_size=None,
                crops_coords_top_left=(0, 0), target_size=None, clip_skip=None, **extra) -> Prepared:
        pipe = self.pipe
        _refuse_unknown(extra, self.prepare, pipe)
        controlnet = pipe.controlnet
        count = len(_nets(controlnet))
        starts, ends = _window(count, control_guidance_start, control_guidance_end)
        pipe.check_inputs(prompt, prompt_2, image, None, negative_prompt, negative_prompt_2, prompt_embeds,
                          negative_prompt_embeds, pooled_prompt_embeds,
                          negative_pooled_prompt_embeds=negative_pooled_prompt_embeds,
                          controlnet_conditioning_scale=controlnet_conditioning_scale,
                          control_guidance_start=starts, control_guidance_end=ends)
        pipe._guidance_scale, pipe._clip_skip, pipe._cross_attention_kwargs = guidance_scale, clip_skip, None
        pipe._denoising_end, pipe._interrupt = None, False
        _refuse_guess_mode(controlnet)
        _refuse_guidance_embedding(pipe.unet)
        device = pipe._execution_device
        cond, uncond = self._encode_text(prompt, prompt_2, negative_prompt, negative_prompt_2, num_images_per_prompt,
                                         guidance_scale, prompt_embeds, negative_prompt_embeds, pooled_prompt_embeds,
                                         negative_pooled_prompt_embeds, clip_skip)
        n = _batch_size(prompt, prompt_embeds) * num_images_per_prompt
        images = _control_images(pipe, image, width, height, n, num_images_per_prompt)
        height, width = images[0].shape[-2:]
        plan = plan_scheduler(pipe.scheduler, num_inference_steps, device)
        x, noise = _unet_latents(pipe, plan, n, height, width, cond["text"].dtype, device, generator, latents)
        time_ids = self._time_ids(original_size or tuple(images[0].shape[-2:]), crops_coords_top_left,
                                  target_size or (height, width), cond["pooled"], cond["text"].dtype, device, n)
        for conditioning in (cond, uncond) if uncond is not None else (cond,):
            conditioning["time_ids"] = time_ids
        _add_control(cond, uncond, images)
        denoiser = _unet_control_denoiser(pipe, plan.grid, cond, uncond, guidance_scale, controlnet_conditioning_scale,
                                          starts, ends, device)
        return Prepared.from_plan(plan, denoiser, x.float(), noise, self.decoder(output_type, return_dict))


def flux_control_residuals(controlnet, guidance_scale: float, text_ids, image_ids, device, guided: bool) -> Callable:
    """``residuals(x, timestep, cond) -> transformer kwargs`` of a Flux ControlNet, weighted per row.

    With true CFG (``guided``) the pipeline runs the ControlNet on the
    prompt's rows only and hands the same residuals to the negative pass: here
    the rows come batched (negative half first), so the ControlNet runs on the
    second half and its residuals are used for both.
    """
    guidance = torch.tensor([guidance_scale], device=device) if controlnet.config.guidance_embeds else None
    repeat = controlnet.input_hint_block is not None

    def both(samples):
        return None if samples is None else [torch.cat([s, s]) for s in samples]

    def residuals(xm, timestep, c):
        if guided:
            half = xm.shape[0] // 2
            xm, timestep, c = xm[half:], timestep[half:], {k: v[half:] for k, v in c.items()}
        g = None if guidance is None else guidance.expand(xm.shape[0])
        block, single = controlnet(hidden_states=xm, controlnet_cond=c["control0"],
                                   controlnet_mode=c.get("control_mode"),
                                   conditioning_scale=_per_row(c["control_weight"][:, 0], xm.ndim, xm.dtype),
                                   timestep=timestep, guidance=g, pooled_projections=c["pooled"],
                                   encoder_hidden_states=c["text"], txt_ids=text_ids, img_ids=image_ids,
                                   return_dict=False)
        if guided:
            block, single = both(block), both(single)
        return {"controlnet_block_samples": block, "controlnet_single_block_samples": single,
                "controlnet_blocks_repeat": repeat}

    return residuals


class FluxControlNetAdapter(FluxAdapter):
    """``FluxControlNetPipeline`` with one ``FluxControlNetModel`` (also a union one, ``control_mode``)."""

    def prepare(self, prompt=None, prompt_2=None, negative_prompt=None, negative_prompt_2=None,
                true_cfg_scale: float = 1.0, height=None, width=None, num_inference_steps: int = 28,
                guidance_scale: float = 7.0, control_guidance_start=0.0, control_guidance_end=1.0,
                control_image=None, control_mode=None, controlnet_conditioning_scale=1.0,
                num_images_per_prompt: int = 1, generator=None, latents=None, prompt_embeds=None,
                pooled_prompt_embeds=None, negative_prompt_embeds=None, negative_pooled_prompt_embeds=None,
                output_type: str = "pil", return_dict: bool = True, max_sequence_length: int = 512,
                **extra) -> Prepared:
        from diffusers.pipelines.flux.pipeline_flux_controlnet import retrieve_latents

        pipe = self.pipe
        height, width = self._size(extra, height, width)
        controlnet = pipe.controlnet
        if hasattr(controlnet, "nets"):
            raise HastenError("FluxControlNetPipeline with FluxMultiControlNetModel is not supported; supported: one "
                              "FluxControlNetModel (a union ControlNet takes control_mode)")
        if control_mode is not None and not isinstance(control_mode, int):
            raise HastenError(f"control_mode must be an int or None for one FluxControlNetModel, got {control_mode!r}")
        starts, ends = _window(1, control_guidance_start, control_guidance_end)
        pipe.check_inputs(prompt, prompt_2, height, width, negative_prompt=negative_prompt,
                          negative_prompt_2=negative_prompt_2, prompt_embeds=prompt_embeds,
                          negative_prompt_embeds=negative_prompt_embeds, pooled_prompt_embeds=pooled_prompt_embeds,
                          negative_pooled_prompt_embeds=negative_pooled_prompt_embeds,
                          max_sequence_length=max_sequence_length)
        cond, uncond, text_ids, plan, n = self._start(
            prompt, prompt_2, negative_prompt, negative_prompt_2, true_cfg_scale, height, width, num_inference_steps,
            guidance_scale, num_images_per_prompt, prompt_embeds, pooled_prompt_embeds, negative_prompt_embeds,
            negative_pooled_prompt_embeds, max_sequence_length)
        device, channels = pipe._execution_device, pipe.transformer.config.in_channels // 4
        control = pipe.prepare_image(image=control_image, width=width, height=height, batch_size=n,
                                     num_images_per_prompt=num_images_per_prompt, device=device, dtype=pipe.vae.dtype)
        height, width = control.shape[-2:]
        if controlnet.input_hint_block is None:  # the control image enters as packed VAE latents
            vae = pipe.vae
            control = retrieve_latents(vae.encode(control), generator=generator)
            control = (control - vae.config.shift_factor) * vae.config.scaling_factor
            control = pipe._pack_latents(control, n, channels, *control.shape[2:])
        extra_cond = {"control0": control}
        if control_mode is not None:
            extra_cond["control_mode"] = torch.tensor(control_mode).to(device, dtype=torch.long).view(-1, 1).expand(
                control.shape[0], 1)
        for conditioning in (cond, uncond) if uncond is not None else (cond,):
            conditioning.update(extra_cond)
        x, image_ids = pipe.prepare_latents(n, channels, height, width, cond["text"].dtype, device, generator, latents)
        weights = control_weights(plan.grid.steps, _scales(controlnet, controlnet_conditioning_scale, 1), starts,
                                  ends, device)
        residuals = flux_control_residuals(controlnet, guidance_scale, text_ids, image_ids, device,
                                           guided=uncond is not None)
        denoiser = self._denoiser(plan, cond, uncond, true_cfg_scale if uncond is not None else 1.0, guidance_scale,
                                  text_ids, image_ids, device, residuals, {"control_weight": weights})
        return Prepared.from_plan(plan, denoiser, x.float(), plan.draw_noise(x.shape, generator, device, x.dtype),
                                  self.decoder(output_type, return_dict, height=height, width=width))
