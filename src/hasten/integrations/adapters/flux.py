"""Flux: text-to-image, image-to-image, inpainting, Kontext (reference tokens), Fill (masked channels), ControlNet.

Flux samples its own shifted flow sigmas on packed 2x2 latent patches, with a
guidance embedding and true CFG. Kontext appends the reference image's latent
tokens after the noisy latents' tokens and keeps the latents' output only;
Fill concatenates the masked image latents and the packed mask to the latents'
channels. Both are conditioning, in the denoiser (:func:`flux_call`), the same
for every evaluation, so every method sees them alike.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from hasten.errors import HastenError
from hasten.inpaint import KnownRegion
from hasten.integrations.adapters.base import Adapter, Call, call_with
from hasten.integrations.adapters.images import control_by_index, image_latents, per_row
from hasten.integrations.adapters.output import Decoding, scale_and_shift
from hasten.integrations.schedulers import shifted_flow_plan


def flux_unscale(pipe, z: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Flux's VAE input: the packed 2x2 patches unpacked to the image's latent size, then scaled and shifted."""
    return scale_and_shift(pipe, pipe._unpack_latents(z, height, width, pipe.vae_scale_factor))


def flux_call(transformer, guidance_scale: float, text_ids, image_ids, device,
              residuals: Callable | None = None) -> Callable:
    """``call(x, t, cond)`` of a Flux transformer as the Flux pipelines run it.

    ``cond`` holds ``text`` and ``pooled``, and where the pipeline has them
    ``reference`` (Kontext: the reference image's tokens after the latents'
    ones, ``image_ids`` covering both; the output is cut back to the latents'
    tokens) or ``masked`` (Fill: masked image latents and mask as extra
    channels). ``residuals(x, timestep, cond) -> dict`` adds a ControlNet's
    block residuals (the transformer's ``controlnet_*`` arguments).
    """
    guidance = None
    if transformer.config.guidance_embeds:
        guidance = torch.full([1], guidance_scale, device=device, dtype=torch.float32)

    def call(xm, t, c):
        g = None if guidance is None else guidance.expand(xm.shape[0])
        timestep = (t / 1000).to(xm.dtype)
        hidden = xm
        if "reference" in c:
            hidden = torch.cat([xm, c["reference"]], dim=1)
        if "masked" in c:
            hidden = torch.cat([xm, c["masked"]], dim=2)
        control = {} if residuals is None else residuals(xm, timestep, c)
        out = transformer(hidden_states=hidden, timestep=timestep, guidance=g, pooled_projections=c["pooled"],
                          encoder_hidden_states=c["text"], txt_ids=text_ids, img_ids=image_ids, return_dict=False,
                          **control)[0]
        return out[:, :xm.shape[1]]

    return call


class FluxAdapter(Adapter):
    """``FluxPipeline``: flow matching with the pipeline's shifted sigmas, guidance embedding and true CFG."""

    decoding = Decoding("diffusers.pipelines.flux.pipeline_output:FluxPipelineOutput", unscale=flux_unscale)
    flow_only = True
    guidance = "true"
    scale_argument = "true_cfg_scale"
    encoded = ("text", "pooled", "@text_ids")

    def normalize_call(self, call: dict[str, Any]) -> dict[str, Any]:
        """With a negative prompt, Flux guides by true CFG: ``true_cfg_scale`` takes ``guidance_scale`` (default 4)."""
        call = dict(call)
        if "negative_prompt" in call:
            call.setdefault("true_cfg_scale", call.pop("guidance_scale", 4.0))
        return call

    def latent_channels(self) -> int:
        return self.pipe.transformer.config.in_channels // 4

    def plan(self, c: Call):
        """The pipeline's sigmas, shifted by ``mu`` for the image's sequence length.

        A scheduler config with ``use_flow_sigmas`` set (one built from a UniPC or DPM-Solver config keeps
        it) makes FluxPipeline drop its own sigmas and leave them to the scheduler, and so does hasten; its
        image-input siblings (img2img, inpaint, Kontext, Fill, ControlNet) keep theirs.
        """
        pipe, args = self.pipe, c.args
        own = not (type(pipe).__name__ == "FluxPipeline" and pipe.scheduler.config.get("use_flow_sigmas"))
        seq = (int(args["height"]) // pipe.vae_scale_factor // 2) * (int(args["width"]) // pipe.vae_scale_factor // 2)
        return shifted_flow_plan(pipe, args["num_inference_steps"], seq, c.device, own_sigmas=own)

    def condition(self, c: Call) -> None:
        c.shape = {"height": c.args["height"], "width": c.args["width"]}

    def init_image(self, c: Call) -> torch.Tensor:
        args = c.args
        return self.pipe.image_processor.preprocess(args["image"], height=args["height"],
                                                    width=args["width"]).to(torch.float32)

    def residuals(self, c: Call) -> Callable | None:
        return None

    def network_call(self, c: Call) -> Callable:
        return flux_call(self.pipe.transformer, c.args["guidance_scale"], c.extra["text_ids"], c.extra["latent_ids"],
                         c.device, self.residuals(c))


class FluxImg2ImgAdapter(FluxAdapter):
    """``FluxImg2ImgPipeline``: the image noised to ``strength`` by ``scale_noise``, then the steps from there."""

    def initial_latents(self, c: Call) -> torch.Tensor:
        x, c.extra["latent_ids"] = image_latents(c, self.pipe, image=self.init_image(c), batch_size=c.count,
                                                 num_channels_latents=self.latent_channels(),
                                                 dtype=c.cond["text"].dtype)
        return x


class FluxInpaintAdapter(FluxAdapter):
    """``FluxInpaintPipeline``: image-to-image with the known region pasted back after every step."""

    def initial_latents(self, c: Call) -> torch.Tensor:
        pipe, args, dtype = self.pipe, c.args, c.cond["text"].dtype
        image, channels = self.init_image(c), self.latent_channels()
        x, noise, known, c.extra["latent_ids"] = image_latents(c, pipe, image=image, batch_size=c.count,
                                                               num_channels_latents=channels, dtype=dtype)
        condition = pipe.mask_processor.preprocess(args["mask_image"], height=args["height"], width=args["width"])
        masked = image * (condition < 0.5) if args["masked_image_latents"] is None else args["masked_image_latents"]
        mask, _ = call_with(pipe.prepare_mask_latents, args, mask=condition, masked_image=masked,
                            batch_size=self.prompts(c), num_channels_latents=channels, dtype=dtype, device=c.device)
        c.known = KnownRegion(mask.float(), known.float(), noise.float())
        return x


class FluxKontextAdapter(FluxAdapter):
    """``FluxKontextPipeline``: text-to-image with the reference image's tokens beside the latents'."""

    def settle(self, c: Call) -> None:
        """The output size Kontext samples: the requested aspect ratio at ``max_area`` pixels, on its latent grid."""
        super().settle(c)
        args, multiple = c.args, self.pipe.vae_scale_factor * 2
        aspect = args["width"] / args["height"]
        width, height = round((args["max_area"] * aspect) ** 0.5), round((args["max_area"] / aspect) ** 0.5)
        args["height"], args["width"] = height // multiple * multiple, width // multiple * multiple

    def validate(self, c: Call) -> None:
        embeds, negative = c.args["prompt_embeds"], c.args["negative_prompt_embeds"]
        if embeds is not None and negative is not None and embeds.shape != negative.shape:
            raise HastenError(f"FluxKontextPipeline: prompt_embeds {tuple(embeds.shape)} and "
                              f"negative_prompt_embeds {tuple(negative.shape)} must have the same shape")

    def initial_latents(self, c: Call) -> torch.Tensor:
        image = self.reference(c.args["image"], c.args["_auto_resize"])
        x, reference, ids, reference_ids = call_with(
            self.pipe.prepare_latents, c.args, image=image, batch_size=c.count,
            num_channels_latents=self.latent_channels(), dtype=c.cond["text"].dtype, device=c.device)
        if reference is not None:
            ids = torch.cat([ids, reference_ids], dim=0)  # dim 0 is the token dimension
            for side in c.sides:
                side["reference"] = reference
        c.extra["latent_ids"] = ids
        return x

    def reference(self, image, auto_resize: bool):
        """The reference image as the pipeline preprocesses it (a preferred resolution unless ``_auto_resize``
        is False)."""
        from diffusers.pipelines.flux.pipeline_flux_kontext import PREFERRED_KONTEXT_RESOLUTIONS

        pipe = self.pipe
        if image is None or (isinstance(image, torch.Tensor) and image.size(1) == pipe.latent_channels):
            return image
        processor, multiple = pipe.image_processor, pipe.vae_scale_factor * 2
        height, width = processor.get_default_height_width(image[0] if isinstance(image, list) else image)
        if auto_resize:
            aspect = width / height
            _, width, height = min((abs(aspect - w / h), w, h) for w, h in PREFERRED_KONTEXT_RESOLUTIONS)
        height, width = height // multiple * multiple, width // multiple * multiple
        return processor.preprocess(processor.resize(image, height, width), height, width)


class FluxFillAdapter(FluxAdapter):
    """``FluxFillPipeline``: masked image latents and the mask as extra transformer channels."""

    guidance = None

    def initial_latents(self, c: Call) -> torch.Tensor:
        pipe, args, dtype = self.pipe, c.args, c.cond["text"].dtype
        image, channels = self.init_image(c), pipe.vae.config.latent_channels
        x, c.extra["latent_ids"] = image_latents(c, pipe, image=image, batch_size=c.count,
                                                 num_channels_latents=channels, dtype=dtype)
        if args["masked_image_latents"] is not None:
            masked = args["masked_image_latents"].to(x.device)
        else:
            mask = pipe.mask_processor.preprocess(args["mask_image"], height=args["height"], width=args["width"])
            mask, masked = call_with(pipe.prepare_mask_latents, args, mask=mask,
                                     masked_image=(image * (1 - mask)).to(device=c.device, dtype=dtype),
                                     batch_size=self.prompts(c), num_channels_latents=channels,
                                     height=image.shape[-2], width=image.shape[-1], dtype=dtype, device=c.device)
            masked = torch.cat((masked, mask), dim=-1)
        c.cond["masked"] = masked
        return x


def flux_control_residuals(controlnet, guidance_scale: float, text_ids, image_ids, device, guided: bool) -> Callable:
    """``residuals(x, timestep, cond) -> transformer kwargs`` of a Flux ControlNet, weighted per row.

    With true CFG (``guided``) the pipeline runs the ControlNet on the
    prompt's rows only and hands the same residuals to the negative pass: here
    the rows come batched (negative half first), so the ControlNet runs on the
    second half and its residuals are used for both.
    """
    guidance = torch.tensor([guidance_scale], device=device) if controlnet.config.guidance_embeds else None
    repeat = controlnet.input_hint_block is not None

    def both(samples):
        return None if samples is None else [torch.cat([s, s]) for s in samples]

    def residuals(xm, timestep, c):
        if guided:
            half = xm.shape[0] // 2
            xm, timestep, c = xm[half:], timestep[half:], {k: v[half:] for k, v in c.items()}
        g = None if guidance is None else guidance.expand(xm.shape[0])
        block, single = controlnet(hidden_states=xm, controlnet_cond=c["control0"],
                                   controlnet_mode=c.get("control_mode"),
                                   conditioning_scale=per_row(c["control_weight"][:, 0], xm.ndim, xm.dtype),
                                   timestep=timestep, guidance=g, pooled_projections=c["pooled"],
                                   encoder_hidden_states=c["text"], txt_ids=text_ids, img_ids=image_ids,
                                   return_dict=False)
        if guided:
            block, single = both(block), both(single)
        return {"controlnet_block_samples": block, "controlnet_single_block_samples": single,
                "controlnet_blocks_repeat": repeat}

    return residuals


class FluxControlNetAdapter(FluxAdapter):
    """``FluxControlNetPipeline`` with one ``FluxControlNetModel`` (also a union one, ``control_mode``)."""

    def validate(self, c: Call) -> None:
        if hasattr(self.pipe.controlnet, "nets"):
            raise HastenError("FluxControlNetPipeline with FluxMultiControlNetModel is not supported; supported: one "
                              "FluxControlNetModel (a union ControlNet takes control_mode)")
        mode = c.args["control_mode"]
        if mode is not None and not isinstance(mode, int):
            raise HastenError(f"control_mode must be an int or None for one FluxControlNetModel, got {mode!r}")

    def initial_latents(self, c: Call) -> torch.Tensor:
        """The control image (packed VAE latents where the ControlNet has no hint block), then the latents."""
        from diffusers.pipelines.flux.pipeline_flux_controlnet import retrieve_latents

        pipe, args = self.pipe, c.args
        control = call_with(pipe.prepare_image, args, image=args["control_image"], batch_size=c.count,
                            device=c.device, dtype=pipe.vae.dtype)
        args["height"], args["width"] = control.shape[-2:]
        if pipe.controlnet.input_hint_block is None:
            vae = pipe.vae
            control = retrieve_latents(vae.encode(control), generator=args["generator"])
            control = (control - vae.config.shift_factor) * vae.config.scaling_factor
            control = pipe._pack_latents(control, c.count, self.latent_channels(), *control.shape[2:])
        extra = {"control0": control}
        if args["control_mode"] is not None:
            extra["control_mode"] = torch.tensor(args["control_mode"]).to(c.device, dtype=torch.long).view(
                -1, 1).expand(control.shape[0], 1)
        for side in c.sides:
            side.update(extra)
        c.by_index = control_by_index(pipe.controlnet, args, c.plan.grid.steps, c.device)
        return super().initial_latents(c)

    def residuals(self, c: Call) -> Callable:
        return flux_control_residuals(self.pipe.controlnet, c.args["guidance_scale"], c.extra["text_ids"],
                                      c.extra["latent_ids"], c.device, guided=c.uncond is not None)
