"""A saved diffusers pipeline with a fixed call, seen by ``hasten sample`` / ``hasten bench`` as a model.

It offers the embedded-model protocol (``grid``, ``denoiser``, ``decode``,
``latent_shape``) plus two hooks the engine's callers use where present:
``initial_latents`` (the pipeline's own ``prepare_latents`` for the call) and
``step`` (the solver and noise its scheduler implies). Everything comes from
the same adapter as ``hasten.accelerate``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from hasten.errors import HastenError
from hasten.integrations.adapters import Prepared, adapter_for
from hasten.steps import Step, make_step


def load_pipeline(path: Path | str):
    """``DiffusionPipeline.from_pretrained`` on a local folder; never downloads."""
    path = Path(path)
    if not (path / "model_index.json").is_file():
        raise HastenError(f"{path} is not a saved diffusers pipeline (no model_index.json)")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from diffusers import DiffusionPipeline

    try:
        pipe = DiffusionPipeline.from_pretrained(str(path), local_files_only=True)
    except Exception as err:  # noqa: BLE001 - any loader failure becomes one clear line
        raise HastenError(f"could not load the pipeline saved at {path}: {type(err).__name__}: {err}") from err
    pipe.set_progress_bar_config(disable=True)
    return pipe


class PipelineModel:
    """``pipe`` called with ``call`` (prompt, guidance_scale, ...), ``batch`` images, seed ``seed``."""

    def __init__(self, pipe, call: dict[str, Any] | None = None, batch: int = 1, seed: int = 0):
        self.pipe = pipe
        self.adapter = adapter_for(pipe)
        self.name = type(pipe).__name__
        self.call = {k: v for k, v in (call or {}).items() if v is not None}
        self.batch, self.seed = batch, seed
        self._by_steps: dict[int, Prepared] = {}
        self._by_grid: dict[int, Prepared] = {}

    def _prepare(self, steps: int) -> Prepared:
        if steps not in self._by_steps:
            count = "batch_size" if self.name in ("DDPMPipeline", "DDIMPipeline") else "num_images_per_prompt"
            prepared = self.adapter.prepare(num_inference_steps=steps, generator=torch.Generator().manual_seed(self.seed),
                                            output_type="pt", **{count: self.batch}, **self.call)
            self._by_steps[steps] = prepared
            self._by_grid[id(prepared.grid)] = prepared
        return self._by_steps[steps]

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return tuple(self.initial_latents(self.batch, self.seed).shape[1:])

    def initial_latents(self, batch: int, seed: int) -> torch.Tensor:
        if (batch, seed) != (self.batch, self.seed):
            raise HastenError("a PipelineModel is built for one batch size and seed")
        return next(iter(self._by_steps.values()), None).latents if self._by_steps else self._prepare(1).latents

    def grid(self, steps: int):
        return self._prepare(steps).grid

    def denoiser(self, grid):
        return self._by_grid[id(grid)].denoiser

    def step(self, grid, solver: str | None = None) -> Step:
        prepared = self._by_grid[id(grid)]
        if solver not in (None, prepared.solver):
            raise HastenError(f"this pipeline's scheduler implies solver {prepared.solver!r}, not {solver!r}")
        return make_step(grid, prepared.solver, prepared.noise)

    @property
    def network(self):
        """The pipeline's denoising network (transformer or UNet)."""
        return getattr(self.pipe, "transformer", None) or self.pipe.unet

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) in [0, 1] through the pipeline's own decoder; video frames become images."""
        prepared = next(iter(self._by_steps.values()))
        out = prepared.decode(x)
        images = torch.as_tensor(out.frames if hasattr(out, "frames") else out.images).float().cpu()
        return images.flatten(0, 1) if images.ndim == 5 else images
