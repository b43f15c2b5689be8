"""A pipeline's scheduler as a hasten grid, step and noise: reproduced, replaced with a notice, or refused.

hasten steps statelessly between grid points; a pipeline's scheduler is only
read after ``set_timesteps`` (``timesteps``, ``alphas_cumprod``,
``final_alpha_cumprod``, ``sigmas``). The rule for every scheduler:

* **reproduced** (sequential sampling equals the pipeline's own loop):
  DDIM and CogVideoXDDIM (``ddim``, landing where their ``step`` lands; DDIM
  with ``clip_sample``, which CogVideoXDDIM's step ignores), DDPM (``ddpm``, fixed_small variance, ``clip_sample``),
  Euler (``ddim`` in VP coordinates: deterministic Euler on ``x / alpha``
  against ``sigma / alpha`` is DDIM), EulerAncestral (``ddpm`` in VP
  coordinates: its ``sigma_up`` is the DDPM posterior std), and
  FlowMatchEulerDiscrete (``euler``; ``euler-stochastic`` with
  ``stochastic_sampling``), and the multistep DPMSolverMultistep
  (``dpm++2m`` / ``dpm++2m-sde``: DPM-Solver++ of order 1-2, midpoint or heun,
  any sigma schedule, VP or ``use_flow_sigmas``) and UniPCMultistep (``unipc``:
  bh1 / bh2 with its corrector, ``predict_x0``, no ``solver_p``), as the
  stateless multistep steps of :mod:`hasten.multistep` with the per-point
  orders of their ``step`` (:class:`~hasten.multistep.MultistepSchedule`).
  The stochastic ones get their noise drawn before
  sampling, in the order and from the generator the pipeline would use.
* **first-order counterpart, with a logged notice naming it and why**: the
  other multistep and higher-order schedulers (DPM-Solver of order 3 or on
  noise prediction, DEIS, PNDM, LMS, Heun, KDPM2, CogVideoXDPM, ...) run as the
  first-order scheduler built from the same config: DDIM for
  VP models (``clip_sample`` only if the config asks for it),
  FlowMatchEulerDiscrete for flow models, CogVideoXDDIM for CogVideoXDPM
  (keeping ``snr_shift_scale``). Sequential sampling then equals the pipeline
  run with that counterpart.
* **refused** before sampling, naming what works: consistency samplers
  (LCM, TCD), EDM-preconditioned schedulers (no beta schedule to build a
  counterpart from), DDPM with a learned or large variance, dynamic
  thresholding.

Latents: VE schedulers (Euler family) keep ``x_pipeline = x_vp / alpha`` and
start from noise scaled by ``init_noise_sigma``; :attr:`SchedulerPlan.pipeline_scale`
holds that factor per grid point, so callers convert at the start, at the end
and for callbacks.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass, replace
from typing import Any

import torch

from hasten.errors import HastenError
from hasten.grid import Grid
from hasten.multistep import MultistepSchedule

log = logging.getLogger("hasten")

#: schedulers hasten reproduces, and the step that does it
REPRODUCED = {"DDIMScheduler": "ddim", "CogVideoXDDIMScheduler": "ddim", "DDPMScheduler": "ddpm",
              "EulerDiscreteScheduler": "ddim", "EulerAncestralDiscreteScheduler": "ddpm",
              "FlowMatchEulerDiscreteScheduler": "euler"}
#: schedulers refused outright, with the reason
REFUSED = {
    "LCMScheduler": "a consistency sampler (it re-noises every step by design)",
    "TCDScheduler": "a consistency sampler (it re-noises every step by design)",
    "FlowMatchLCMScheduler": "a consistency sampler (it re-noises every step by design)",
    "EDMEulerScheduler": "EDM-preconditioned (no beta schedule to build a first-order counterpart from)",
    "EDMDPMSolverMultistepScheduler": "EDM-preconditioned (no beta schedule to build a first-order counterpart from)",
    "CosineDPMSolverMultistepScheduler": "EDM-preconditioned (no beta schedule to build a first-order counterpart "
                                         "from)",
}
SUPPORTED = ("DDIM, DDPM, Euler, EulerAncestral, FlowMatchEulerDiscrete, CogVideoXDDIM, DPMSolverMultistep "
             "(DPM-Solver++ 1-2M, SDE) and UniPCMultistep (reproduced); other multistep VP and flow schedulers "
             "(run as their first-order counterpart)")
#: multistep schedulers hasten reproduces with a stateless multistep step (where :func:`multistep_solver` says so)
MULTISTEP = ("DPMSolverMultistepScheduler", "UniPCMultistepScheduler")


@dataclass
class SchedulerPlan:
    """How hasten samples a pipeline's scheduler.

    Attributes:
        scheduler: the scheduler the grid was read from (the pipeline's own, or its counterpart), configured.
        solver: the hasten step (``ddim``, ``ddpm``, ``euler``, ``euler-stochastic``).
        grid: the grid read from ``scheduler``.
        clip: the x0 clamp of ``clip_sample`` (its ``clip_sample_range``), or None.
        clip_eps: whether the clamped x0 also sets eps (DDPM), or the network's eps stays (DDIM).
        noise: how the pipeline draws step noise: ``"t>0"`` (DDPM: from the call's generator at steps
            with t > 0), ``"every"`` (EulerAncestral: every step, from the generator), ``"global"``
            (flow ``stochastic_sampling``: every step, from torch's global generator), or None.
        pipeline_scale: float64 (N + 1,): ``x_pipeline = pipeline_scale[i] * x_hasten`` at point i.
        counterpart_of: the pipeline's scheduler name when ``scheduler`` replaces it.
        schedule: the per-point orders of a multistep solver (``dpm++2m``, ``unipc``), else None.
    """

    scheduler: Any
    solver: str
    grid: Grid
    clip: float | None = None
    clip_eps: bool = False
    noise: str | None = None
    pipeline_scale: torch.Tensor | None = None
    counterpart_of: str | None = None
    schedule: MultistepSchedule | None = None

    def draw_noise(self, shape, generator, device, dtype) -> torch.Tensor | None:
        """Every step's noise (N, *shape) in the pipeline's own order, or None for a deterministic step."""
        from diffusers.utils.torch_utils import randn_tensor

        if self.noise is None:
            return None
        draws = []
        for t in self.grid.timesteps.tolist():
            if self.noise == "t>0" and not t > 0:
                draws.append(torch.zeros(shape, device=device, dtype=dtype))
            elif self.noise == "global":  # FlowMatchEulerDiscreteScheduler.step: no generator, float32 sample
                draws.append(randn_tensor(shape, generator=None, device=torch.device(device), dtype=torch.float32))
            elif self.noise == "float32":  # DPMSolverMultistepScheduler.step (SDE): the generator, float32
                draws.append(randn_tensor(shape, generator=generator, device=torch.device(device), dtype=torch.float32))
            else:
                draws.append(randn_tensor(shape, generator=generator, device=torch.device(device), dtype=dtype))
        return torch.stack(draws).float()

    @property
    def keeps_ve_latents(self) -> bool:
        """Whether the pipeline's latents are VE (``x / alpha``): the Euler family, sampled as itself."""
        return _keeps_ve_latents(self.scheduler, self.counterpart_of)

    def starting_at(self, start: int) -> "SchedulerPlan":
        """The plan of the steps from grid point ``start`` on, for a pipeline that starts from its noised image.

        The image-to-image pipelines take ``timesteps[start:]`` (``get_timesteps``
        with ``strength``) and noise the image latents to the first of them
        with the scheduler's own ``add_noise`` / ``scale_noise``: VP latents
        for VP schedulers, ``x / alpha`` for the Euler family. So the first
        point's latent convention is that of the noised image, not of
        ``init_noise_sigma`` times noise.
        """
        grid = self.grid.starting_at(start)
        scale = self.pipeline_scale[start:].clone()
        scale[0] = 1 / float(grid.alpha[0]) if self.keeps_ve_latents else 1.0
        schedule = None if self.schedule is None else self.schedule.starting_at(start)
        return replace(self, grid=grid, pipeline_scale=scale, schedule=schedule)

    def describe(self) -> str:
        """One line for notices and the scheduler matrix."""
        own = type(self.scheduler).__name__
        return own if self.counterpart_of is None else f"{own} (first-order counterpart of {self.counterpart_of})"


def _keeps_ve_latents(scheduler, counterpart_of: str | None) -> bool:
    return counterpart_of is None and type(scheduler).__name__.startswith("Euler")


def is_flow(scheduler) -> bool:
    """Whether a scheduler samples a flow-matching model (velocity prediction on flow sigmas)."""
    config = scheduler.config
    return ("FlowMatch" in type(scheduler).__name__ or bool(config.get("use_flow_sigmas"))
            or config.get("prediction_type") == "flow_prediction")


def multistep_solver(scheduler) -> tuple[str | None, str]:
    """(hasten's multistep solver for ``scheduler`` or None, why not): DPM-Solver++ 1-2M and UniPC are reproduced."""
    name, config = type(scheduler).__name__, scheduler.config
    if name not in MULTISTEP:
        return None, "a multistep or higher-order scheduler hasten does not implement"
    flow_sigmas, flow_pred = bool(config.get("use_flow_sigmas")), config.get("prediction_type") == "flow_prediction"
    if flow_sigmas != flow_pred:
        return None, "use_flow_sigmas and prediction_type='flow_prediction' are set apart"
    if name == "DPMSolverMultistepScheduler":
        if config.algorithm_type not in ("dpmsolver++", "sde-dpmsolver++"):
            return None, f"algorithm_type={config.algorithm_type!r} (reproduced: dpmsolver++, sde-dpmsolver++)"
        if config.solver_order > 2:
            return None, f"solver_order={config.solver_order} (reproduced: 1, 2)"
        if config.get("variance_type") is not None:
            return None, f"variance_type={config.variance_type!r} (reproduced: None)"
        return ("dpm++2m-sde" if config.algorithm_type == "sde-dpmsolver++" else "dpm++2m"), ""
    if not config.predict_x0:
        return None, "predict_x0=False (reproduced: predict_x0=True)"
    if getattr(scheduler, "solver_p", None) is not None:
        return None, "a solver_p predictor (reproduced: UniPC's own)"
    if config.solver_type not in ("bh1", "bh2"):
        return None, f"solver_type={config.solver_type!r} (reproduced: bh1, bh2)"
    return "unipc", ""


def unreproduced_variant(scheduler) -> str | None:
    """Why a variant of a reproduced multistep scheduler is refused (None: it is reproduced).

    * UniPC ``bh1`` onto a final sigma of 0: ``B(h) = h`` is infinite there and
      the pipeline's own last step is NaN.
    * UniPC on Karras / exponential / beta sigmas with ``final_sigmas_type="sigma_min"``:
      the last step goes from sigma_min to sigma_min (h = 0), which the UniPC
      coefficients divide by.
    * DPM-Solver++ SDE on flow sigmas: its noise term is not the one hasten's step draws.
    """
    name, config = type(scheduler).__name__, scheduler.config
    spaced = [k for k in ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas") if config.get(k)]
    if name == "UniPCMultistepScheduler" and config.solver_type == "bh1" and config.final_sigmas_type == "zero":
        return ("solver_type='bh1' and final_sigmas_type='zero' is not supported: the pipeline's own last step is "
                "NaN there (B(h) = h is infinite at sigma = 0); supported: solver_type='bh2', or solver_type='bh1' "
                "with final_sigmas_type='sigma_min' (without Karras / exponential / beta sigmas)")
    if name == "UniPCMultistepScheduler" and spaced and config.final_sigmas_type == "sigma_min":
        return (f"{spaced[0]}=True and final_sigmas_type='sigma_min' is not supported: the last step runs from "
                "sigma_min to sigma_min (h = 0); supported: final_sigmas_type='zero' with solver_type='bh2'")
    if name == "DPMSolverMultistepScheduler" and config.algorithm_type == "sde-dpmsolver++" and is_flow(scheduler):
        return ("algorithm_type='sde-dpmsolver++' on flow sigmas is not supported: hasten's SDE step does not "
                "reproduce the pipeline's there; supported: algorithm_type='dpmsolver++' with use_flow_sigmas=True, "
                "or sde-dpmsolver++ on a VP (non-flow) config")
    return None


def first_order_scheduler(scheduler) -> tuple[Any, str, str | None]:
    """(scheduler, solver, replaced name): the pipeline's own if hasten reproduces it, else its counterpart."""
    name = type(scheduler).__name__
    config = scheduler.config
    if name in REFUSED:
        raise HastenError(f"{name} is not supported: {REFUSED[name]}; supported: {SUPPORTED}")
    solver, why = multistep_solver(scheduler)
    if solver is not None and (refusal := unreproduced_variant(scheduler)):
        raise HastenError(f"{name} with {refusal}")
    if solver is not None:
        if config.get("thresholding"):
            raise HastenError(f"{name} with thresholding=True (dynamic thresholding) is not supported: hasten's "
                              f"multistep step {solver!r} does not threshold; use thresholding=False")
        return scheduler, solver, None
    if name in REPRODUCED:
        _check_reproducible(name, config)
        solver = REPRODUCED[name]
        if name == "FlowMatchEulerDiscreteScheduler" and config.get("stochastic_sampling"):
            solver = "euler-stochastic"
        return scheduler, solver, None
    from diffusers import CogVideoXDDIMScheduler, DDIMScheduler, FlowMatchEulerDiscreteScheduler

    if config.get("thresholding"):  # no first-order counterpart thresholds: the notice could not name one
        raise HastenError(f"{name} with thresholding=True (dynamic thresholding) is not supported: hasten would run "
                          "its first-order counterpart, which does not threshold; use thresholding=False")
    if name == "CogVideoXDPMScheduler":
        counterpart, solver = CogVideoXDDIMScheduler.from_config(config), "ddim"
    elif is_flow(scheduler):
        shift = config.get("flow_shift")  # UniPC / DPM-Solver name the flow shift differently
        extra = {} if shift is None else {"shift": shift}
        counterpart, solver = FlowMatchEulerDiscreteScheduler.from_config(config, **extra), "euler"
    elif hasattr(scheduler, "alphas_cumprod") and ("beta_schedule" in config or config.get("trained_betas")):
        # DDIM's own default clip_sample=True must not slip in from a config that never asked for it
        counterpart = DDIMScheduler.from_config(config, clip_sample=bool(config.get("clip_sample", False)))
        solver = "ddim"
    else:
        raise HastenError(f"scheduler {name} is not supported; supported: {SUPPORTED}")
    log.warning("hasten: %s is not reproduced (%s); sampling with its first-order counterpart %s built from the "
                "same config%s", name, why, type(counterpart).__name__,
                " (clip_sample=True, as the config asks)" if _clips(counterpart) else "")
    return counterpart, solver, name


def _clips(scheduler) -> bool:
    """Whether the scheduler's ``step`` clamps x0: ``clip_sample`` set, except in CogVideoXDDIM (it never clips)."""
    return bool(scheduler.config.get("clip_sample")) and type(scheduler).__name__ != "CogVideoXDDIMScheduler"


def _check_reproducible(name: str, config) -> None:
    """Refuse the options of a reproduced scheduler that hasten's steps do not implement."""
    if config.get("thresholding"):
        raise HastenError(f"{name} with thresholding=True (dynamic thresholding) is not supported; use "
                          "thresholding=False (clip_sample is supported)")
    if name == "DDPMScheduler" and config.get("variance_type", "fixed_small") != "fixed_small":
        raise HastenError(f"DDPMScheduler with variance_type={config.variance_type!r} is not supported; "
                          "supported: fixed_small")
    if name == "FlowMatchEulerDiscreteScheduler" and config.get("invert_sigmas"):
        raise HastenError("FlowMatchEulerDiscreteScheduler with invert_sigmas=True is not supported; use the "
                          "default invert_sigmas=False")


def plan_scheduler(pipe_scheduler, steps: int | None = None, device=None) -> SchedulerPlan:
    """The plan for ``pipe_scheduler``: ``set_timesteps(steps)`` on it (and its counterpart), then read.

    ``steps=None``: the pipeline's scheduler is already configured (a pipeline's
    own ``retrieve_timesteps`` with custom sigmas), and must be reproduced.
    """
    scheduler, solver, replaced = first_order_scheduler(pipe_scheduler)
    if steps is not None:
        if steps < 1:
            raise HastenError(f"num_inference_steps must be >= 1, got {steps}")
        pipe_scheduler.set_timesteps(steps, device=device)  # as the pipeline would: fixes init_noise_sigma
        if scheduler is not pipe_scheduler:
            scheduler.set_timesteps(steps, device=device)
    elif replaced is not None:
        raise HastenError(f"{replaced} is not supported by this pipeline's adapter; supported: "
                          "FlowMatchEulerDiscreteScheduler")
    grid = Grid.from_scheduler(scheduler)
    name = type(scheduler).__name__
    clip = float(scheduler.config.get("clip_sample_range", 1.0)) if _clips(scheduler) else None
    noise = {"DDPMScheduler": "t>0", "EulerAncestralDiscreteScheduler": "every"}.get(name)
    if solver == "euler-stochastic":
        noise = "global"
    if solver == "dpm++2m-sde":
        noise = "float32"
    schedule = None
    if solver in ("dpm++2m", "dpm++2m-sde"):
        schedule = MultistepSchedule.dpm_solver(scheduler.config, grid.steps)
    elif solver == "unipc":
        schedule = MultistepSchedule.unipc(scheduler.config, grid.steps)
    if _keeps_ve_latents(scheduler, replaced):
        scale = 1 / grid.alpha  # VE latents: x / alpha
    else:
        scale = torch.ones(grid.steps + 1, dtype=torch.float64)
        # the pipeline's noise, unit noise for the counterpart (flow schedulers have no init_noise_sigma: 1)
        scale[0] = float(getattr(pipe_scheduler, "init_noise_sigma", 1.0))
    clip_eps = name == "DDPMScheduler"
    return SchedulerPlan(scheduler, solver, grid, clip, clip_eps, noise, scale, replaced, schedule)


def pipeline_module(pipe, name: str):
    """The module of ``pipe``'s class (or of the diffusers class it derives from) that defines ``name``."""
    for cls in type(pipe).__mro__:
        module = importlib.import_module(cls.__module__)
        if hasattr(module, name):
            return module
    raise HastenError(f"{type(pipe).__name__}: no {name} in its pipeline module")


def pipeline_plan(pipe, steps: int, device, **schedule) -> SchedulerPlan:
    """The plan of the schedule a pipeline sets itself: its module's ``retrieve_timesteps(scheduler, steps, device,
    **schedule)`` (custom ``timesteps`` / ``sigmas`` / ``mu``), then read as it is."""
    pipeline_module(pipe, "retrieve_timesteps").retrieve_timesteps(pipe.scheduler, steps, device, **schedule)
    return plan_scheduler(pipe.scheduler)


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

    module = pipeline_module(pipe, "calculate_shift")
    cfg = pipe.scheduler.config
    if sigmas is None and own_sigmas:
        sigmas = np.linspace(1.0, 1 / steps, steps)
    mu = module.calculate_shift(image_seq_len, cfg.get("base_image_seq_len", 256), cfg.get("max_image_seq_len", 4096),
                                cfg.get("base_shift", 0.5), cfg.get("max_shift", 1.15))
    return pipeline_plan(pipe, steps, device, sigmas=sigmas, mu=mu)


def refuse_other_schedulers(pipe, multistep: bool = False) -> None:
    """Pipelines whose adapter sets the flow sigmas itself take FlowMatchEulerDiscreteScheduler only.

    ``multistep``: the pipeline leaves the sigmas to the scheduler (SD3), so the
    flow-sigma multistep schedulers hasten reproduces (DPM-Solver++, UniPC) run too.
    """
    scheduler = pipe.scheduler
    if type(scheduler).__name__ == "FlowMatchEulerDiscreteScheduler":
        return
    if multistep and is_flow(scheduler) and multistep_solver(scheduler)[0] is not None:
        return
    extra = (", DPMSolverMultistepScheduler and UniPCMultistepScheduler with use_flow_sigmas=True and "
             "prediction_type='flow_prediction'") if multistep else ""
    raise HastenError(f"{type(pipe).__name__} with {type(scheduler).__name__} is not supported; "
                      f"supported: FlowMatchEulerDiscreteScheduler (with or without stochastic_sampling){extra}")


def refuse_unscaled_ve(pipe, supported: str) -> None:
    """Refuse a VE scheduler (Euler family, Heun, LMS, KDPM2, ...) in a pipeline that samples it unscaled.

    DDPMPipeline, DDIMPipeline and WanPipeline neither scale their noise by ``init_noise_sigma`` nor
    call ``scale_model_input``; ``supported`` names what works in that pipeline.
    """
    scheduler = pipe.scheduler
    if float(getattr(scheduler, "init_noise_sigma", 1.0)) != 1.0:
        raise HastenError(f"{type(pipe).__name__} with {type(scheduler).__name__} is not supported: the pipeline "
                          "neither scales its noise nor its model input for this VE scheduler; supported: "
                          f"{supported} (init_noise_sigma = 1)")
