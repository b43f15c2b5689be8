"""hasten.accelerate on tiny diffusers pipelines built offline from configs (random weights)."""

import pytest
import torch

pytest.importorskip("transformers")

from diffusers import (  # noqa: E402
    AutoencoderKL,
    DDIMPipeline,
    DDIMScheduler,
    DDPMPipeline,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
    UNet2DModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer  # noqa: E402

import hasten  # noqa: E402
from hasten import HastenError  # noqa: E402


def tiny_unet():
    torch.manual_seed(0)
    return UNet2DModel(sample_size=8, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(8, 16),
                       norm_num_groups=4, down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"))


def tiny_tokenizer():
    words = ["a", "cat", "dog", "photo", "of", "red", "blue", "the"]
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "!": 2}
    for w in words:
        vocab[w + "</w>"] = len(vocab)
    for ch in sorted(set("".join(words))):
        vocab.setdefault(ch, len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=16)


def tiny_sd(prediction="epsilon", scheduler_cls=DDIMScheduler):
    torch.manual_seed(0)
    unet = UNet2DConditionModel(block_out_channels=(8, 16), layers_per_block=1, sample_size=8, in_channels=4,
                                out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=16,
                                norm_num_groups=4, attention_head_dim=4)
    vae = AutoencoderKL(block_out_channels=[8, 16], in_channels=3, out_channels=3,
                        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
                        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"], latent_channels=4, norm_num_groups=4)
    text = CLIPTextModel(CLIPTextConfig(bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=16,
                                        intermediate_size=32, num_attention_heads=2, num_hidden_layers=2,
                                        vocab_size=64, max_position_embeddings=16))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, prediction_type=prediction, steps_offset=1)
    scheduler = scheduler_cls.from_config(scheduler.config)
    pipe = StableDiffusionPipeline(unet=unet, vae=vae, text_encoder=text, tokenizer=tiny_tokenizer(),
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def latents_of(output):
    return output.hasten["latents"]


@pytest.mark.parametrize("spacing", ["leading", "trailing"])
def test_sequential_reproduces_ddim_pipeline(spacing):
    pipe = DDIMPipeline(unet=tiny_unet(), scheduler=DDIMScheduler(clip_sample=False, timestep_spacing=spacing))
    pipe.set_progress_bar_config(disable=True)
    ours = hasten.accelerate(pipe)(batch_size=2, generator=torch.Generator().manual_seed(3), num_inference_steps=10,
                                   output_type="np")
    theirs = pipe(batch_size=2, generator=torch.Generator().manual_seed(3), num_inference_steps=10, output_type="np")
    assert abs(ours.images - theirs.images).max() <= 1e-5
    assert ours.hasten["rounds"] == 10 and ours.hasten["nfe"] == 10


def test_sequential_reproduces_ddpm_pipeline_noise_and_all():
    pipe = DDPMPipeline(unet=tiny_unet(), scheduler=DDPMScheduler(clip_sample=False, num_train_timesteps=50))
    pipe.set_progress_bar_config(disable=True)
    ours = hasten.accelerate(pipe)(batch_size=2, generator=torch.Generator().manual_seed(1), num_inference_steps=50,
                                   output_type="np")
    theirs = pipe(batch_size=2, generator=torch.Generator().manual_seed(1), num_inference_steps=50, output_type="np")
    assert abs(ours.images - theirs.images).max() <= 1e-5
    assert ours.hasten["solver"] == "ddpm"


@pytest.mark.parametrize("method,options", [("chords", {"cores": 4}), ("paradigms", {"cores": 4}),
                                            ("srds", {}), ("parasolver-turbo", {"cores": 3})])
def test_parallel_methods_on_ddpm_pipeline_converge_to_its_trajectory(method, options):
    pipe = DDPMPipeline(unet=tiny_unet(), scheduler=DDPMScheduler(clip_sample=False, num_train_timesteps=40))
    pipe.set_progress_bar_config(disable=True)
    seq = hasten.accelerate(pipe)(batch_size=1, generator=torch.Generator().manual_seed(0), output_type="np",
                                  num_inference_steps=40)
    tight = {"tol": 1e-6} if method != "chords" else {}
    fast = hasten.accelerate(pipe, method, stop="none", **options, **tight)(
        batch_size=1, generator=torch.Generator().manual_seed(0), output_type="np", num_inference_steps=40)
    assert (latents_of(fast) - latents_of(seq)).abs().max() <= 1e-4


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_sequential_reproduces_stable_diffusion_with_cfg(prediction):
    pipe = tiny_sd(prediction)
    kwargs = dict(prompt=["a photo of a cat", "a red dog"], negative_prompt=["blue", "the"], guidance_scale=5.0,
                  num_inference_steps=8, output_type="latent", num_images_per_prompt=2)
    ours = hasten.accelerate(pipe)(generator=torch.Generator().manual_seed(2), **kwargs)
    theirs = pipe(generator=torch.Generator().manual_seed(2), **kwargs)
    assert ours.images.shape == theirs.images.shape == (4, 4, 8, 8)
    assert (ours.images - theirs.images).abs().max() <= 1e-5


def test_every_method_runs_on_stable_diffusion_and_streams_decoded_hits():
    pipe = tiny_sd()
    decoded = []
    fast = hasten.accelerate(pipe, "chords", cores=3, stop="none",
                             on_hit=lambda hit, decode: decoded.append(decode(hit.x).images))
    out = fast("a photo of a cat", num_inference_steps=10, guidance_scale=3.0, output_type="np",
               generator=torch.Generator().manual_seed(0))
    assert len(decoded) == 3 and out.images.shape == (1, 16, 16, 3)
    seq = hasten.accelerate(pipe)("a photo of a cat", num_inference_steps=10, guidance_scale=3.0, output_type="np",
                                  generator=torch.Generator().manual_seed(0))
    assert abs(decoded[-1] - seq.images).max() <= 1e-4  # the last hit is the sequential result
    for method in ("paradigms", "srds", "parasolver", "parasolver-turbo"):
        res = hasten.accelerate(pipe, method)("a cat", num_inference_steps=10, output_type="latent",
                                             generator=torch.Generator().manual_seed(0))
        assert torch.isfinite(res.images).all() and res.hasten["rounds"] <= 10
    cached = hasten.accelerate(pipe, cache="abcache:2:interval=2")("a cat", num_inference_steps=10,
                                                                   output_type="latent")
    assert cached.hasten["nfe"] < 10


def test_multistep_scheduler_runs_as_its_first_order_counterpart(caplog):
    pipe = tiny_sd(scheduler_cls=DPMSolverMultistepScheduler)
    with caplog.at_level("WARNING", logger="hasten"):
        out = hasten.accelerate(pipe, "chords", cores=2)("a cat", num_inference_steps=6, output_type="latent")
    assert "first-order counterpart DDIMScheduler" in caplog.text and out.hasten["solver"] == "ddim"


def test_bad_input_is_refused_before_any_model_call():
    class NotAPipeline:
        pass

    with pytest.raises(HastenError, match="pipeline NotAPipeline is not supported yet; supported: DDIMPipeline"):
        hasten.accelerate(NotAPipeline())
    pipe = tiny_sd()
    with pytest.raises(HastenError, match="call arguments not supported by hasten: ip_adapter_image"):
        hasten.accelerate(pipe)("a cat", ip_adapter_image=object())
    with pytest.raises(HastenError, match="unknown method 'magic'"):
        hasten.accelerate(pipe, "magic")
    with pytest.raises(ValueError):  # the pipeline's own check_inputs: prompt and embeddings together
        hasten.accelerate(pipe)("a cat", prompt_embeds=torch.zeros(1, 16, 16))


def tiny_flux(guidance_embeds=True):
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import T5Config, T5EncoderModel, T5Tokenizer

    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=4, num_layers=1, num_single_layers=1,
                                         attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                         pooled_projection_dim=32, axes_dims_rope=[4, 4, 8],
                                         guidance_embeds=guidance_embeds)
    clip = CLIPTextModel(CLIPTextConfig(bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=32,
                                        intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
                                        vocab_size=64, max_position_embeddings=16, projection_dim=32))
    t5 = T5EncoderModel(T5Config(vocab_size=64, d_model=32, d_ff=37, d_kv=8, num_heads=4, num_layers=2))
    words = "a cat dog photo of red blue the".split()
    t5_tok = T5Tokenizer(vocab=[("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [(f"\u2581{w}", -1.0) for w in words]
                         + [(c, -2.0) for c in "abcdefghijklmnopqrstuvwxyz"])
    vae = AutoencoderKL(sample_size=32, in_channels=3, out_channels=3, block_out_channels=(4,), layers_per_block=1,
                        latent_channels=1, norm_num_groups=1, use_quant_conv=False, use_post_quant_conv=False,
                        shift_factor=0.0609, scaling_factor=1.5035)
    pipe = FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=clip.eval(),
                        tokenizer=tiny_tokenizer(), text_encoder_2=t5.eval(), tokenizer_2=t5_tok,
                        transformer=transformer.eval())  # eval: T5's dropout would make every call differ
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize("true_cfg", [False, True])
def test_sequential_reproduces_flux(true_cfg):
    pipe = tiny_flux()
    kwargs = dict(prompt="a photo of a cat", height=16, width=16, num_inference_steps=6, guidance_scale=3.5,
                  output_type="latent", max_sequence_length=8, num_images_per_prompt=2)
    if true_cfg:
        kwargs.update(negative_prompt="a red dog", true_cfg_scale=2.0)
    ours = hasten.accelerate(pipe)(generator=torch.Generator().manual_seed(4), **kwargs)
    theirs = pipe(generator=torch.Generator().manual_seed(4), **kwargs)
    assert ours.images.shape == theirs.images.shape
    assert (ours.images - theirs.images).abs().max() <= 1e-5


def test_every_method_runs_on_flux_and_decodes():
    pipe = tiny_flux()
    seq = hasten.accelerate(pipe)("a cat", height=16, width=16, num_inference_steps=8, output_type="np",
                                  max_sequence_length=8, generator=torch.Generator().manual_seed(0))
    assert seq.images.shape == (1, 16, 16, 3)
    for method, opts in [("chords", {"cores": 3, "stop": "none"}), ("paradigms", {"tol": 1e-6}),
                         ("srds", {"tol": 1e-7}), ("parasolver-turbo", {"cores": 2, "tol": 1e-6})]:
        out = hasten.accelerate(pipe, method, **opts)("a cat", height=16, width=16, num_inference_steps=8,
                                                      output_type="np", max_sequence_length=8,
                                                      generator=torch.Generator().manual_seed(0))
        assert abs(out.images - seq.images).max() <= 1e-3, method
