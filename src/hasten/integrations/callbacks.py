"""diffusers' ``callback_on_step_end`` under hasten's methods.

diffusers calls ``callback_on_step_end(pipe, i, t, callback_kwargs)`` after
step ``i`` (timestep ``t``) with the tensors named in
``callback_on_step_end_tensor_inputs``, and takes ``"latents"`` back from the
returned dict. hasten honours that contract where it fits:

* ``method="sequential"``: exactly as the pipeline, once per step in order,
  and the callback may edit ``latents`` (the returned value replaces the state).
* parallel methods: a step is computed many times, speculatively, so the
  callback is called once per *hit* (a final output as it lands, fastest core
  first) with ``i`` the hit's number (0, 1, ...) and ``t`` the last timestep.
  It may read the latents but not edit them: returning other latents is an error.

Only ``"latents"`` is passed (in the pipeline's own latent convention); other
tensor names are refused before sampling. A diffusers ``PipelineCallback``
(or ``MultiPipelineCallbacks``) names its own tensors, and the pipeline then
passes those whatever ``callback_on_step_end_tensor_inputs`` says; hasten reads
them the same way, so diffusers' CFG cutoff callbacks (``prompt_embeds``, ...)
are refused before any network call rather than failing mid-sampling.
"""

from __future__ import annotations

from typing import Callable

import torch

from hasten.errors import HastenError
from hasten.grid import Grid
from hasten.rounds import Hit
from hasten.steps import Step


class StepCallback:
    """A validated ``callback_on_step_end`` for one call of ``pipe``."""

    def __init__(self, pipe, fn: Callable, tensor_inputs=None):
        if not callable(fn):
            raise HastenError(f"callback_on_step_end must be callable, got {type(fn).__name__}")
        from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback

        if isinstance(fn, (PipelineCallback, MultiPipelineCallbacks)):  # the pipeline's own rule
            tensor_inputs = fn.tensor_inputs
            source = f"{type(fn).__name__}.tensor_inputs"
        else:
            source = "callback_on_step_end_tensor_inputs"
        names = ["latents"] if tensor_inputs is None else list(tensor_inputs)
        if any(name != "latents" for name in names):
            raise HastenError(f"{source}: hasten passes 'latents' only, got {names} (a callback that edits the "
                              "conditioning, such as diffusers' CFG cutoff callbacks, is not supported); use a "
                              "callback on 'latents'")
        self.pipe, self.fn, self.names = pipe, fn, names
        self.grid: Grid | None = None
        self.scale: torch.Tensor | None = None  # x_pipeline = scale[i] * x_hasten

    def bind(self, grid: Grid, pipeline_scale: torch.Tensor | None) -> None:
        """The call's grid and latent convention (set once the call is prepared)."""
        self.grid = grid
        self.scale = torch.ones(grid.steps + 1, dtype=torch.float64) if pipeline_scale is None else pipeline_scale

    def _call(self, i: int, t: torch.Tensor, latents: torch.Tensor) -> dict:
        given = {name: latents for name in self.names}
        result = self.fn(self.pipe, i, t, given)
        if not isinstance(result, dict):
            raise HastenError(f"callback_on_step_end must return a dict (callback_kwargs), got "
                              f"{type(result).__name__}")
        return result

    def wrap_step(self, step: Step) -> Step:
        """A step that calls the callback after every unit step, as the pipeline's loop (sequential only)."""
        callback = self

        class CallbackStep:
            name, grid = step.name, step.grid

            def __call__(self, x, output, i, j, noise=None, history=()):
                x_next = step(x, output, i, j, noise, history)
                scale = float(callback.scale[j])
                result = callback._call(i, callback.grid.timesteps[i], x_next * scale)
                edited = result.get("latents")
                return x_next if edited is None else edited.to(x_next.device).float() / scale

        for attr in ("clip", "noise", "memory"):
            if hasattr(step, attr):
                setattr(CallbackStep, attr, getattr(step, attr))
        if hasattr(step, "data"):
            CallbackStep.data = staticmethod(step.data)
        return CallbackStep()

    def on_hit(self, number: int, hit: Hit) -> None:
        """Call the callback on a hit's latents (parallel methods); edits are refused."""
        latents = hit.x * float(self.scale[-1])
        result = self._call(number, self.grid.timesteps[-1], latents)
        if result.get("latents", latents) is not latents:
            raise HastenError("callback_on_step_end returned new latents: with parallel methods a callback sees "
                              "each hit and may not edit it; edit latents with method='sequential'")
