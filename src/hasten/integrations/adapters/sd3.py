"""Stable Diffusion 3: flow matching, three text encoders, batched CFG, optional dynamic shift."""

from __future__ import annotations

from typing import Callable

from hasten.integrations.adapters.base import Adapter, Call
from hasten.integrations.adapters.output import Decoding, scale_and_shift
from hasten.integrations.schedulers import SchedulerPlan, pipeline_module, pipeline_plan


class SD3Adapter(Adapter):
    """``StableDiffusion3Pipeline``; the flow multistep schedulers (DPM-Solver++, UniPC) run too."""

    decoding = Decoding("diffusers.pipelines.stable_diffusion_3.pipeline_output:StableDiffusion3PipelineOutput",
                        unscale=scale_and_shift)
    flow_only = "multistep"
    encoded = ("text", "-text", "pooled", "-pooled")
    plan_first = False

    def plan(self, c: Call) -> SchedulerPlan:
        """The scheduler's sigmas, with the dynamic shift ``mu`` for the image's sequence length where it uses one."""
        pipe, x, mu = self.pipe, c.latents, c.args["mu"]
        cfg, patch = pipe.scheduler.config, pipe.transformer.config.patch_size
        if cfg.get("use_dynamic_shifting", None) and mu is None:
            seq = (x.shape[2] // patch) * (x.shape[3] // patch)
            mu = pipeline_module(pipe, "calculate_shift").calculate_shift(
                seq, cfg.get("base_image_seq_len", 256), cfg.get("max_image_seq_len", 4096),
                cfg.get("base_shift", 0.5), cfg.get("max_shift", 1.16))
        return pipeline_plan(pipe, c.args["num_inference_steps"], c.device, **({} if mu is None else {"mu": mu}))

    def network_call(self, c: Call) -> Callable:
        transformer = self.pipe.transformer
        return lambda xm, t, cond: transformer(hidden_states=xm, timestep=t, encoder_hidden_states=cond["text"],
                                               pooled_projections=cond["pooled"], return_dict=False)[0]
