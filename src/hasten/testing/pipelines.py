"""Tiny random diffusers pipelines built offline from configs, for tests, docs and ``hasten make-tiny``.

Not used when sampling: this is the testing corner of the package.

No download: networks are built from small configs with random weights (seeded) and
tokenizers in memory, after the pattern of diffusers' own ``get_dummy_components``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from hasten.errors import HastenError
from hasten.integrations.text_encoders import clip_text, clip_tokenizer, llama_tokenizer, t5_text, t5_tokenizer
from hasten.testing.workflows import WORKFLOW_KINDS, workflow_pipeline

KINDS = ("ddim", "ddpm", "sd", "sdxl", "sd3", "flux", "wan", "cogvideox", "hunyuanvideo") + WORKFLOW_KINDS
#: a small valid call of each tiny pipeline (besides num_inference_steps, generator and output_type)
TINY_CALLS = {
    "ddim": dict(batch_size=1),
    "ddpm": dict(batch_size=1),
    "sd": dict(prompt="a cat"),
    "sdxl": dict(prompt="a cat", height=16, width=16),
    "sd3": dict(prompt="a cat", height=16, width=16, max_sequence_length=8),
    "flux": dict(prompt="a cat", height=16, width=16, max_sequence_length=8),
    "wan": dict(prompt="a cat", height=16, width=16, num_frames=5, max_sequence_length=8),
    "cogvideox": dict(prompt="a cat", height=16, width=16, num_frames=9, max_sequence_length=16),
    "hunyuanvideo": dict(prompt="a cat", height=16, width=16, num_frames=5, max_sequence_length=16,
                         prompt_template={"template": "{}", "crop_start": 0}),
}


def tiny_unet2d():
    from diffusers import UNet2DModel

    return UNet2DModel(sample_size=8, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(8, 16),
                       norm_num_groups=4, down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"))


def sd_vae():
    """The small VAE of the Stable Diffusion family pipelines (4 latent channels, 2x down)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(block_out_channels=[8, 16], in_channels=3, out_channels=3,
                         down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
                         up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"], latent_channels=4, norm_num_groups=4)


def flow_vae(latent_channels: int):
    """The one-level VAE with shift and scale of the flow-matching image pipelines (SD3, Flux)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(sample_size=32, in_channels=3, out_channels=3, block_out_channels=(4,), layers_per_block=1,
                         latent_channels=latent_channels, norm_num_groups=1, use_quant_conv=False,
                         use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035)


def sd_scheduler(prediction: str, **extra):
    from diffusers import DDIMScheduler

    return DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                         set_alpha_to_one=False, prediction_type=prediction, steps_offset=1, **extra)


def cogvideox_scheduler(**overrides):
    """CogVideoX's released scheduler (THUDM/CogVideoX-2b): v-prediction on a zero-terminal-SNR, trailing grid.

    alpha = 0 at its first point, so lambda = log(alpha / sigma) is undefined there.
    """
    from diffusers import CogVideoXDDIMScheduler

    config = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                  prediction_type="v_prediction", rescale_betas_zero_snr=True, set_alpha_to_one=True,
                  snr_shift_scale=3.0, steps_offset=0, timestep_spacing="trailing")
    return CogVideoXDDIMScheduler(**{**config, **overrides})


def tiny_pipeline(kind: str, prediction: str = "epsilon", scheduler_cls=None, seed: int = 0):
    """A tiny pipeline of one of :data:`KINDS` (the image-input ones: :mod:`hasten.testing.workflows`)."""
    import diffusers as d

    if kind not in KINDS:
        raise HastenError(f"unknown tiny pipeline {kind!r}; valid: {', '.join(KINDS)}")
    if kind in WORKFLOW_KINDS:
        return workflow_pipeline(kind, seed=seed, prediction=prediction, scheduler_cls=scheduler_cls)
    torch.manual_seed(seed)
    if kind == "ddim":
        pipe = d.DDIMPipeline(unet=tiny_unet2d(), scheduler=d.DDIMScheduler(clip_sample=False))
    elif kind == "ddpm":
        pipe = d.DDPMPipeline(unet=tiny_unet2d(), scheduler=d.DDPMScheduler(clip_sample=False, num_train_timesteps=100))
    elif kind == "sd":
        unet = d.UNet2DConditionModel(block_out_channels=(8, 16), layers_per_block=1, sample_size=8, in_channels=4,
                                      out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                      up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=16,
                                      norm_num_groups=4, attention_head_dim=4)
        vae = sd_vae()
        scheduler = sd_scheduler(prediction)
        if scheduler_cls is not None:
            scheduler = scheduler_cls.from_config(scheduler.config)
        pipe = d.StableDiffusionPipeline(unet=unet, vae=vae, text_encoder=clip_text(16), tokenizer=clip_tokenizer(),
                                         scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                         requires_safety_checker=False)
    elif kind == "sdxl":
        from transformers import CLIPTextConfig, CLIPTextModelWithProjection

        unet = d.UNet2DConditionModel(block_out_channels=(8, 16), layers_per_block=1, sample_size=8, in_channels=4,
                                      out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                      up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(2, 4),
                                      use_linear_projection=True, addition_embed_type="text_time",
                                      addition_time_embed_dim=8, transformer_layers_per_block=(1, 1),
                                      projection_class_embeddings_input_dim=80, cross_attention_dim=64,
                                      norm_num_groups=4)
        vae = sd_vae()
        scheduler = sd_scheduler(prediction, timestep_spacing="leading")
        config = CLIPTextConfig(bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=32, intermediate_size=37,
                                num_attention_heads=4, num_hidden_layers=2, vocab_size=64, max_position_embeddings=16,
                                projection_dim=32)
        pipe = d.StableDiffusionXLPipeline(vae=vae, unet=unet, scheduler=scheduler, text_encoder=clip_text(32),
                                           tokenizer=clip_tokenizer(),
                                           text_encoder_2=CLIPTextModelWithProjection(config).eval(),
                                           tokenizer_2=clip_tokenizer(), add_watermarker=False)
    elif kind == "cogvideox":
        transformer = d.CogVideoXTransformer3DModel(num_attention_heads=4, attention_head_dim=8, in_channels=4,
                                                    out_channels=4, time_embed_dim=2, text_embed_dim=32, num_layers=1,
                                                    sample_width=2, sample_height=2, sample_frames=9, patch_size=2,
                                                    temporal_compression_ratio=4, max_text_seq_length=16)
        vae = d.AutoencoderKLCogVideoX(in_channels=3, out_channels=3, down_block_types=("CogVideoXDownBlock3D",) * 4,
                                       up_block_types=("CogVideoXUpBlock3D",) * 4, block_out_channels=(8, 8, 8, 8),
                                       latent_channels=4, layers_per_block=1, norm_num_groups=2,
                                       temporal_compression_ratio=4)
        t5 = t5_text()
        pipe = d.CogVideoXPipeline(tokenizer=t5_tokenizer(), text_encoder=t5, vae=vae.eval(),
                                   transformer=transformer.eval(),
                                   scheduler=d.CogVideoXDDIMScheduler(prediction_type="v_prediction",
                                                                      clip_sample=False))
    elif kind == "hunyuanvideo":
        from transformers import LlamaConfig, LlamaModel

        transformer = d.HunyuanVideoTransformer3DModel(in_channels=4, out_channels=4, num_attention_heads=2,
                                                       attention_head_dim=10, num_layers=1, num_single_layers=1,
                                                       num_refiner_layers=1, patch_size=1, patch_size_t=1,
                                                       guidance_embeds=True, text_embed_dim=16,
                                                       pooled_projection_dim=8, rope_axes_dim=(2, 4, 4))
        vae = d.AutoencoderKLHunyuanVideo(in_channels=3, out_channels=3, latent_channels=4,
                                          down_block_types=("HunyuanVideoDownBlock3D",) * 4,
                                          up_block_types=("HunyuanVideoUpBlock3D",) * 4,
                                          block_out_channels=(8, 8, 8, 8), layers_per_block=1, act_fn="silu",
                                          norm_num_groups=4, scaling_factor=0.476986, spatial_compression_ratio=8,
                                          temporal_compression_ratio=4, mid_block_add_attention=True)
        llama = LlamaModel(LlamaConfig(bos_token_id=1, eos_token_id=2, pad_token_id=3, hidden_size=16,
                                       intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
                                       vocab_size=64, max_position_embeddings=512))
        pipe = d.HunyuanVideoPipeline(text_encoder=llama.eval(), tokenizer=llama_tokenizer(),
                                      transformer=transformer.eval(), vae=vae.eval(),
                                      scheduler=d.FlowMatchEulerDiscreteScheduler(shift=7.0),
                                      text_encoder_2=clip_text(8, positions=77), tokenizer_2=clip_tokenizer())
    elif kind == "sd3":
        from transformers import CLIPTextConfig, CLIPTextModelWithProjection

        transformer = d.SD3Transformer2DModel(sample_size=32, patch_size=1, in_channels=4, num_layers=1,
                                              attention_head_dim=8, num_attention_heads=4, caption_projection_dim=32,
                                              joint_attention_dim=32, pooled_projection_dim=64, out_channels=4)
        config = CLIPTextConfig(bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=32, intermediate_size=37,
                                num_attention_heads=4, num_hidden_layers=2, vocab_size=64, max_position_embeddings=16,
                                projection_dim=32)
        t5 = t5_text()
        vae = flow_vae(4)
        pipe = d.StableDiffusion3Pipeline(
            scheduler=d.FlowMatchEulerDiscreteScheduler(), vae=vae, transformer=transformer.eval(),
            text_encoder=CLIPTextModelWithProjection(config).eval(), tokenizer=clip_tokenizer(),
            text_encoder_2=CLIPTextModelWithProjection(config).eval(), tokenizer_2=clip_tokenizer(),
            text_encoder_3=t5, tokenizer_3=t5_tokenizer())
    elif kind == "wan":
        vae = d.AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                                 temperal_downsample=[False, True, True])
        transformer = d.WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12,
                                              in_channels=16, out_channels=16, text_dim=32, freq_dim=256, ffn_dim=32,
                                              num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
                                              rope_max_seq_len=32)
        t5 = t5_text()
        pipe = d.WanPipeline(tokenizer=t5_tokenizer(), text_encoder=t5, vae=vae.eval(),
                             transformer=transformer.eval(), scheduler=d.FlowMatchEulerDiscreteScheduler(shift=7.0))
    else:
        transformer = d.FluxTransformer2DModel(patch_size=1, in_channels=4, num_layers=1, num_single_layers=1,
                                               attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                               pooled_projection_dim=32, axes_dims_rope=[4, 4, 8], guidance_embeds=True)
        t5 = t5_text()
        vae = flow_vae(1)
        # eval(): freshly built modules train by default, and T5's dropout would change every call
        pipe = d.FluxPipeline(scheduler=d.FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=clip_text(32, 32),
                              tokenizer=clip_tokenizer(), text_encoder_2=t5, tokenizer_2=t5_tokenizer(),
                              transformer=transformer.eval())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_tiny_pipeline(kind: str, path: Path | str) -> Path:
    """Build a tiny pipeline and ``save_pretrained`` it to ``path``."""
    path = Path(path)
    tiny_pipeline(kind).save_pretrained(str(path))
    return path
