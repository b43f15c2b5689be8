"""Reading a pipeline's scheduler as a hasten grid and step.

hasten steps statelessly between grid points; a pipeline's scheduler is only
read (``timesteps``, ``alphas_cumprod``, ``final_alpha_cumprod``, ``sigmas``,
after ``set_timesteps``). First-order schedulers map to hasten steps directly:
DDIM -> ``ddim``, DDPM -> ``ddpm``, FlowMatchEulerDiscrete -> ``euler``. Any
other scheduler (multistep DPM-Solver / UniPC, PNDM, Euler-discrete in VE
sigma space, ...) is replaced by its first-order counterpart built from the
same config (DDIM for VP models, flow-matching Euler for flow models) with a
logged notice: sequential sampling then matches that counterpart, not the
pipeline's own default.
"""

from __future__ import annotations

import logging

from hasten.errors import HastenError

log = logging.getLogger("hasten")

# CogVideoX's DDIM steps as a_t x + b_t x0 with DDIM's coefficients (and its own SNR-shifted alphas_cumprod)
FIRST_ORDER = {"DDIMScheduler": "ddim", "CogVideoXDDIMScheduler": "ddim", "DDPMScheduler": "ddpm",
               "FlowMatchEulerDiscreteScheduler": "euler"}


def first_order_scheduler(scheduler):
    """(scheduler, solver name): the pipeline's own if first order, else its first-order counterpart."""
    name = type(scheduler).__name__
    if name in FIRST_ORDER:
        if name == "DDPMScheduler" and scheduler.config.get("variance_type", "fixed_small") != "fixed_small":
            raise HastenError(f"DDPMScheduler with variance_type={scheduler.config.variance_type!r} is not "
                              "supported; supported: fixed_small")
        if scheduler.config.get("clip_sample") or scheduler.config.get("thresholding"):
            log.warning("hasten: %s clips or thresholds x0; hasten's steps are linear and do not, so "
                        "results differ from the pipeline's own loop", name)
        return scheduler, FIRST_ORDER[name]
    from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler

    if "FlowMatch" in name or scheduler.config.get("use_flow_sigmas") or scheduler.config.get("prediction_type") == "flow_prediction":
        shift = scheduler.config.get("flow_shift")  # UniPC / DPM-Solver name the flow shift differently
        extra = {} if shift is None else {"shift": shift}
        counterpart, solver = FlowMatchEulerDiscreteScheduler.from_config(scheduler.config, **extra), "euler"
    elif hasattr(scheduler, "alphas_cumprod"):
        counterpart, solver = DDIMScheduler.from_config(scheduler.config), "ddim"
    else:
        raise HastenError(f"scheduler {name} is not supported; supported: DDIM, DDPM, FlowMatchEulerDiscrete "
                          "and any scheduler with alphas_cumprod (run as DDIM)")
    log.warning("hasten: %s is not a first-order stateless scheduler; sampling with its first-order "
                "counterpart %s built from the same config", name, type(counterpart).__name__)
    return counterpart, solver
