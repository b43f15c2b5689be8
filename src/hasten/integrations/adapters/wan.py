"""Wan 2.1 / 2.2: text-to-video and image-to-video, flow matching over video latents, CFG.

Wan 2.2 A14B's two experts are switched at ``boundary_ratio`` (see
:func:`wan_denoiser`); Wan 2.2 TI2V-5B's ``expand_timesteps`` gives each token
its timestep.
"""

from __future__ import annotations

import logging

import torch

from hasten.errors import HastenError
from hasten.guidance import PipelineDenoiser
from hasten.integrations.adapters.base import Call, call_with
from hasten.integrations.adapters.output import per_channel_unscale
from hasten.integrations.adapters.video import VideoAdapter, video_decoding
from hasten.integrations.denoisers import switch_at
from hasten.integrations.schedulers import is_flow, refuse_unscaled_ve

log = logging.getLogger("hasten")


def wan_call(network, token_mask: torch.Tensor | None, first_frame_mask: torch.Tensor | None):
    """``call(x, t, cond)`` of one Wan transformer, with the model input its pipeline builds.

    With a ``condition`` entry (image-to-video) the input is the latents and
    the condition stacked on channels, or (``first_frame_mask``, Wan 2.2 TI2V)
    the condition's first frame pasted over the latents. ``token_mask``
    (``expand_timesteps``) gives every token its own timestep, the mask times t.
    """

    def call(xm, t, c):
        hidden = xm
        if "condition" in c:
            hidden = (torch.cat([xm, c["condition"]], dim=1) if first_frame_mask is None
                      else (1 - first_frame_mask) * c["condition"] + first_frame_mask * xm)
        timestep = t if token_mask is None else token_mask[None] * t.float()[:, None]
        image = c.get("image")
        return network(hidden_states=hidden.to(xm.dtype), timestep=timestep, encoder_hidden_states=c["text"],
                       encoder_hidden_states_image=None if image is None else image.flatten(0, 1),
                       return_dict=False)[0]

    return call


def wan_denoiser(pipe, c: Call, token_mask: torch.Tensor | None = None,
                 first_frame_mask: torch.Tensor | None = None) -> PipelineDenoiser:
    """The Wan denoiser: one transformer, or Wan 2.2's two experts switched at ``boundary_ratio``.

    ``transformer`` serves model times at or above ``boundary_ratio *
    num_train_timesteps`` with ``guidance_scale``, ``transformer_2`` the times
    below with ``guidance_scale_2``; the choice follows each row's grid point,
    so every method evaluates every point on its own expert.
    """
    boundary = pipe.config.get("boundary_ratio")
    high, low = pipe.transformer, getattr(pipe, "transformer_2", None)
    scale, scale_2 = c.args["guidance_scale"], c.args["guidance_scale_2"]
    dtype = high.dtype
    if boundary is None:
        return PipelineDenoiser(wan_call(high, token_mask, first_frame_mask), c.plan.grid, c.cond, c.uncond, scale,
                                dtype=dtype, device=c.device)
    boundary = boundary * pipe.scheduler.config.num_train_timesteps
    if low is None:
        raise HastenError(f"{type(pipe).__name__} with boundary_ratio={pipe.config.boundary_ratio} needs its second "
                          "expert, transformer_2, which is missing (Wan 2.2 A14B ships both)")
    call = switch_at(boundary, wan_call(high, token_mask, first_frame_mask), wan_call(low, token_mask,
                                                                                       first_frame_mask))
    guidance = scale
    if scale_2 != scale:
        def guidance(t: torch.Tensor) -> torch.Tensor:
            return torch.where(t.float() >= boundary, scale, scale_2)
    return PipelineDenoiser(call, c.plan.grid, c.cond, c.uncond, guidance, dtype=dtype, device=c.device)


class WanAdapter(VideoAdapter):
    """``WanPipeline``: Wan 2.1 and 2.2 text-to-video."""

    decoding = video_decoding("diffusers.pipelines.wan.pipeline_output:WanPipelineOutput",
                              unscale=per_channel_unscale)

    def check_scheduler(self) -> None:
        """The Wan pipelines neither scale their noise nor their model input, and need a flow scheduler.

        A VE scheduler (Euler, EulerAncestral, ...) would be sampled unscaled; DDIM,
        DDPM and CogVideoX's schedulers make the pipeline itself fail. Both are
        refused before any network call.
        """
        pipe, works = self.pipe, "FlowMatchEulerDiscrete, or UniPC / DPM-Solver with use_flow_sigmas"
        refuse_unscaled_ve(pipe, works)
        if not is_flow(pipe.scheduler):
            raise HastenError(f"{type(pipe).__name__} with {type(pipe.scheduler).__name__} is not supported: Wan is a "
                              "flow-matching model and this is not a flow scheduler (no use_flow_sigmas, no "
                              f"flow_prediction); supported: {works}")

    def validate(self, c: Call) -> None:
        """Frames rounded to ``4k + 1`` and the size to the patch grid, as the Wan pipelines round them (with a
        warning); the low-noise expert's scale is ``guidance_scale`` where a boundary is set and none is given."""
        pipe, args = self.pipe, c.args
        temporal, frames = pipe.vae_scale_factor_temporal, args["num_frames"]
        if frames % temporal != 1:
            rounded = frames // temporal * temporal + 1
            log.warning("hasten: %s needs num_frames - 1 divisible by %d; rounding %d to %d, as the pipeline does",
                        type(pipe).__name__, temporal, frames, rounded)
            frames = rounded
        patch = pipe.transformer.config.patch_size
        h_multiple, w_multiple = pipe.vae_scale_factor_spatial * patch[1], pipe.vae_scale_factor_spatial * patch[2]
        height, width = args["height"], args["width"]
        rounded_h, rounded_w = height // h_multiple * h_multiple, width // w_multiple * w_multiple
        if (rounded_h, rounded_w) != (height, width):
            log.warning("hasten: %s needs height and width in multiples of (%d, %d); adjusting (%d, %d) to (%d, %d), "
                        "as the pipeline does", type(pipe).__name__, h_multiple, w_multiple, height, width,
                        rounded_h, rounded_w)
        args.update(num_frames=max(frames, 1), height=rounded_h, width=rounded_w)
        if pipe.config.get("boundary_ratio") is not None and args["guidance_scale_2"] is None:
            args["guidance_scale_2"] = args["guidance_scale"]

    def condition(self, c: Call) -> None:
        """The text in the transformer's dtype; ``expand_timesteps``: a timestep per token."""
        for side in c.sides:
            side["text"] = side["text"].to(self.pipe.transformer.dtype)
        c.extra["token_mask"] = (torch.ones(c.latents.shape[2:], device=c.device)[:, ::2, ::2].flatten()
                                 if self.pipe.config.get("expand_timesteps") else None)

    def denoiser(self, c: Call) -> PipelineDenoiser:
        return wan_denoiser(self.pipe, c, c.extra["token_mask"], c.extra.get("first_frame_mask"))


class WanImageToVideoAdapter(WanAdapter):
    """``WanImageToVideoPipeline``: Wan 2.1 I2V / FLF2V (CLIP image embeddings), Wan 2.2 I2V (two experts) and TI2V.

    The first (and last) frame's VAE latents condition every forward: stacked
    with a frame mask on channels, or (``expand_timesteps``) pasted over the
    latents' first frame with timestep 0 there, and over the final latents.
    """

    def initial_latents(self, c: Call) -> torch.Tensor:
        pipe, args = self.pipe, c.args
        network, prompts = pipe.transformer, self.prompts(c)
        if network is not None and network.config.image_dim is not None:
            if args["num_videos_per_prompt"] != 1:  # the pipeline repeats the image embeddings per prompt
                raise HastenError("WanImageToVideoPipeline with an image encoder makes one video per prompt; pass "
                                  "num_videos_per_prompt=1 (or a list of prompts)")
            embeds = args["image_embeds"]
            if embeds is None:
                image, last = args["image"], args["last_image"]
                embeds = self.encode(pipe.encode_image, args, image=image if last is None else [image, last],
                                     device=c.device)
            # one row per sample: the images of a prompt (first, and last for FLF2V) side by side
            images = embeds.repeat(prompts, 1, 1).to(network.dtype)
            for side in c.sides:
                side["image"] = images.view(prompts, -1, *images.shape[1:])
        frames = [None if f is None else pipe.video_processor.preprocess(f, height=args["height"], width=args["width"])
                  .to(c.device, dtype=torch.float32) for f in (args["image"], args["last_image"])]
        out = call_with(pipe.prepare_latents, args, image=frames[0], batch_size=c.count,
                        num_channels_latents=pipe.vae.config.z_dim, dtype=torch.float32, device=c.device,
                        last_image=frames[1])
        for side in c.sides:
            side["condition"] = out[1]
        c.extra["first_frame_mask"] = out[2] if pipe.config.get("expand_timesteps") else None
        return out[0]

    def condition(self, c: Call) -> None:
        super().condition(c)
        mask = c.extra["first_frame_mask"]
        c.extra["token_mask"] = None if mask is None else mask[0][0][:, ::2, ::2].flatten()

    def decode(self, c: Call):
        decode, mask = super().decode(c), c.extra["first_frame_mask"]
        if mask is None:
            return decode
        condition = c.cond["condition"]  # the pipeline pastes the condition's first frame over its final latents
        return lambda z: decode((1 - mask) * condition + mask * z)
