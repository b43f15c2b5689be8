"""A saved diffusers pipeline with a fixed call, seen by ``hasten sample`` / ``hasten bench`` as a model.

It offers the embedded-model protocol (``grid``, ``denoiser``, ``decode``,
``latent_shape``) plus two hooks the engine's callers use where present:
``initial_latents`` (the pipeline's own ``prepare_latents`` for the call) and
``step`` (the solver and noise its scheduler implies). Everything comes from
the same adapter as ``hasten.accelerate``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch

from hasten.devices import resolve_device, resolve_dtype, stored_dtype
from hasten.errors import HastenError
from hasten.integrations.adapters import Prepared, adapter_for
from hasten.integrations.callbacks import StepCallback
from hasten.steps import Step


def offline() -> bool:
    """Whether the Hugging Face hub is switched off by the environment (``HF_HUB_OFFLINE``)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def pipeline_folder(spec: str, local_files_only: bool = False) -> Path:
    """The local folder of a saved pipeline or of a model id (downloaded unless offline).

    ``local_files_only`` or ``HF_HUB_OFFLINE=1``: the id must already be in
    the local Hugging Face cache.
    """
    if Path(spec).expanduser().is_dir():
        folder = Path(spec).expanduser()
    else:
        from diffusers import DiffusionPipeline

        no_download = local_files_only or offline()
        try:
            folder = Path(DiffusionPipeline.download(spec, local_files_only=no_download))
        except Exception as err:  # noqa: BLE001 - hub, network and cache errors all become one line
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            if no_download:
                raise HastenError(f"model {spec}: not found in the local Hugging Face cache and downloads are off "
                                  f"({'--local-files-only' if local_files_only else 'HF_HUB_OFFLINE=1'}); download "
                                  f"it once online, or pass a folder saved with save_pretrained ({first})") from None
            raise HastenError(f"model {spec}: could not be downloaded from the Hugging Face hub: {first}") from None
    if not (folder / "model_index.json").is_file():
        raise HastenError(f"{spec} is not a saved diffusers pipeline (no model_index.json in {folder})")
    return folder


def load_pipeline(spec: Path | str, device: torch.device | str | None = "cpu", dtype: torch.dtype | str | None = None,
                  local_files_only: bool = False):
    """A diffusers pipeline from a saved folder, a model id or ``random:NAME``, on ``device`` in ``dtype``.

    ``dtype=None`` takes float32 on the CPU and the checkpoint's stored dtype
    on an accelerator (:func:`hasten.devices.resolve_dtype`).
    """
    spec = str(spec)
    dev = resolve_device(device)
    if spec.startswith("random:"):
        from hasten.integrations.random_pipelines import parse_random_spec, random_pipeline

        parse_random_spec(spec)
        return random_pipeline(spec, dev, resolve_dtype(dtype, dev, torch.bfloat16))
    folder = pipeline_folder(spec, local_files_only)
    chosen = resolve_dtype(dtype, dev, stored_dtype(folder))
    from diffusers import DiffusionPipeline

    try:
        pipe = DiffusionPipeline.from_pretrained(str(folder), dtype=chosen, local_files_only=True)
    except Exception as err:  # noqa: BLE001 - any loader failure becomes one clear line
        raise HastenError(f"could not load the pipeline {spec}: {type(err).__name__}: {err}") from err
    pipe.to(dev)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def prepare_call(adapter, **call) -> Prepared:
    """``adapter.prepare(**call)`` in hasten's latent convention, checked before any network call.

    diffusers' own argument errors (ValueError) become one HastenError;
    ``callback_on_step_end`` becomes a :class:`StepCallback` on the result;
    the latents and the decoder are converted from the pipeline's convention
    (VE schedulers keep ``x / alpha``) with the plan's ``pipeline_scale``.
    """
    name = type(adapter.pipe).__name__
    fn = call.pop("callback_on_step_end", None)
    tensor_inputs = call.pop("callback_on_step_end_tensor_inputs", None)
    callback = None if fn is None else StepCallback(adapter.pipe, fn, tensor_inputs)
    try:
        with torch.no_grad():  # as the pipeline's own __call__: no autograd graph through the VAE or text encoders
            prepared = adapter.prepare(call)
    except HastenError:
        raise
    except ValueError as err:
        raise HastenError(f"{name}: {err}") from None
    except RuntimeError as err:  # the latents of the size asked for do not fit (CPU allocator, CUDA OOM)
        text = str(err)
        if "alloc" not in text.lower() and "out of memory" not in text.lower():
            raise
        sizes = {k: call[k] for k in ("height", "width", "num_frames") if call.get(k) is not None}
        asked = re.search(r"allocate (\d+) bytes", text)
        need = f"{int(asked.group(1)) / 2**30:.1f} GiB" if asked else "more memory"
        raise HastenError(f"{name}: {sizes or 'the call'} needs {need} for its latents alone, more than this machine "
                          "can allocate; use a smaller size or batch") from None
    scale = prepared.pipeline_scale
    if scale is not None and not bool((scale == 1).all()):
        decode, start, end = prepared.decode, float(scale[0]), float(scale[-1])
        prepared.latents = prepared.latents / start
        prepared.decode = lambda x: decode(x * end)
    if callback is not None:
        callback.bind(prepared.grid, scale)
        prepared.callback = callback
    _check_text_width(adapter.pipe, prepared.denoiser, call)
    if prepared.latents.numel() == 0:  # the pipeline rounds the size down to its latent grid: nothing left
        sizes = {k: call[k] for k in ("height", "width", "num_frames") if call.get(k) is not None}
        raise HastenError(f"{name}: {sizes or 'the call'} is smaller than one latent patch of this pipeline; "
                          f"use a larger size (a multiple of {2 * getattr(adapter.pipe, 'vae_scale_factor', 8)} "
                          "is safe)")
    return prepared


#: the network config entry that fixes the width of the text embeddings it takes (caption_channels first: PixArt,
#: Sana and LTX project their captions to cross_attention_dim)
TEXT_WIDTH_KEYS = ("caption_channels", "cross_attention_dim", "joint_attention_dim", "text_dim", "text_embed_dim")


def _check_text_width(pipe, denoiser, call: dict) -> None:
    """Refuse text embeddings (``prompt_embeds``) whose width the network cannot take, before any forward."""
    text = getattr(denoiser, "cond", {}).get("text")
    network = getattr(pipe, "transformer", None) or getattr(pipe, "unet", None)
    if text is None or network is None:
        return
    config = network.config
    key = next((k for k in TEXT_WIDTH_KEYS if isinstance(config.get(k), int)), None)
    if key is not None and text.shape[-1] != config[key]:
        given = "prompt_embeds" if call.get("prompt_embeds") is not None else "the text encoder's output"
        raise HastenError(f"{type(pipe).__name__}: {given} has width {text.shape[-1]} but "
                          f"{type(network).__name__} takes {config[key]} ({key})")


class PipelineModel:
    """``pipe`` called with ``call`` (prompt, guidance_scale, ...), ``batch`` samples, seed ``seed``.

    ``grid(steps)`` prepares the call once per step count; ``denoiser(grid)``
    and ``step(grid)`` find the call that made ``grid`` and take only that grid
    (an image-to-image call's grid holds the steps its ``strength`` runs). The adapter owns the pipeline's rules for the call (which argument
    counts samples, Flux's true CFG).
    """

    #: steps of the call prepared when latents are asked for before any grid: the fewest whose first point
    #: is the pipeline's usual start (one step starts at t = 0 with linspace spacing, latents then near zero)
    LATENT_STEPS = 2

    def __init__(self, pipe, call: dict[str, Any] | None = None, batch: int = 1, seed: int = 0):
        self.pipe = pipe
        self.adapter = adapter_for(pipe)
        self.name = getattr(pipe, "hasten_name", None) or type(pipe).__name__  # flux-mini: its shipped name
        self.call = self.adapter.normalize_call({k: v for k, v in (call or {}).items() if v is not None})
        self.batch, self.seed = batch, seed
        self._prepared: dict[int, Prepared] = {}  # by step count, in the order prepared

    def bind(self, call: dict[str, Any] | None, batch: int, seed: int) -> "PipelineModel":
        """This pipeline for another call, batch or seed (itself when nothing changes): one loaded pipeline, many runs."""
        call = self.adapter.normalize_call({k: v for k, v in (call or {}).items() if v is not None})
        if (call or self.call) == self.call and (batch, seed) == (self.batch, self.seed):
            return self
        return PipelineModel(self.pipe, call or self.call, batch=batch, seed=seed)

    def _prepare(self, steps: int) -> Prepared:
        if steps not in self._prepared:
            self._prepared[steps] = prepare_call(self.adapter, num_inference_steps=steps,
                                                 generator=torch.Generator().manual_seed(self.seed),
                                                 output_type="pt", **self.adapter.per_prompt_count(self.batch),
                                                 **self.call)
        return self._prepared[steps]

    def _prepared_for(self, grid) -> Prepared:
        """The call prepared for ``grid`` (made by :meth:`grid`), found by its step count."""
        for prepared in self._prepared.values():  # by identity: image-to-image grids run fewer steps than asked
            if prepared.grid is grid:
                return prepared
        raise HastenError(f"this grid ({grid.steps} steps) is not one of this pipeline's; take it from "
                          "model.grid(steps)")

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return tuple(self.initial_latents(self.batch, self.seed).shape[1:])

    def initial_latents(self, batch: int, seed: int) -> torch.Tensor:
        """The latents of the first prepared call (the pipeline's ``prepare_latents``; the same for every step count).

        Asked before any :meth:`grid`, they come from a call of ``LATENT_STEPS``
        steps, which a later ``grid(LATENT_STEPS)`` reuses.
        """
        if (batch, seed) != (self.batch, self.seed):
            raise HastenError("a PipelineModel is built for one batch size and seed")
        if not self._prepared:
            self._prepare(self.LATENT_STEPS)
        return next(iter(self._prepared.values())).latents

    def grid(self, steps: int):
        return self._prepare(steps).grid

    def denoiser(self, grid):
        return self._prepared_for(grid).denoiser

    def step(self, grid, solver: str | None = None) -> Step:
        prepared = self._prepared_for(grid)
        if solver not in (None, prepared.solver):
            raise HastenError(f"this pipeline's scheduler implies solver {prepared.solver!r}, not {solver!r}")
        return prepared.step()

    @property
    def network(self):
        """The pipeline's denoising network (transformer or UNet)."""
        return getattr(self.pipe, "transformer", None) or self.pipe.unet

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) in [0, 1] through the pipeline's own decoder; video frames become images."""
        prepared = next(iter(self._prepared.values()))
        out = prepared.decode(x)
        images = torch.as_tensor(out.frames if hasattr(out, "frames") else out.images).float().cpu()
        return images.flatten(0, 1) if images.ndim == 5 else images
