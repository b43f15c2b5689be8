"""Tiny random text-to-image and video pipelines built offline from configs (the image-input ones build on them).

Not used when sampling: this is the testing corner of the package; :mod:`hasten.testing.pipelines`
names every tiny pipeline.

No download: networks are built from small configs with random weights (seeded) and
tokenizers in memory, after the pattern of diffusers' own ``get_dummy_components``.
"""

from __future__ import annotations

import torch

from hasten.errors import HastenError
from hasten.integrations.text_encoders import (clip_text, clip_tokenizer, gemma_text, gemma_tokenizer, glm_text,
                                               llama_tokenizer, qwen_tokenizer, qwen_vl_text, t5_text, t5_tokenizer,
                                               umt5_text)

#: the text-to-image and video kinds of ``hasten make-tiny`` and the tests
TEXT_TO_IMAGE_KINDS = ("ddim", "ddpm", "sd", "sdxl", "sd3", "flux", "wan", "cogvideox", "hunyuanvideo", "ltx",
                       "qwenimage", "wan22", "wan22-ti2v", "wan-i2v", "wan22-i2v", "chroma", "auraflow", "cogview4",
                       "lumina2", "pixart-sigma", "sana", "hidream")


def tiny_image(size: int = 16):
    """A small RGB test image (a colour ramp) for the image-to-video pipelines."""
    import numpy as np
    from PIL import Image

    ramp = np.linspace(0, 255, size * size * 3).reshape(size, size, 3).astype("uint8")
    return Image.fromarray(ramp)


_IMAGE = tiny_image()
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
    "ltx": dict(prompt="a cat", height=32, width=32, num_frames=9, max_sequence_length=8),
    "wan22": dict(prompt="a cat", height=16, width=16, num_frames=5, max_sequence_length=8),
    "wan22-ti2v": dict(prompt="a cat", height=32, width=32, num_frames=5, max_sequence_length=8),
    "wan-i2v": dict(image=_IMAGE, prompt="a cat", height=16, width=16, num_frames=5, max_sequence_length=8),
    "wan22-i2v": dict(image=_IMAGE, prompt="a cat", height=16, width=16, num_frames=5, max_sequence_length=8),
    "qwenimage": dict(prompt="a cat", negative_prompt="a dog", height=32, width=32, max_sequence_length=16),
    "chroma": dict(prompt="a cat", negative_prompt="a dog", height=16, width=16, max_sequence_length=8),
    "auraflow": dict(prompt="a cat", negative_prompt="a dog", height=16, width=16, max_sequence_length=8),
    "cogview4": dict(prompt="a cat", negative_prompt="a dog", height=16, width=16, max_sequence_length=16),
    "lumina2": dict(prompt="a cat", negative_prompt="a dog", height=32, width=32, max_sequence_length=16,
                    system_prompt="a"),
    "pixart-sigma": dict(prompt="a cat", negative_prompt="a dog", height=32, width=32, max_sequence_length=8,
                         use_resolution_binning=False),
    "sana": dict(prompt="a cat", negative_prompt="a dog", height=128, width=128, max_sequence_length=8,
                 use_resolution_binning=False, complex_human_instruction=None),
    "hidream": dict(prompt="a cat", negative_prompt="a dog", max_sequence_length=8),
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


def text_to_image_pipeline(kind: str, prediction: str = "epsilon", scheduler_cls=None, seed: int = 0):
    """A tiny pipeline of one of :data:`TEXT_TO_IMAGE_KINDS`."""
    import diffusers as d

    if kind not in TEXT_TO_IMAGE_KINDS:
        raise HastenError(f"unknown tiny text-to-image pipeline {kind!r}; valid: {', '.join(TEXT_TO_IMAGE_KINDS)}")
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
    elif kind == "ltx":
        transformer = d.LTXVideoTransformer3DModel(in_channels=8, out_channels=8, patch_size=1, patch_size_t=1,
                                                   num_attention_heads=4, attention_head_dim=8, cross_attention_dim=32,
                                                   num_layers=1, caption_channels=32)
        # a timestep-conditioned decoder, as LTX-Video 0.9.1+ ships, so that decoding draws its noise
        vae = d.AutoencoderKLLTXVideo(latent_channels=8, block_out_channels=(8, 8, 8, 8),
                                      decoder_block_out_channels=(8, 8, 8, 8), layers_per_block=(1, 1, 1, 1, 1),
                                      decoder_layers_per_block=(1, 1, 1, 1, 1),
                                      spatio_temporal_scaling=(True, True, False, False),
                                      decoder_spatio_temporal_scaling=(True, True, False, False),
                                      timestep_conditioning=True, patch_size=1, patch_size_t=1, encoder_causal=True,
                                      decoder_causal=False)
        vae.use_framewise_encoding = vae.use_framewise_decoding = False
        pipe = d.LTXPipeline(scheduler=d.FlowMatchEulerDiscreteScheduler(), vae=vae.eval(), text_encoder=t5_text(),
                             tokenizer=t5_tokenizer(), transformer=transformer.eval())
    elif kind == "qwenimage":
        transformer = d.QwenImageTransformer2DModel(patch_size=2, in_channels=16, out_channels=4, num_layers=2,
                                                    attention_head_dim=16, num_attention_heads=3,
                                                    joint_attention_dim=16, guidance_embeds=False,
                                                    axes_dims_rope=(8, 4, 4))
        vae = d.AutoencoderKLQwenImage(base_dim=24, z_dim=4, dim_mult=[1, 2, 4], num_res_blocks=1,
                                       temperal_downsample=[False, True], latents_mean=[0.0] * 4, latents_std=[1.0] * 4)
        pipe = d.QwenImagePipeline(scheduler=d.FlowMatchEulerDiscreteScheduler(), vae=vae.eval(),
                                   text_encoder=qwen_vl_text(), tokenizer=qwen_tokenizer(),
                                   transformer=transformer.eval())
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
    elif kind == "chroma":
        transformer = d.ChromaTransformer2DModel(patch_size=1, in_channels=4, num_layers=1, num_single_layers=1,
                                                 attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                                 axes_dims_rope=[4, 4, 8], approximator_hidden_dim=32,
                                                 approximator_layers=1, approximator_num_channels=16)
        pipe = d.ChromaPipeline(scheduler=d.FlowMatchEulerDiscreteScheduler(), text_encoder=t5_text(),
                                tokenizer=t5_tokenizer(), transformer=transformer.eval(), vae=flow_vae(1))
    elif kind == "auraflow":
        transformer = d.AuraFlowTransformer2DModel(sample_size=32, patch_size=2, in_channels=4, num_mmdit_layers=1,
                                                   num_single_dit_layers=1, attention_head_dim=8, num_attention_heads=4,
                                                   caption_projection_dim=32, joint_attention_dim=32, out_channels=4,
                                                   pos_embed_max_size=256)
        pipe = d.AuraFlowPipeline(scheduler=d.FlowMatchEulerDiscreteScheduler(), text_encoder=umt5_text(),
                                  tokenizer=t5_tokenizer(), transformer=transformer.eval(), vae=sd_vae())
    elif kind == "cogview4":
        transformer = d.CogView4Transformer2DModel(patch_size=2, in_channels=4, num_layers=2, attention_head_dim=4,
                                                   num_attention_heads=4, out_channels=4, text_embed_dim=32,
                                                   time_embed_dim=8, condition_dim=4)
        scheduler = d.FlowMatchEulerDiscreteScheduler(base_shift=0.25, max_shift=0.75, base_image_seq_len=256,
                                                      use_dynamic_shifting=True, time_shift_type="linear")
        pipe = d.CogView4Pipeline(scheduler=scheduler, text_encoder=glm_text(), tokenizer=llama_tokenizer(add_bos=True),
                                  transformer=transformer.eval(), vae=sd_vae())
    elif kind == "lumina2":
        transformer = d.Lumina2Transformer2DModel(sample_size=4, patch_size=2, in_channels=4, hidden_size=8,
                                                  num_layers=2, num_attention_heads=1, num_kv_heads=1, multiple_of=16,
                                                  ffn_dim_multiplier=None, norm_eps=1e-5, scaling_factor=1.0,
                                                  axes_dim_rope=[4, 2, 2], cap_feat_dim=8)
        pipe = d.Lumina2Pipeline(scheduler=d.FlowMatchEulerDiscreteScheduler(), text_encoder=gemma_text(8),
                                 tokenizer=gemma_tokenizer(), transformer=transformer.eval(), vae=flow_vae(4))
    elif kind == "pixart-sigma":
        transformer = d.PixArtTransformer2DModel(sample_size=32, num_layers=2, patch_size=2, attention_head_dim=8,
                                                 num_attention_heads=3, caption_channels=32, in_channels=4,
                                                 cross_attention_dim=24, out_channels=8, attention_bias=True,
                                                 activation_fn="gelu-approximate", num_embeds_ada_norm=1000,
                                                 norm_type="ada_norm_single", norm_elementwise_affine=False,
                                                 norm_eps=1e-6)
        # 8x down, as the real VAE: sample_size 32 is PixArt's 256 bin, so binned sizes stay small
        vae = d.AutoencoderKL(block_out_channels=(4, 4, 4, 4), down_block_types=["DownEncoderBlock2D"] * 4,
                              up_block_types=["UpDecoderBlock2D"] * 4, latent_channels=4, norm_num_groups=2)
        pipe = d.PixArtSigmaPipeline(scheduler=d.DDIMScheduler(), text_encoder=t5_text(), tokenizer=t5_tokenizer(),
                                     transformer=transformer.eval(), vae=vae.eval())
    elif kind == "sana":
        transformer = d.SanaTransformer2DModel(patch_size=1, in_channels=4, out_channels=4, num_layers=1,
                                               num_attention_heads=2, attention_head_dim=4,
                                               num_cross_attention_heads=2, cross_attention_head_dim=4,
                                               cross_attention_dim=8, caption_channels=8, sample_size=16)
        # a 32x down DC-AE, as the real one: sample_size 16 is Sana's 512 bin
        blocks = ("ResBlock",) * 5 + ("EfficientViTBlock",)
        vae = d.AutoencoderDC(in_channels=3, latent_channels=4, attention_head_dim=2, encoder_block_types=blocks,
                              decoder_block_types=blocks, encoder_block_out_channels=(8,) * 6,
                              decoder_block_out_channels=(8,) * 6, encoder_qkv_multiscales=((),) * 5 + ((5,),),
                              decoder_qkv_multiscales=((),) * 5 + ((5,),), encoder_layers_per_block=(1,) * 6,
                              decoder_layers_per_block=(1,) * 6, downsample_block_type="conv",
                              upsample_block_type="interpolate", decoder_norm_types="rms_norm",
                              decoder_act_fns="silu", scaling_factor=0.41407)
        pipe = d.SanaPipeline(scheduler=d.FlowMatchEulerDiscreteScheduler(shift=7.0), text_encoder=gemma_text(8, 2),
                              tokenizer=gemma_tokenizer(), transformer=transformer.eval(), vae=vae.eval())
    elif kind == "hidream":
        from transformers import LlamaConfig, LlamaForCausalLM

        transformer = d.HiDreamImageTransformer2DModel(patch_size=2, in_channels=4, out_channels=4, num_layers=1,
                                                       num_single_layers=1, attention_head_dim=8, num_attention_heads=4,
                                                       caption_channels=[32, 16], text_emb_dim=64, num_routed_experts=4,
                                                       num_activated_experts=2, axes_dims_rope=(4, 2, 2),
                                                       max_resolution=(32, 32), llama_layers=(0, 1))
        vae = d.AutoencoderKL(block_out_channels=(4, 4, 4, 4), down_block_types=["DownEncoderBlock2D"] * 4,
                              up_block_types=["UpDecoderBlock2D"] * 4, latent_channels=4, norm_num_groups=2,
                              scaling_factor=0.3611, shift_factor=0.1159)
        llama = LlamaForCausalLM(LlamaConfig(bos_token_id=1, eos_token_id=2, pad_token_id=3, hidden_size=16,
                                             intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
                                             vocab_size=64, max_position_embeddings=512))
        clip = dict(hidden=32, projection=32, positions=128, with_projection=True)
        pipe = d.HiDreamImagePipeline(scheduler=d.FlowMatchEulerDiscreteScheduler(), vae=vae.eval(),
                                      text_encoder=clip_text(**clip), tokenizer=clip_tokenizer(128),
                                      text_encoder_2=clip_text(**clip), tokenizer_2=clip_tokenizer(128),
                                      text_encoder_3=t5_text(32), tokenizer_3=t5_tokenizer(),
                                      text_encoder_4=llama.eval(), tokenizer_4=llama_tokenizer(add_bos=True),
                                      transformer=transformer.eval())
        # HiDream samples a fixed area of (default_sample_size x vae_scale_factor)^2 pixels, 128 latents a side by
        # default; 16 keeps the tiny pipeline fast (an attribute, not saved: a saved copy samples 128 again)
        pipe.default_sample_size = 16
    elif kind.startswith("wan"):
        pipe = tiny_wan(kind)
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


def _wan_transformer(in_channels: int, out_channels: int = 16, **extra):
    from diffusers import WanTransformer3DModel

    return WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12,
                                 in_channels=in_channels, out_channels=out_channels, text_dim=32, freq_dim=256,
                                 ffn_dim=32, num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
                                 rope_max_seq_len=32, **extra).eval()


def tiny_wan(kind: str):
    """The Wan family: ``wan`` (2.1 T2V), ``wan22`` (two experts, boundary 0.875), ``wan22-ti2v`` (TI2V-5B:
    48-channel VAE, per-token timesteps), ``wan-i2v`` (2.1 I2V with a CLIP image encoder), ``wan22-i2v``
    (I2V with two experts, no image encoder).

    Built after diffusers' own ``get_dummy_components``; the two experts get
    different weights (diffusers' tests seed both alike, which would hide a wrong
    switch), and the flow shift of 3 puts the boundary between grid points.
    """
    import diffusers as d

    vae = d.AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                             temperal_downsample=[False, True, True])
    if kind == "wan":
        transformer = _wan_transformer(16)
        return d.WanPipeline(tokenizer=t5_tokenizer(), text_encoder=t5_text(), vae=vae.eval(), transformer=transformer,
                             scheduler=d.FlowMatchEulerDiscreteScheduler(shift=7.0))
    text = dict(tokenizer=t5_tokenizer(), text_encoder=t5_text())
    scheduler = d.FlowMatchEulerDiscreteScheduler(shift=3.0)
    if kind == "wan22-ti2v":
        vae = d.AutoencoderKLWan(base_dim=3, z_dim=48, in_channels=12, out_channels=12, is_residual=True,
                                 patch_size=2, latents_mean=[0.0] * 48, latents_std=[1.0] * 48, dim_mult=[1, 1, 1, 1],
                                 num_res_blocks=1, scale_factor_spatial=16, scale_factor_temporal=4,
                                 temperal_downsample=[False, True, True])
        return d.WanPipeline(**text, vae=vae.eval(), transformer=_wan_transformer(48, 48), scheduler=scheduler,
                             expand_timesteps=True)
    if kind == "wan22":
        return d.WanPipeline(**text, vae=vae.eval(), transformer=_wan_transformer(16),
                             transformer_2=_wan_transformer(16), scheduler=scheduler, boundary_ratio=0.875)
    if kind == "wan22-i2v":
        return d.WanImageToVideoPipeline(**text, vae=vae.eval(), transformer=_wan_transformer(36),
                                         transformer_2=_wan_transformer(36), scheduler=scheduler,
                                         boundary_ratio=0.875)
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(hidden_size=4, projection_dim=4, num_hidden_layers=2,
                                                             num_attention_heads=2, image_size=32,
                                                             intermediate_size=16, patch_size=1)).eval()
    return d.WanImageToVideoPipeline(**text, vae=vae.eval(), transformer=_wan_transformer(36, image_dim=4),
                                     scheduler=d.FlowMatchEulerDiscreteScheduler(shift=7.0), image_encoder=encoder,
                                     image_processor=CLIPImageProcessor(crop_size=32, size=32))
