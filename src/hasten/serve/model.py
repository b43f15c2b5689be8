"""The served model: opened once when the server starts, viewed per request with that request's call.

An embedded model is used as loaded, or through its ``with_call`` (the
conditional digits model: ``prompt``, ``guidance_scale``); a pipeline (a folder
saved with ``save_pretrained``, a model id, ``random:NAME``) is loaded once and
each request gets a :class:`hasten.integrations.model.PipelineModel` over the
same pipeline with its own prompt, size, batch and seed. Requests never name a
model, a file or a path: the spec is fixed here.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import torch

from hasten.errors import HastenError


class ServedModel:
    """The one model a server serves, with what a request may ask of it."""

    def __init__(self, spec: str, device: torch.device, dtype: str | None = None, base_call: dict | None = None,
                 local_files_only: bool = False, loras: list | None = None):
        from hasten.integrations.model import PipelineModel
        from hasten.opening import load_spec_pipeline, model_source, open_model

        self.spec = spec
        #: the operator's call for every request of a pipeline (--size, --frames), a request's own over it
        self.base_call = {k: v for k, v in (base_call or {}).items() if v is not None}
        self.is_pipeline = model_source(spec) != "embedded"
        if self.is_pipeline:
            self.pipe = load_spec_pipeline(spec, device, dtype, local_files_only)
            self._pipeline_model = PipelineModel
            from hasten.integrations.images import probe_inputs

            #: neutral images for a pipeline that cannot be called without one (img2img, inpaint, ControlNet)
            self.probe_call = probe_inputs(self.pipe)
            self.model = PipelineModel(self.pipe, {"prompt": "", **self.probe_call, **self.base_call})
            from hasten.integrations.images import input_keys

            takes_size = "height" in inspect.signature(type(self.pipe).__call__).parameters
            self.call_keys: tuple[str, ...] = ("prompt", "guidance_scale") + (("height", "width") if takes_size else ())
            #: the input flags the pipeline takes (``--image`` ...): /v1/images/edits serves those that take an image
            self.inputs = input_keys(type(self.pipe))
            self.name = Path(spec).name if model_source(spec) == "folder" else spec  # a folder's name, not its path
        else:
            if self.base_call:
                raise HastenError(f"--size / --frames apply to pipelines, not to the embedded model {spec}")
            self.model = open_model(spec, device, dtype, local_files_only=local_files_only)
            self.call_keys = tuple(getattr(self.model, "CALL_KEYS", ()))
            self.inputs = {}
            self.name = self.model.name
        self.device = device
        self.adapters: dict[str, float] = {}  # preloaded LoRA adapters by name, with their scales
        for name, path, scale in loras or ():
            self.load_adapter(name, path, scale)
        probe = self.model.decode(self._probe_latents())
        if probe is None:
            raise HastenError(f"--model {spec}: its samples are not images (hasten serve serves image and video "
                              "models; gmm's latents are points)")
        frames = probe.shape[0]  # one latent: frames > 1 for a video model
        self.frames = frames
        self.channels, height, width = probe.shape[1:]
        self.size = (int(width), int(height))
        self.max_steps = self._max_steps()

    def _probe_latents(self) -> torch.Tensor:
        if self.is_pipeline:
            self.model.grid(self.model.LATENT_STEPS)
            return self.model.initial_latents(1, 0)
        from hasten.noise import initial_noise

        return initial_noise(self.model, 1, 0)

    def _max_steps(self) -> int:
        """The most steps the model's scheduler takes (its training timesteps)."""
        scheduler = getattr(getattr(self, "pipe", None), "scheduler", None)
        if scheduler is not None:
            return int(scheduler.config.get("num_train_timesteps", 1000))
        return 1000

    @property
    def takes_prompt(self) -> bool:
        return "prompt" in self.call_keys

    @property
    def takes_guidance(self) -> bool:
        return "guidance_scale" in self.call_keys

    @property
    def takes_size(self) -> bool:
        return "height" in self.call_keys

    def view(self, call: dict, batch: int, seed: int):
        """The model for one run: ``call`` (prompt(s), guidance, size) on ``batch`` samples from ``seed``."""
        given = {k: v for k, v in call.items() if v is not None and v != ""}
        if self.is_pipeline:
            return self._pipeline_model(self.pipe, {"prompt": "", **self.base_call, **given}, batch=batch, seed=seed)
        refused = sorted(k for k in given if k not in self.call_keys)
        if refused:
            raise HastenError(f"{', '.join(refused)}: the served model {self.name} does not take it")
        return self.model.with_call(given, batch) if given else self.model

    def check_prompt(self, prompt: str) -> None:
        """Refuse a prompt the model cannot take, before any work (the conditional model checks its own)."""
        if prompt == "":
            return
        if not self.takes_prompt:
            raise HastenError(f"the served model {self.name} is unconditional: give an empty prompt")
        if not self.is_pipeline:
            self.model.with_call({"prompt": prompt})  # validates without any network call

    def load_adapter(self, name: str, path: str, scale: float) -> None:
        """Preload the LoRA at ``path`` as adapter ``name`` (``--lora NAME=PATH[:SCALE]``)."""
        from hasten.integrations.lora import load_lora

        if not self.is_pipeline:
            raise HastenError(f"--lora applies to pipelines, not to the embedded model {self.spec}")
        load_lora(self.pipe, path, name, flag=f"--lora {name}=")
        self.adapters[name] = scale
        self.use_adapter(None)

    def use_adapter(self, name: str | None) -> None:
        """The adapter the next run samples with (None: the base model)."""
        if self.adapters:
            from hasten.integrations.lora import use_lora

            use_lora(self.pipe, name, self.adapters.get(name, 1.0))
