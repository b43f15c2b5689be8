"""What every adapter shares: :class:`Prepared`, the :class:`Adapter` base, refusals and the one decoder.

An adapter states how its pipeline decodes as data (a :class:`Decoding`);
:func:`decode_latents` is the single function that reads it.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable

import torch

from hasten.errors import HastenError
from hasten.grid import Grid
from hasten.inpaint import KnownRegion, KnownRegionStep
from hasten.integrations.schedulers import SchedulerPlan, plan_scheduler
from hasten.steps import Step, make_step


@dataclass
class Prepared:
    """What the engine needs for one pipeline call.

    ``latents`` and ``decode`` speak the pipeline's own latent convention;
    :func:`hasten.integrations.model.prepare_call` converts them to hasten's
    state with ``pipeline_scale`` (VE schedulers keep ``x / alpha``).
    """

    grid: Grid
    solver: str
    denoiser: Any
    latents: torch.Tensor
    noise: torch.Tensor | None
    decode: Callable[[torch.Tensor], Any]  # final latents -> the pipeline's usual output
    clip: float | None = None
    clip_eps: bool = False
    pipeline_scale: torch.Tensor | None = None  # x_pipeline = pipeline_scale[i] * x_hasten at grid point i
    scheduler: str = ""  # the scheduler sampled with, for notices and reports
    callback: Any = None  # a StepCallback, set by prepare_call
    known: KnownRegion | None = None  # an inpainting's known region, blended back after every step
    schedule: Any = None  # a multistep solver's per-point orders (hasten.multistep.MultistepSchedule)

    @classmethod
    def from_plan(cls, plan: SchedulerPlan, denoiser, latents: torch.Tensor, noise: torch.Tensor | None,
                  decode: Callable) -> "Prepared":
        return cls(plan.grid, plan.solver, denoiser, latents, noise, decode, plan.clip, plan.clip_eps,
                   plan.pipeline_scale, plan.describe(), schedule=plan.schedule)

    def step(self) -> Step:
        """The hasten step of this call's scheduler (keeping an inpainting's known region where there is one)."""
        step = make_step(self.grid, self.solver, self.noise, self.clip, self.clip_eps, self.schedule)
        return step if self.known is None else KnownRegionStep(step, self.known)


@dataclass(frozen=True)
class Decoding:
    """How a pipeline turns its final latents into its usual output, as its own ``__call__`` does.

    ``output`` names the output class (``"module:Class"``, imported when
    decoding); ``field`` is its ``images`` or ``frames``. ``unscale(pipe, z,
    **shape)`` turns latents into the VAE's input; ``vae_decode(pipe, z)``
    replaces unscale plus ``vae.decode`` where the pipeline has its own.
    ``postprocess``: ``image`` (the image processor), ``video`` (the video
    processor) or ``pixels`` (no VAE: ``(x / 2 + 0.5).clamp(0, 1)``).
    ``cast_latents``: ``output_type="latent"`` returns the latents on the VAE's
    device and dtype (the image pipelines) rather than as sampled (the video
    ones). ``watermark``: apply ``pipe.watermark`` where set (SDXL).
    ``extras``: further fields of the output, also appended to the tuple.
    """

    output: str
    unscale: Callable[..., torch.Tensor] | None = None
    vae_decode: Callable[[Any, torch.Tensor], torch.Tensor] | None = None
    field: str = "images"
    postprocess: str = "image"
    cast_latents: bool = True
    watermark: bool = False
    extras: tuple[tuple[str, Any], ...] = ()


def decode_latents(pipe, decoding: Decoding, z: torch.Tensor, output_type: str = "pil", return_dict: bool = True,
                   **shape) -> Any:
    """``z`` (final latents, the pipeline's convention) as the pipeline's output for ``output_type``.

    ``shape`` holds what an unscale or vae_decode needs besides the latents (Flux: height, width).
    """
    if decoding.postprocess == "pixels":
        out = _pixels(pipe, z, output_type)
    else:
        out = _through_vae(pipe, decoding, z, output_type, shape)
    extras = dict(decoding.extras)
    if not return_dict:
        return (out, *extras.values())
    module, name = decoding.output.split(":")
    return getattr(importlib.import_module(module), name)(**{decoding.field: out}, **extras)


def _through_vae(pipe, decoding: Decoding, z: torch.Tensor, output_type: str, shape: dict) -> Any:
    """The VAE's decoding of ``z`` and the pipeline's postprocessing (or ``z`` for ``output_type="latent"``)."""
    vae, device = pipe.vae, pipe._execution_device
    if decoding.cast_latents:
        z = z.to(device, vae.dtype)
    if output_type == "latent":
        return z
    z = z.to(device, vae.dtype)
    with torch.no_grad():
        if decoding.vae_decode is not None:
            pixels = decoding.vae_decode(pipe, z, **shape)
        else:
            pixels = vae.decode(decoding.unscale(pipe, z, **shape), return_dict=False)[0]
    if decoding.watermark and pipe.watermark is not None:
        pixels = pipe.watermark.apply_watermark(pixels)
    if decoding.postprocess == "video":
        return pipe.video_processor.postprocess_video(video=pixels, output_type=output_type)
    return pipe.image_processor.postprocess(pixels, output_type=output_type)


def _pixels(pipe, x: torch.Tensor, output_type: str) -> Any:
    """Pixel-space samples in [-1, 1] as the unconditional pipelines return them (pt, numpy or PIL)."""
    image = (x / 2 + 0.5).clamp(0, 1).cpu()
    if output_type != "pt":
        image = image.permute(0, 2, 3, 1).numpy()
    if output_type == "pil":
        image = pipe.numpy_to_pil(image)
    return image


def _divide_scaling(pipe, z: torch.Tensor) -> torch.Tensor:
    """The VAE's input of most pipelines: ``z / scaling_factor``."""
    return z / pipe.vae.config.scaling_factor


def _scale_and_shift(pipe, z: torch.Tensor) -> torch.Tensor:
    """The VAE's input of the flow image pipelines (SD3, Flux): ``z / scaling_factor + shift_factor``."""
    return z / pipe.vae.config.scaling_factor + pipe.vae.config.shift_factor


def _image_size(pipe, height, width, sample_size: int | None = None) -> tuple[int, int]:
    """The call's size, or the pipeline's default: ``sample_size`` (its ``default_sample_size`` unless given) latents
    times its ``vae_scale_factor``."""
    side = (pipe.default_sample_size if sample_size is None else sample_size) * pipe.vae_scale_factor
    return height or side, width or side


def _per_channel_unscale(pipe, z: torch.Tensor) -> torch.Tensor:
    """The VAE input of the Wan-VAE pipelines (Wan, Qwen-Image): per-channel ``latents_mean`` / ``latents_std``
    undone."""
    config = pipe.vae.config
    mean = torch.tensor(config.latents_mean).view(1, config.z_dim, 1, 1, 1).to(z)
    inv_std = 1.0 / torch.tensor(config.latents_std).view(1, config.z_dim, 1, 1, 1).to(z)
    return z / inv_std + mean


class Adapter:
    """Base of the adapters: holds the pipeline; subclasses implement ``prepare(**call) -> Prepared``.

    Every prompt encoding goes through :meth:`encode`. With ``broadcast_conditioning``
    set (the distributed executor), rank 0 alone runs the text encoders and sends
    the embeddings to the other ranks once: only the denoiser works on every rank.
    Subclasses state their :class:`Decoding` and the call argument that counts
    samples per prompt (``count_argument``).
    """

    decoding: Decoding
    count_argument = "num_images_per_prompt"

    def __init__(self, pipe):
        self.pipe = pipe
        self.broadcast_conditioning = False

    def per_prompt_count(self, batch: int) -> dict[str, int]:
        """The call argument that asks this pipeline for ``batch`` samples (per prompt)."""
        return {self.count_argument: batch}

    def normalize_call(self, call: dict[str, Any]) -> dict[str, Any]:
        """``call`` with this pipeline's own rules for the generic arguments applied (none here)."""
        return dict(call)

    def decoder(self, output_type: str, return_dict: bool, **shape) -> Callable[[torch.Tensor], Any]:
        """Final latents -> this call's output, by the adapter's :class:`Decoding`."""
        return partial(decode_latents, self.pipe, self.decoding, output_type=output_type, return_dict=return_dict,
                       **shape)

    def prepared(self, plan: SchedulerPlan, denoiser, latents: torch.Tensor, generator, decode: Callable,
                 noise_dtype: torch.dtype | None = None) -> Prepared:
        """The :class:`Prepared` call: float32 latents, the plan's step noise drawn after them from ``generator``."""
        noise = plan.draw_noise(latents.shape, generator, latents.device, noise_dtype or latents.dtype)
        return Prepared.from_plan(plan, denoiser, latents.float(), noise, decode)

    def encode(self, fn, *args, **kwargs):
        """``fn(*args, **kwargs)`` (a pipeline's ``encode_prompt``), run once on rank 0 when broadcasting."""
        if not self.broadcast_conditioning:
            return fn(*args, **kwargs)
        import torch.distributed as dist

        box = [fn(*args, **kwargs) if dist.get_rank() == 0 else None]
        dist.broadcast_object_list(box, src=0)
        device = self.pipe._execution_device

        def to_device(value):
            if isinstance(value, torch.Tensor):
                return value.to(device)
            if isinstance(value, (tuple, list)):
                return type(value)(to_device(v) for v in value)
            return value

        return to_device(box[0])


def bind_call(pipe, args: tuple, kwargs: dict[str, Any]) -> dict[str, Any]:
    """A call's arguments by name, bound as the pipeline's own ``__call__`` binds them.

    Positional arguments take the signature's order (``fast("a cat", 32, 32)`` is prompt, height,
    width on Stable Diffusion, prompt, prompt_2, negative_prompt on Flux); too many, or one given
    twice, is the pipeline's own TypeError, raised as a HastenError. Keywords the signature does not
    name pass through, for the adapter to take or refuse.
    """
    signature = inspect.signature(pipe.__call__)
    params = signature.parameters
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    named = {k: v for k, v in kwargs.items() if takes_any or k in params}
    try:
        bound = signature.bind(*args, **named)
    except TypeError as err:
        order = [k for k, p in params.items() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        raise HastenError(f"{type(pipe).__name__} call: {err} (positional order: {', '.join(order[:6])}, ...)") \
            from None
    call = {k: v for k, v in kwargs.items() if k not in named}
    for name, value in bound.arguments.items():
        kind = params[name].kind
        if kind is inspect.Parameter.VAR_KEYWORD:
            call.update(value)
        elif kind is inspect.Parameter.VAR_POSITIONAL:
            if value:
                raise HastenError(f"{type(pipe).__name__} call: {len(value)} extra positional arguments "
                                  f"({name}) are not supported by hasten; pass them by name")
        else:
            call[name] = value
    return call


def _batch_size(prompt, prompt_embeds) -> int:
    """Prompts in the call: from the prompt (string or list) or, without one, from its embeddings."""
    if prompt is not None:
        return 1 if isinstance(prompt, str) else len(prompt)
    return prompt_embeds.shape[0]


def _true_cfg(true_cfg_scale: float, negative_prompt, negative_prompt_embeds, negative_pooled_prompt_embeds) -> bool:
    """Whether a true-CFG pipeline (Flux, HunyuanVideo) guides: a scale above 1 and a negative prompt."""
    has_negative = negative_prompt is not None or (negative_prompt_embeds is not None
                                                   and negative_pooled_prompt_embeds is not None)
    return true_cfg_scale > 1 and has_negative


def shifted_flow_plan(pipe, steps: int, image_seq_len: int, device, sigmas=None,
                      own_sigmas: bool = True) -> SchedulerPlan:
    """The flow transformers' own schedule: sigmas ``linspace(1, 1/N, N)`` (or the call's ``sigmas``), shifted by
    ``mu`` for the latent sequence length.

    Flux, LTX-Video, Qwen-Image, Chroma and Lumina 2 compute it alike; the
    pipeline module's own ``calculate_shift`` and ``retrieve_timesteps`` do
    the work, with the shift settings of the pipeline's scheduler config.
    ``own_sigmas=False``: the pipeline leaves the sigmas to its scheduler (FluxPipeline
    with a ``use_flow_sigmas`` config).
    """
    import numpy as np

    module = _pipeline_module(pipe, "calculate_shift")
    cfg = pipe.scheduler.config
    if sigmas is None and own_sigmas:
        sigmas = np.linspace(1.0, 1 / steps, steps)
    mu = module.calculate_shift(image_seq_len, cfg.get("base_image_seq_len", 256), cfg.get("max_image_seq_len", 4096),
                                cfg.get("base_shift", 0.5), cfg.get("max_shift", 1.15))
    return pipeline_plan(pipe, steps, device, sigmas=sigmas, mu=mu)


def pipeline_plan(pipe, steps: int, device, **schedule) -> SchedulerPlan:
    """The plan of the schedule a pipeline sets itself: its module's ``retrieve_timesteps(scheduler, steps, device,
    **schedule)`` (custom ``timesteps`` / ``sigmas`` / ``mu``), then read as it is."""
    _pipeline_module(pipe, "retrieve_timesteps").retrieve_timesteps(pipe.scheduler, steps, device, **schedule)
    return plan_scheduler(pipe.scheduler)


def _pipeline_module(pipe, name: str):
    """The module of ``pipe``'s class (or of the diffusers class it derives from) that defines ``name``."""
    for cls in type(pipe).__mro__:
        module = importlib.import_module(cls.__module__)
        if hasattr(module, name):
            return module
    raise HastenError(f"{type(pipe).__name__}: no {name} in its pipeline module")


def _refuse_unknown(extra: dict, prepare, pipe) -> None:
    """Refuse call arguments an adapter's ``prepare`` does not take, listing those it does.

    An argument the pipeline's ``__call__`` takes, given at its default value
    (``eta=0.0``, ``cross_attention_kwargs=None``, ...), changes nothing and is accepted.
    """
    defaults = {k: p.default for k, p in inspect.signature(pipe.__call__).parameters.items()
                if p.default is not inspect.Parameter.empty}
    refused = sorted(k for k, v in extra.items() if not (k in defaults and _same_default(v, defaults[k])))
    if refused:
        allowed = sorted(set(inspect.signature(prepare).parameters) - {"self", "extra"})
        at_default = [f"{k}={defaults[k]!r}" for k in refused if k in defaults]
        hint = f" (hasten takes {', '.join(at_default)}, the pipeline's default, only)" if at_default else ""
        raise HastenError(f"{type(pipe).__name__} call arguments not supported by hasten: "
                          f"{', '.join(refused)}{hint}; supported: {', '.join(allowed)}")


def _same_default(value, default) -> bool:
    """Whether a call argument is the pipeline's own default (None, a number, a string, a list of them)."""
    if value is default:
        return True
    simple = (type(None), bool, int, float, str, list, tuple)
    return isinstance(value, simple) and isinstance(default, simple) and value == default


def _refuse_other_schedulers(pipe, multistep: bool = False) -> None:
    """Pipelines whose adapter sets the flow sigmas itself take FlowMatchEulerDiscreteScheduler only.

    ``multistep``: the pipeline leaves the sigmas to the scheduler (SD3), so the
    flow-sigma multistep schedulers hasten reproduces (DPM-Solver++, UniPC) run too.
    """
    from hasten.integrations.schedulers import is_flow, multistep_solver

    scheduler = pipe.scheduler
    if type(scheduler).__name__ == "FlowMatchEulerDiscreteScheduler":
        return
    if multistep and is_flow(scheduler) and multistep_solver(scheduler)[0] is not None:
        return
    extra = (", DPMSolverMultistepScheduler and UniPCMultistepScheduler with use_flow_sigmas=True and "
             "prediction_type='flow_prediction'") if multistep else ""
    raise HastenError(f"{type(pipe).__name__} with {type(scheduler).__name__} is not supported; "
                      f"supported: FlowMatchEulerDiscreteScheduler (with or without stochastic_sampling){extra}")


def _refuse_unscaled_ve(pipe, supported: str) -> None:
    """Refuse a VE scheduler (Euler family, Heun, LMS, KDPM2, ...) in a pipeline that samples it unscaled.

    DDPMPipeline, DDIMPipeline and WanPipeline neither scale their noise by ``init_noise_sigma`` nor
    call ``scale_model_input``; ``supported`` names what works in that pipeline.
    """
    scheduler = pipe.scheduler
    if float(getattr(scheduler, "init_noise_sigma", 1.0)) != 1.0:
        raise HastenError(f"{type(pipe).__name__} with {type(scheduler).__name__} is not supported: the pipeline "
                          "neither scales its noise nor its model input for this VE scheduler; supported: "
                          f"{supported} (init_noise_sigma = 1)")
