"""What every adapter shares: the one preparation sequence, the call's arguments, :class:`Prepared` and the decoder.

:meth:`Adapter.prepare` runs the same steps for every family: refuse what is
not implemented (by name), take the pipeline's own defaults, check the
scheduler and the inputs (the pipeline's ``check_inputs``), encode the prompt
(its ``encode_prompt``), plan the scheduler, prepare the latents (its
``prepare_latents``) and build the denoiser. A family states what differs:
data in class attributes (its :class:`Decoding`, the arguments it refuses,
what ``encode_prompt`` returns, its guidance), and a hook where it is code
(its network call). Pipeline helpers are called with the call's arguments by
name (:func:`call_with`), so a family restates no signature.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable

import torch

from hasten.errors import HastenError
from hasten.guidance import PipelineDenoiser
from hasten.inpaint import KnownRegion
from hasten.integrations.adapters.output import Decoding, Prepared, decode_latents
from hasten.integrations.schedulers import SchedulerPlan, plan_scheduler, refuse_other_schedulers

#: pipeline arguments no family implements unless it says so (``takes``); at the pipeline's default they are accepted
REFUSED = frozenset({
    "timesteps", "sigmas", "eta", "ip_adapter_image", "ip_adapter_image_embeds", "negative_ip_adapter_image",
    "negative_ip_adapter_image_embeds", "cross_attention_kwargs", "joint_attention_kwargs", "attention_kwargs",
    "denoising_start", "denoising_end", "guess_mode", "padding_mask_crop", "skip_guidance_layers",
    "skip_layer_guidance_scale", "skip_layer_guidance_stop", "skip_layer_guidance_start", "use_clipped_model_output",
    "callback", "callback_steps"})
#: call arguments a pipeline's ``__call__`` keeps as state (``pipe._guidance_scale``, ...) before its loop
CALL_STATE = ("guidance_scale", "guidance_scale_2", "guidance_rescale", "clip_skip", "cross_attention_kwargs",
              "joint_attention_kwargs", "attention_kwargs", "denoising_end", "denoising_start")


def call_with(fn: Callable, args: dict[str, Any], **given) -> Any:
    """``fn`` (a pipeline's ``check_inputs``, ``encode_prompt``, ``prepare_latents``, ...) called by name.

    Each parameter takes ``given[name]``, else the call's ``args[name]``, else
    its own default (None where it has none), as the pipeline passes the
    call's arguments of the same name.
    """
    kwargs = {}
    for name, p in inspect.signature(fn).parameters.items():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if name in given or name in args:
            kwargs[name] = given[name] if name in given else args[name]
        elif p.default is p.empty:
            kwargs[name] = None
    return fn(**kwargs)


def sample_size(config_size, scale: int) -> tuple[int, int]:
    """(height, width) of a network's ``sample_size`` (one side, or a pair) times ``scale``, as the pipelines read
    it."""
    size = (config_size, config_size) if isinstance(config_size, int) else tuple(config_size)
    return size[0] * scale, size[1] * scale


@dataclass
class Call:
    """One pipeline call on its way to :class:`Prepared`: its arguments and what the steps made of them.

    ``args`` holds every argument of the pipeline's ``__call__`` (the pipeline's
    own default where the call gives none), with what the pipeline settles
    before its loop (the default size, rounded frames) written back.
    """

    args: dict[str, Any]
    device: torch.device
    count: int = 1  # samples: prompts x per prompt
    cond: dict = field(default_factory=dict)
    uncond: dict | None = None
    plan: SchedulerPlan | None = None
    latents: torch.Tensor | None = None
    by_index: dict | None = None  # conditioning per grid index (ControlNet's weights)
    shape: dict = field(default_factory=dict)  # what the decoder needs besides the latents
    known: KnownRegion | None = None
    extra: dict = field(default_factory=dict)  # what a family hands from one of its steps to the next

    @property
    def sides(self) -> tuple[dict, ...]:
        """The conditioning dicts to extend alike: cond, and uncond where the call guides."""
        return (self.cond,) if self.uncond is None else (self.cond, self.uncond)


class Adapter:
    """Base of the adapters: ``prepare(call) -> Prepared`` runs the steps every family shares.

    Data a family states: ``decoding``; ``count_argument`` (the call argument
    counting samples per prompt); ``takes`` / ``refuses`` (the pipeline
    arguments of :data:`REFUSED` it implements, and those it refuses besides);
    ``flow_only`` (FlowMatchEulerDiscrete only, and ``"multistep"`` with the
    flow multistep schedulers too); ``guidance`` (``"batched"``: one
    ``encode_prompt`` with ``do_classifier_free_guidance``; ``"true"``: the
    negative prompt encoded apart, true CFG; None); ``encoded``: the names of
    ``encode_prompt``'s outputs (``"-text"`` on the negative side, ``"@ids"``
    kept in ``Call.extra``, None dropped); ``latent_dtype`` (``prepare_latents``' dtype, None: the text's).
    Hooks where a family differs in code: :meth:`settle`, :meth:`validate`,
    :meth:`plan`, :meth:`initial_latents`, :meth:`network_call`, ...

    Every prompt encoding goes through :meth:`encode`. With ``broadcast_conditioning``
    set (the distributed executor), rank 0 alone runs the text encoders and sends
    the embeddings to the other ranks once: only the denoiser works on every rank.
    """

    decoding: Decoding
    count_argument = "num_images_per_prompt"
    takes: frozenset[str] = frozenset()
    refuses: frozenset[str] = frozenset()
    flow_only: bool | str = False
    guidance: str | None = "batched"
    encoded: tuple[str | None, ...] = ("text", "-text")
    latent_dtype: torch.dtype | None = None
    network = "transformer"
    scale_argument = "guidance_scale"
    guidance_renorm = False
    text_key = "text"  # the conditioning whose dtype the latents take (unless latent_dtype)
    plan_first = True  # False: the plan reads the latents (their sequence length)

    def __init__(self, pipe):
        self.pipe = pipe
        self.broadcast_conditioning = False

    # ---- the call's rules ----

    def per_prompt_count(self, batch: int) -> dict[str, int]:
        """The call argument that asks this pipeline for ``batch`` samples (per prompt)."""
        return {self.count_argument: batch}

    def normalize_call(self, call: dict[str, Any]) -> dict[str, Any]:
        """``call`` with this pipeline's own rules for the generic arguments applied (none here)."""
        return dict(call)

    def arguments(self, call: dict[str, Any]) -> dict[str, Any]:
        """Every argument of the pipeline's ``__call__``: the call's, else the pipeline's default.

        An argument hasten does not implement is refused by name, with the
        supported ones, unless given at the pipeline's own default (``eta=0.0``,
        ``cross_attention_kwargs=None``, ...), which changes nothing.
        """
        pipe = self.pipe
        params = {k: p for k, p in inspect.signature(pipe.__call__).parameters.items()
                  if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
        defaults = {k: None if p.default is p.empty else p.default for k, p in params.items()}
        refused = (REFUSED - self.takes) | self.refuses
        supported = {k for k in params if k not in refused and not k.startswith("callback")}
        if self.count_argument == "num_videos_per_prompt" and "num_images_per_prompt" not in params:
            supported.add("num_images_per_prompt")  # the image pipelines' name, which hasten's CLI passes
        unknown = sorted(k for k, v in call.items() if k not in supported
                         and not (k in defaults and _same_default(v, defaults[k])))
        if unknown:
            at_default = [f"{k}={defaults[k]!r}" for k in unknown if k in defaults]
            hint = f" (hasten takes {', '.join(at_default)}, the pipeline's default, only)" if at_default else ""
            raise HastenError(f"{type(pipe).__name__} call arguments not supported by hasten: "
                              f"{', '.join(unknown)}{hint}; supported: {', '.join(sorted(supported))}")
        args = {**defaults, **call}
        alias = args.pop("num_images_per_prompt", None) if "num_images_per_prompt" not in params else None
        if alias is not None:
            args[self.count_argument] = alias
        return args

    # ---- the sequence ----

    def prepare(self, call: dict[str, Any]) -> Prepared:
        """The call ``call`` (its arguments by name) prepared for the engine, before any network call."""
        pipe = self.pipe
        c = Call(self.arguments(call), pipe._execution_device)
        self.check_scheduler()
        self.settle(c)
        if hasattr(pipe, "check_inputs"):
            call_with(pipe.check_inputs, c.args, **self.checked(c))
        self.validate(c)
        for name in CALL_STATE:
            if name in c.args:
                setattr(pipe, f"_{name}", c.args[name])
        pipe._interrupt, pipe._current_timestep = False, None
        c.count = self.prompts(c) * c.args[self.count_argument]
        self.encode_text(c)
        if self.plan_first:
            c.plan = self.plan(c)
            c.latents = self.initial_latents(c)
        else:
            c.latents = self.initial_latents(c)
            c.plan = self.plan(c)
        self.condition(c)
        denoiser = self.denoiser(c)
        noise = c.plan.draw_noise(c.latents.shape, c.args.get("generator"), c.device, self.noise_dtype(c))
        prepared = Prepared.from_plan(c.plan, denoiser, c.latents.float(), noise, self.decode(c))
        prepared.known = c.known
        return prepared

    def check_scheduler(self) -> None:
        """Refuse a scheduler this pipeline's adapter does not sample (``flow_only``)."""
        if self.flow_only:
            refuse_other_schedulers(self.pipe, multistep=self.flow_only == "multistep")

    def settle(self, c: Call) -> None:
        """What the pipeline settles before ``check_inputs``: its default size (``unet`` / ``transformer``
        ``sample_size`` times ``vae_scale_factor``, or ``default_sample_size``)."""
        args = c.args
        if "height" in args and (args["height"] is None or args["width"] is None):
            height, width = self.default_size()
            args["height"], args["width"] = args["height"] or height, args["width"] or width

    def default_size(self) -> tuple[int, int]:
        pipe = self.pipe
        return sample_size(pipe.default_sample_size, pipe.vae_scale_factor)

    def checked(self, c: Call) -> dict[str, Any]:
        """``check_inputs`` arguments that are not the call's own of the same name."""
        return {}

    def validate(self, c: Call) -> None:
        """Refusals of the family, after the pipeline's own ``check_inputs`` (none here)."""

    def prompts(self, c: Call) -> int:
        """Prompts in the call: from the prompt (string or list) or, without one, from its embeddings."""
        prompt = c.args.get("prompt")
        if prompt is not None:
            return 1 if isinstance(prompt, str) else len(prompt)
        return c.args["prompt_embeds"].shape[0]

    def guided(self, c: Call) -> bool:
        """Whether the call guides: the scale above 1 (true CFG: with a negative prompt or its embeddings too)."""
        args = c.args
        if self.guidance is None or not args[self.scale_argument] > 1:
            return False
        if self.guidance == "batched":
            return True
        embeds = [args[k] for k in ("negative_prompt_embeds", "negative_pooled_prompt_embeds") if k in args]
        return args.get("negative_prompt") is not None or all(e is not None for e in embeds)

    def encode_text(self, c: Call) -> None:
        """``c.cond`` and ``c.uncond`` from ``encode_prompt``'s outputs, named by :attr:`encoded`."""
        pipe, guided = self.pipe, self.guided(c)
        if self.guidance == "true":
            outputs = dict(zip(self.encoded, self.encode(pipe.encode_prompt, c.args, device=c.device)))
            if guided:  # the negative prompt through the same encoder: negative_X for each argument X
                negative = {k: c.args[f"negative_{k}"] for k in inspect.signature(pipe.encode_prompt).parameters
                            if f"negative_{k}" in c.args}
                outputs.update(zip(("-" + n if n and n[0] != "@" else None for n in self.encoded),
                                   self.encode(pipe.encode_prompt, c.args, device=c.device, **negative)))
        else:
            given = {"do_classifier_free_guidance": guided} if self.guidance else {}
            outputs = dict(zip(self.encoded, self.encode(pipe.encode_prompt, c.args, device=c.device, **given)))
        outputs.pop(None, None)
        c.extra.update({k[1:]: v for k, v in outputs.items() if k.startswith("@")})
        c.cond = {k: v for k, v in outputs.items() if k[0] not in "-@"}
        c.uncond = {k[1:]: v for k, v in outputs.items() if k[0] == "-"} if guided else None

    def plan(self, c: Call) -> SchedulerPlan:
        """The scheduler's plan for the call's steps (``set_timesteps`` as the pipeline calls it)."""
        return plan_scheduler(self.pipe.scheduler, c.args["num_inference_steps"], c.device)

    def latent_channels(self) -> int:
        return getattr(self.pipe, self.network).config.in_channels

    def initial_latents(self, c: Call) -> torch.Tensor:
        """The pipeline's ``prepare_latents`` for the call (its first output where it returns more)."""
        dtype = self.latent_dtype or c.cond[self.text_key].dtype
        out = call_with(self.pipe.prepare_latents, c.args, batch_size=c.count,
                        num_channels_latents=self.latent_channels(), dtype=dtype, device=c.device)
        if isinstance(out, tuple):
            out, c.extra["latent_ids"] = out
        return out

    def condition(self, c: Call) -> None:
        """Conditioning that reads the latents (SDXL's time ids), added to ``c.cond`` / ``c.uncond`` (none here)."""

    def network_call(self, c: Call) -> Callable:
        """``call(x, t, cond)``: the network as the pipeline's loop runs it."""
        raise NotImplementedError

    def guidance_scale(self, c: Call):
        """The guidance scale: a number, or a function of the rows' model times."""
        return c.args.get(self.scale_argument, 1.0)

    def denoiser(self, c: Call) -> PipelineDenoiser:
        network = getattr(self.pipe, self.network)
        return PipelineDenoiser(self.network_call(c), c.plan.grid, c.cond, c.uncond, self.guidance_scale(c),
                                c.args.get("guidance_rescale", 0.0), dtype=network.dtype, device=c.device,
                                guidance_renorm=self.guidance_renorm, by_index=c.by_index)

    def noise_dtype(self, c: Call) -> torch.dtype:
        """The dtype the scheduler's ``step`` draws its noise in (the latents' here)."""
        return c.latents.dtype

    def decode(self, c: Call) -> Callable[[torch.Tensor], Any]:
        """Final latents -> this call's output, by the adapter's :class:`Decoding`."""
        return partial(decode_latents, self.pipe, self.decoding, output_type=c.args["output_type"],
                       return_dict=c.args["return_dict"], **c.shape)

    def encode(self, fn: Callable, args: dict[str, Any], **given):
        """``call_with(fn, args, **given)`` (a pipeline's ``encode_prompt``), run once on rank 0 when broadcasting."""
        if not self.broadcast_conditioning:
            return call_with(fn, args, **given)
        import torch.distributed as dist

        box = [call_with(fn, args, **given) if dist.get_rank() == 0 else None]
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


def _same_default(value, default) -> bool:
    """Whether a call argument is the pipeline's own default (None, a number, a string, a list of them)."""
    if value is default:
        return True
    simple = (type(None), bool, int, float, str, list, tuple)
    return isinstance(value, simple) and isinstance(default, simple) and value == default
