"""Further text-to-image diffusion transformers: Qwen-Image, Chroma, AuraFlow, CogView4, Lumina 2, HiDream.

Each adapter here is its pipeline's conditioning (``encode_prompt``, the
network call) and decoding; the schedule, latents and guidance come from
:mod:`.base` and :class:`~hasten.integrations.denoisers.PipelineDenoiser`.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from hasten.errors import HastenError
from hasten.integrations.adapters.base import (Adapter, Decoding, Prepared, _batch_size, _divide_scaling,
                                               _image_size, _per_channel_unscale, _pipeline_module,
                                               _refuse_other_schedulers, _refuse_unknown, _scale_and_shift,
                                               pipeline_plan, shifted_flow_plan)
from hasten.integrations.adapters.flow import _flux_unscale
from hasten.integrations.denoisers import PipelineDenoiser
from hasten.integrations.schedulers import plan_scheduler


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
        height, width = _image_size(pipe, height, width)
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
            neg, neg_mask = self.encode(pipe.encode_prompt, prompt=negative_prompt,
                                        prompt_embeds=negative_prompt_embeds,
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


class ChromaAdapter(Adapter):
    """``ChromaPipeline``: Flux's packed latents and schedule, T5 text with its attention mask, CFG."""

    decoding = Decoding("diffusers.pipelines.chroma.pipeline_output:ChromaPipelineOutput", unscale=_flux_unscale,
                        cast_latents=False)

    def prepare(self, prompt=None, negative_prompt=None, height=None, width=None, num_inference_steps: int = 35,
                sigmas=None, guidance_scale: float = 5.0, num_images_per_prompt: int = 1, generator=None,
                latents=None, prompt_embeds=None, negative_prompt_embeds=None, prompt_attention_mask=None,
                negative_prompt_attention_mask=None, output_type: str = "pil", return_dict: bool = True,
                max_sequence_length: int = 512, **extra) -> Prepared:
        pipe = self.pipe
        _refuse_unknown(extra, self.prepare, pipe)
        _refuse_other_schedulers(pipe)
        height, width = _image_size(pipe, height, width)
        pipe.check_inputs(prompt, height, width, negative_prompt=negative_prompt, prompt_embeds=prompt_embeds,
                          prompt_attention_mask=prompt_attention_mask, negative_prompt_embeds=negative_prompt_embeds,
                          negative_prompt_attention_mask=negative_prompt_attention_mask,
                          max_sequence_length=max_sequence_length)
        pipe._guidance_scale, pipe._joint_attention_kwargs, pipe._interrupt = guidance_scale, {}, False
        device, transformer = pipe._execution_device, pipe.transformer
        cfg = guidance_scale > 1
        embeds, text_ids, mask, neg, neg_ids, neg_mask = self.encode(
            pipe.encode_prompt, prompt=prompt, negative_prompt=negative_prompt, prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds, prompt_attention_mask=prompt_attention_mask,
            negative_prompt_attention_mask=negative_prompt_attention_mask, do_classifier_free_guidance=cfg,
            device=device, num_images_per_prompt=num_images_per_prompt, max_sequence_length=max_sequence_length)
        n = _batch_size(prompt, prompt_embeds) * num_images_per_prompt
        x, image_ids = pipe.prepare_latents(n, transformer.config.in_channels // 4, height, width, embeds.dtype,
                                            device, generator, latents)
        plan = shifted_flow_plan(pipe, num_inference_steps, x.shape[1], device, sigmas)

        def side(text, ids, text_mask) -> dict:
            # the text positions (one (L, 3) table) ride along per row, so that cond and uncond keep their own
            return {"text": text, "ids": ids.expand(n, *ids.shape),
                    "mask": pipe._prepare_attention_mask(n, x.shape[1], x.dtype, text_mask)}

        def call(xm, t, c):
            return transformer(hidden_states=xm, timestep=t.to(xm.dtype) / 1000, encoder_hidden_states=c["text"],
                               txt_ids=c["ids"][0], img_ids=image_ids, attention_mask=c["mask"],
                               return_dict=False)[0]

        denoiser = PipelineDenoiser(call, plan.grid, side(embeds, text_ids, mask),
                                    side(neg, neg_ids, neg_mask) if cfg else None, guidance_scale,
                                    dtype=transformer.dtype, device=device)
        return self.prepared(plan, denoiser, x, generator,
                             self.decoder(output_type, return_dict, height=height, width=width))


class AuraFlowAdapter(Adapter):
    """``AuraFlowPipeline``: flow matching, UMT5 text (masked into the embeddings), batched CFG."""

    decoding = Decoding("diffusers.pipelines.pipeline_utils:ImagePipelineOutput", unscale=_divide_scaling,
                        cast_latents=False)

    def prepare(self, prompt=None, negative_prompt=None, num_inference_steps: int = 50, sigmas=None,
                guidance_scale: float = 3.5, num_images_per_prompt: int = 1, height: int | None = 1024,
                width: int | None = 1024, generator=None, latents=None, prompt_embeds=None,
                prompt_attention_mask=None, negative_prompt_embeds=None, negative_prompt_attention_mask=None,
                max_sequence_length: int = 256, output_type: str = "pil", return_dict: bool = True,
                **extra) -> Prepared:
        pipe = self.pipe
        _refuse_unknown(extra, self.prepare, pipe)
        _refuse_other_schedulers(pipe)
        transformer = pipe.transformer
        height, width = _image_size(pipe, height, width, transformer.config.sample_size)
        pipe.check_inputs(prompt, height, width, negative_prompt, prompt_embeds, negative_prompt_embeds,
                          prompt_attention_mask, negative_prompt_attention_mask)
        pipe._guidance_scale, pipe._attention_kwargs = guidance_scale, None
        device = pipe._execution_device
        cfg = guidance_scale > 1
        embeds, _, neg, _ = self.encode(
            pipe.encode_prompt, prompt=prompt, negative_prompt=negative_prompt, do_classifier_free_guidance=cfg,
            num_images_per_prompt=num_images_per_prompt, device=device, prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds, prompt_attention_mask=prompt_attention_mask,
            negative_prompt_attention_mask=negative_prompt_attention_mask, max_sequence_length=max_sequence_length)
        plan = pipeline_plan(pipe, num_inference_steps, device, sigmas=sigmas)
        x = pipe.prepare_latents(_batch_size(prompt, prompt_embeds) * num_images_per_prompt,
                                 transformer.config.in_channels, height, width, embeds.dtype, device, generator,
                                 latents)

        def call(xm, t, c):  # the pipeline divides its float32 timestep by 1000, then casts
            return transformer(xm, encoder_hidden_states=c["text"], timestep=(t.float() / 1000).to(xm.dtype),
                               return_dict=False)[0]

        denoiser = PipelineDenoiser(call, plan.grid, {"text": embeds}, {"text": neg} if cfg else None,
                                    guidance_scale, dtype=transformer.dtype, device=device)
        return self.prepared(plan, denoiser, x, generator, self.decoder(output_type, return_dict))


class CogView4Adapter(Adapter):
    """``CogView4Pipeline``: flow matching on integer timesteps with a linear shift, GLM text, size conditioning."""

    decoding = Decoding("diffusers.pipelines.cogview4.pipeline_output:CogView4PipelineOutput",
                        unscale=_divide_scaling, cast_latents=False)

    def prepare(self, prompt=None, negative_prompt=None, height=None, width=None, num_inference_steps: int = 50,
                timesteps=None, sigmas=None, guidance_scale: float = 5.0, num_images_per_prompt: int = 1,
                generator=None, latents=None, prompt_embeds=None, negative_prompt_embeds=None, original_size=None,
                crops_coords_top_left=(0, 0), output_type: str = "pil", return_dict: bool = True,
                max_sequence_length: int = 1024, **extra) -> Prepared:
        pipe = self.pipe
        _refuse_unknown(extra, self.prepare, pipe)
        _refuse_other_schedulers(pipe)
        transformer = pipe.transformer
        height, width = _image_size(pipe, height, width, transformer.config.sample_size)
        pipe.check_inputs(prompt, height, width, negative_prompt, None, prompt_embeds, negative_prompt_embeds)
        pipe._guidance_scale, pipe._attention_kwargs, pipe._interrupt = guidance_scale, None, False
        device = pipe._execution_device
        cfg = guidance_scale > 1
        embeds, neg = self.encode(pipe.encode_prompt, prompt, negative_prompt, cfg,
                                  num_images_per_prompt=num_images_per_prompt, prompt_embeds=prompt_embeds,
                                  negative_prompt_embeds=negative_prompt_embeds,
                                  max_sequence_length=max_sequence_length, device=device)
        n = _batch_size(prompt, prompt_embeds) * num_images_per_prompt
        x = pipe.prepare_latents(n, transformer.config.in_channels, height, width, torch.float32, device, generator,
                                 latents)
        sizes = {name: torch.tensor([value], dtype=embeds.dtype, device=device).repeat(n, 1)
                 for name, value in (("original_size", original_size or (height, width)),
                                     ("target_size", (height, width)), ("crop_coords", crops_coords_top_left))}
        plan = self._plan(num_inference_steps, timesteps, sigmas, height, width, device)

        def call(xm, t, c):
            return transformer(hidden_states=xm, encoder_hidden_states=c["text"], timestep=t.float(),
                               original_size=c["original_size"], target_size=c["target_size"],
                               crop_coords=c["crop_coords"], return_dict=False)[0]

        denoiser = PipelineDenoiser(call, plan.grid, {"text": embeds, **sizes},
                                    {"text": neg, **sizes} if cfg else None, guidance_scale,
                                    dtype=transformer.dtype, device=device)
        return self.prepared(plan, denoiser, x, generator, self.decoder(output_type, return_dict))

    def _plan(self, steps: int, timesteps, sigmas, height: int, width: int, device):
        """The pipeline's schedule: integer timesteps ``linspace(T, 1, N)``, sigmas ``t / T``, shifted by ``mu``."""
        import numpy as np

        pipe = self.pipe
        cfg = pipe.scheduler.config
        train = cfg.num_train_timesteps
        patch = pipe.transformer.config.patch_size
        seq = (height // pipe.vae_scale_factor) * (width // pipe.vae_scale_factor) // patch ** 2
        timesteps = np.linspace(train, 1.0, steps) if timesteps is None else np.array(timesteps)
        timesteps = timesteps.astype(np.int64).astype(np.float32)
        sigmas = timesteps / train if sigmas is None else sigmas
        mu = _pipeline_module(pipe, "calculate_shift").calculate_shift(
            seq, cfg.get("base_image_seq_len", 256), cfg.get("base_shift", 0.25), cfg.get("max_shift", 0.75))
        return pipeline_plan(pipe, steps, device, timesteps=timesteps, sigmas=sigmas, mu=mu)


class Lumina2Adapter(Adapter):
    """``Lumina2Pipeline``: flow matching with Lumina's reversed time (t = 1 at the data), Gemma text behind a system
    prompt, CFG renormalised (``cfg_normalization``) and switched off after ``cfg_trunc_ratio`` of the steps."""

    decoding = Decoding("diffusers.pipelines.pipeline_utils:ImagePipelineOutput", unscale=_scale_and_shift,
                        cast_latents=False)

    def prepare(self, prompt=None, width=None, height=None, num_inference_steps: int = 30, guidance_scale: float = 4.0,
                negative_prompt=None, sigmas=None, num_images_per_prompt: int = 1, generator=None, latents=None,
                prompt_embeds=None, negative_prompt_embeds=None, prompt_attention_mask=None,
                negative_prompt_attention_mask=None, output_type: str = "pil", return_dict: bool = True,
                system_prompt=None, cfg_trunc_ratio: float = 1.0, cfg_normalization: bool = True,
                max_sequence_length: int = 256, **extra) -> Prepared:
        pipe = self.pipe
        _refuse_unknown(extra, self.prepare, pipe)
        _refuse_other_schedulers(pipe)
        height, width = _image_size(pipe, height, width)
        pipe._guidance_scale, pipe._attention_kwargs = guidance_scale, None
        pipe.check_inputs(prompt, height, width, negative_prompt, prompt_embeds=prompt_embeds,
                          negative_prompt_embeds=negative_prompt_embeds, prompt_attention_mask=prompt_attention_mask,
                          negative_prompt_attention_mask=negative_prompt_attention_mask,
                          max_sequence_length=max_sequence_length)
        device, transformer = pipe._execution_device, pipe.transformer
        cfg = guidance_scale > 1
        embeds, mask, neg, neg_mask = self.encode(
            pipe.encode_prompt, prompt, cfg, negative_prompt=negative_prompt,
            num_images_per_prompt=num_images_per_prompt, device=device, prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds, prompt_attention_mask=prompt_attention_mask,
            negative_prompt_attention_mask=negative_prompt_attention_mask, max_sequence_length=max_sequence_length,
            system_prompt=system_prompt)
        x = pipe.prepare_latents(_batch_size(prompt, prompt_embeds) * num_images_per_prompt,
                                 transformer.config.in_channels, height, width, embeds.dtype, device, generator,
                                 latents)
        plan = shifted_flow_plan(pipe, num_inference_steps, x.shape[1], device, sigmas)
        train = pipe.scheduler.config.num_train_timesteps

        def call(xm, t, c):  # the pipeline negates the guided output before its step: so does the network here
            return -transformer(hidden_states=xm, timestep=1 - t.float() / train, encoder_hidden_states=c["text"],
                                encoder_attention_mask=c["mask"], return_dict=False)[0]

        denoiser = PipelineDenoiser(call, plan.grid, {"text": embeds, "mask": mask},
                                    {"text": neg, "mask": neg_mask} if cfg else None,
                                    _truncated_guidance(plan.grid, guidance_scale, cfg_trunc_ratio),
                                    guidance_renorm=cfg_normalization, dtype=transformer.dtype, device=device)
        return self.prepared(plan, denoiser, x, generator, self.decoder(output_type, return_dict))


def _truncated_guidance(grid, guidance_scale: float, ratio: float):
    """Lumina 2's ``cfg_trunc_ratio``: no guidance at steps i with ``(i + 1) / N > ratio`` (a scale of 1 there).

    The scale is a function of the rows' model times, which name their grid
    points; the unconditional half is still evaluated at truncated steps
    (the pipeline skips it), so their cost is counted in full.
    """
    n = grid.steps
    cut = [i for i in range(n) if (i + 1) / n > ratio]
    if not cut:
        return guidance_scale
    truncated = grid.timesteps[cut]

    def scale(t: torch.Tensor) -> torch.Tensor:
        off = torch.isin(t, truncated.to(t.device, t.dtype))
        return torch.where(off, 1.0, guidance_scale)

    return scale


class HiDreamImageAdapter(Adapter):
    """``HiDreamImagePipeline``: four text encoders (two CLIP pooled, T5, Llama layers), a mixture-of-experts
    flow transformer on a fixed pixel area, negated output, batched CFG."""

    decoding = Decoding("diffusers.pipelines.hidream_image.pipeline_output:HiDreamImagePipelineOutput",
                        unscale=_scale_and_shift, cast_latents=False)

    def prepare(self, prompt=None, prompt_2=None, prompt_3=None, prompt_4=None, height=None, width=None,
                num_inference_steps: int = 50, sigmas=None, guidance_scale: float = 5.0, negative_prompt=None,
                negative_prompt_2=None, negative_prompt_3=None, negative_prompt_4=None,
                num_images_per_prompt: int = 1, generator=None, latents=None, prompt_embeds_t5=None,
                prompt_embeds_llama3=None, negative_prompt_embeds_t5=None, negative_prompt_embeds_llama3=None,
                pooled_prompt_embeds=None, negative_pooled_prompt_embeds=None, output_type: str = "pil",
                return_dict: bool = True, max_sequence_length: int = 128, **extra) -> Prepared:
        pipe = self.pipe
        _refuse_unknown(extra, self.prepare, pipe)
        height, width = self._size(height, width)
        prompts = dict(prompt=prompt, prompt_2=prompt_2, prompt_3=prompt_3, prompt_4=prompt_4,
                       negative_prompt=negative_prompt, negative_prompt_2=negative_prompt_2,
                       negative_prompt_3=negative_prompt_3, negative_prompt_4=negative_prompt_4)
        embeds = dict(prompt_embeds_t5=prompt_embeds_t5, prompt_embeds_llama3=prompt_embeds_llama3,
                      negative_prompt_embeds_t5=negative_prompt_embeds_t5,
                      negative_prompt_embeds_llama3=negative_prompt_embeds_llama3,
                      pooled_prompt_embeds=pooled_prompt_embeds,
                      negative_pooled_prompt_embeds=negative_pooled_prompt_embeds)
        pipe.check_inputs(**prompts, **embeds)
        pipe._guidance_scale, pipe._attention_kwargs, pipe._interrupt = guidance_scale, None, False
        device, transformer = pipe._execution_device, pipe.transformer
        cfg = guidance_scale > 1
        t5, neg_t5, llama, neg_llama, pooled, neg_pooled = self.encode(
            pipe.encode_prompt, **prompts, **embeds, do_classifier_free_guidance=cfg, device=device,
            num_images_per_prompt=num_images_per_prompt, max_sequence_length=max_sequence_length)
        n = _batch_size(prompt, pooled_prompt_embeds) * num_images_per_prompt  # the pipeline counts pooled rows
        x = pipe.prepare_latents(n, transformer.config.in_channels, height, width, pooled.dtype, device, generator,
                                 latents)
        plan = self._plan(num_inference_steps, sigmas, device)

        def side(text, layers, pool) -> dict:  # Llama's layers stack before the batch: rows first here
            return {"t5": text, "llama": layers.transpose(0, 1), "pooled": pool}

        def call(xm, t, c):
            return -transformer(hidden_states=xm, timesteps=t.float(), encoder_hidden_states_t5=c["t5"],
                                encoder_hidden_states_llama3=c["llama"].transpose(0, 1), pooled_embeds=c["pooled"],
                                return_dict=False)[0]

        denoiser = PipelineDenoiser(call, plan.grid, side(t5, llama, pooled),
                                    side(neg_t5, neg_llama, neg_pooled) if cfg else None, guidance_scale,
                                    dtype=transformer.dtype, device=device)
        return self.prepared(plan, denoiser, x, generator, self.decoder(output_type, return_dict))

    def _size(self, height, width) -> tuple[int, int]:
        """The pipeline's size: the asked aspect ratio scaled to its fixed area, on a grid of 2 latent pixels."""
        pipe = self.pipe
        height, width = _image_size(pipe, height, width)
        division = pipe.vae_scale_factor * 2
        scale = math.sqrt((pipe.default_sample_size * pipe.vae_scale_factor) ** 2 / (width * height))
        return int(height * scale // division * division), int(width * scale // division * division)

    def _plan(self, steps: int, sigmas, device):
        """Shifted by ``mu`` of the transformer's maximal sequence; UniPC set without one, as the pipeline does."""
        pipe = self.pipe
        if type(pipe.scheduler).__name__ == "UniPCMultistepScheduler":
            return plan_scheduler(pipe.scheduler, steps, device)
        _refuse_other_schedulers(pipe)
        mu = _pipeline_module(pipe, "calculate_shift").calculate_shift(pipe.transformer.max_seq)
        return pipeline_plan(pipe, steps, device, sigmas=sigmas, mu=mu)
