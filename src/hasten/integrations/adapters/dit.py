"""Further text-to-image diffusion transformers: Qwen-Image.

Each adapter here is its pipeline's conditioning (``encode_prompt``, the
network call) and decoding; the schedule, latents and guidance come from
:mod:`.base` and :class:`~hasten.integrations.denoisers.PipelineDenoiser`.
"""

from __future__ import annotations

from typing import Any

import torch

from hasten.errors import HastenError
from hasten.integrations.adapters.base import (Adapter, Decoding, Prepared, _batch_size, _per_channel_unscale,
                                               _refuse_other_schedulers, _refuse_unknown, shifted_flow_plan)
from hasten.integrations.denoisers import PipelineDenoiser


def _qwen_decode(pipe, z: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Qwen-Image's VAE decoding: tokens unpacked, per-channel statistics undone, the one frame of its video VAE."""
    z = pipe._unpack_latents(z, height, width, pipe.vae_scale_factor)
    return pipe.vae.decode(_per_channel_unscale(pipe, z), return_dict=False)[0][:, :, 0]


class QwenImageAdapter(Adapter):
    """``QwenImagePipeline``: flow matching on packed tokens, true CFG renormalised to the conditional output's norm."""

    decoding = Decoding("diffusers.pipelines.qwenimage.pipeline_output:QwenImagePipelineOutput",
                        vae_decode=_qwen_decode, cast_latents=False)

    def normalize_call(self, call: dict[str, Any]) -> dict[str, Any]:
        """Without a guidance embedding, the CLI's ``guidance_scale`` is Qwen-Image's ``true_cfg_scale``."""
        call = dict(call)
        if "guidance_scale" in call and "true_cfg_scale" not in call and not self._guidance_embedded():
            call["true_cfg_scale"] = call.pop("guidance_scale")
        return call

    def _guidance_embedded(self) -> bool:
        return bool(self.pipe is not None and self.pipe.transformer.config.guidance_embeds)

    def prepare(self, prompt=None, negative_prompt=None, true_cfg_scale: float = 4.0, height=None, width=None,
                num_inference_steps: int = 50, sigmas=None, guidance_scale: float | None = None,
                num_images_per_prompt: int = 1, generator=None, latents=None, prompt_embeds=None,
                prompt_embeds_mask=None, negative_prompt_embeds=None, negative_prompt_embeds_mask=None,
                output_type: str = "pil", return_dict: bool = True, max_sequence_length: int = 512,
                **extra) -> Prepared:
        pipe = self.pipe
        _refuse_unknown(extra, self.prepare, pipe)
        _refuse_other_schedulers(pipe)
        height = height or pipe.default_sample_size * pipe.vae_scale_factor
        width = width or pipe.default_sample_size * pipe.vae_scale_factor
        pipe.check_inputs(prompt, height, width, negative_prompt=negative_prompt, prompt_embeds=prompt_embeds,
                          negative_prompt_embeds=negative_prompt_embeds, prompt_embeds_mask=prompt_embeds_mask,
                          negative_prompt_embeds_mask=negative_prompt_embeds_mask,
                          max_sequence_length=max_sequence_length)
        transformer = pipe.transformer
        if transformer.config.guidance_embeds and guidance_scale is None:
            raise HastenError("QwenImagePipeline: guidance_scale is required for a guidance-distilled transformer")
        pipe._guidance_scale, pipe._attention_kwargs, pipe._interrupt = guidance_scale, {}, False
        device = pipe._execution_device
        guided = true_cfg_scale > 1 and (negative_prompt is not None or negative_prompt_embeds is not None)
        per_prompt = dict(device=device, num_images_per_prompt=num_images_per_prompt,
                          max_sequence_length=max_sequence_length)
        embeds, mask = self.encode(pipe.encode_prompt, prompt=prompt, prompt_embeds=prompt_embeds,
                                   prompt_embeds_mask=prompt_embeds_mask, **per_prompt)
        uncond = None
        if guided:
            neg, neg_mask = self.encode(pipe.encode_prompt, prompt=negative_prompt, prompt_embeds=negative_prompt_embeds,
                                        prompt_embeds_mask=negative_prompt_embeds_mask, **per_prompt)
            uncond = {"text": neg, "mask": neg_mask}
        n = _batch_size(prompt, prompt_embeds) * num_images_per_prompt
        x = pipe.prepare_latents(n, transformer.config.in_channels // 4, height, width, embeds.dtype, device,
                                 generator, latents)
        plan = shifted_flow_plan(pipe, num_inference_steps, x.shape[1], device, sigmas)
        guidance = None
        if transformer.config.guidance_embeds:
            guidance = torch.full([1], guidance_scale, device=device, dtype=torch.float32)
        shape = (1, height // pipe.vae_scale_factor // 2, width // pipe.vae_scale_factor // 2)

        def call(xm, t, c):
            return transformer(hidden_states=xm, timestep=t.to(xm.dtype) / 1000,
                               guidance=None if guidance is None else guidance.expand(xm.shape[0]),
                               encoder_hidden_states_mask=c["mask"], encoder_hidden_states=c["text"],
                               img_shapes=[[shape]] * xm.shape[0], return_dict=False)[0]

        denoiser = PipelineDenoiser(call, plan.grid, {"text": embeds, "mask": mask}, uncond,
                                    true_cfg_scale if guided else 1.0, guidance_renorm=True,
                                    dtype=transformer.dtype, device=device)
        return self.prepared(plan, denoiser, x, generator,
                             self.decoder(output_type, return_dict, height=height, width=width))
