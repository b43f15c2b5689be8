"""Adapters from a diffusers pipeline to (grid, denoiser, initial latents, decoder), by family.

Each adapter reuses the pipeline's own pieces (``encode_prompt``,
``prepare_latents``, the scheduler's arrays, the VAE and image processor) and
never copies its ``__call__``. ``prepare`` validates the call's arguments and
returns everything the engine needs, before any network call.

* :mod:`.base`: :class:`Prepared`, :class:`Adapter`, the refusals and the one
  decoder (:class:`Decoding`, :func:`decode_latents`);
* :mod:`.unet`: unconditional DDPM / DDIM, Stable Diffusion, SDXL;
* :mod:`.flow`: Flux, Stable Diffusion 3;
* :mod:`.dit`: further text-to-image transformers (Qwen-Image, Chroma, AuraFlow, CogView4, Lumina 2, HiDream);
* :mod:`.pixart`: PixArt-Σ and Sana (resolution binning, learned sigma);
* :mod:`.video`: CogVideoX, HunyuanVideo, LTX-Video, Wan;
* :mod:`.image`: image-to-image and inpainting (SD, SDXL, Flux);
* :mod:`.reference`: Flux Kontext and Fill;
* :mod:`.control`: ControlNet (SD, SDXL, Flux).
"""

from __future__ import annotations

from hasten.errors import HastenError
from hasten.integrations.adapters.base import Adapter, Decoding, Prepared, bind_call, decode_latents
from hasten.integrations.adapters.control import (FluxControlNetAdapter, SDXLControlNetAdapter,
                                                  StableDiffusionControlNetAdapter)
from hasten.integrations.adapters.dit import (AuraFlowAdapter, ChromaAdapter, CogView4Adapter, HiDreamImageAdapter,
                                              Lumina2Adapter, QwenImageAdapter)
from hasten.integrations.adapters.flow import FluxAdapter, SD3Adapter
from hasten.integrations.adapters.image import (FluxImg2ImgAdapter, FluxInpaintAdapter, SDXLImg2ImgAdapter,
                                                SDXLInpaintAdapter, StableDiffusionImg2ImgAdapter,
                                                StableDiffusionInpaintAdapter)
from hasten.integrations.adapters.pixart import PixArtSigmaAdapter, SanaAdapter
from hasten.integrations.adapters.reference import FluxFillAdapter, FluxKontextAdapter
from hasten.integrations.adapters.unet import SDXLAdapter, StableDiffusionAdapter, UnconditionalAdapter
from hasten.integrations.adapters.video import (CogVideoXAdapter, HunyuanVideoAdapter, LTXAdapter, WanAdapter,
                                                WanImageToVideoAdapter)

ADAPTERS: dict[str, type[Adapter]] = {
    "FluxPipeline": FluxAdapter,
    "WanPipeline": WanAdapter,
    "StableDiffusion3Pipeline": SD3Adapter,
    "StableDiffusionXLPipeline": SDXLAdapter,
    "CogVideoXPipeline": CogVideoXAdapter,
    "HunyuanVideoPipeline": HunyuanVideoAdapter,
    "DDPMPipeline": UnconditionalAdapter,
    "DDIMPipeline": UnconditionalAdapter,
    "StableDiffusionPipeline": StableDiffusionAdapter,
    "StableDiffusionImg2ImgPipeline": StableDiffusionImg2ImgAdapter,
    "StableDiffusionInpaintPipeline": StableDiffusionInpaintAdapter,
    "StableDiffusionXLImg2ImgPipeline": SDXLImg2ImgAdapter,
    "StableDiffusionXLInpaintPipeline": SDXLInpaintAdapter,
    "FluxImg2ImgPipeline": FluxImg2ImgAdapter,
    "FluxInpaintPipeline": FluxInpaintAdapter,
    "FluxKontextPipeline": FluxKontextAdapter,
    "FluxFillPipeline": FluxFillAdapter,
    "StableDiffusionControlNetPipeline": StableDiffusionControlNetAdapter,
    "StableDiffusionXLControlNetPipeline": SDXLControlNetAdapter,
    "FluxControlNetPipeline": FluxControlNetAdapter,
    "LTXPipeline": LTXAdapter,
    "QwenImagePipeline": QwenImageAdapter,
    "WanImageToVideoPipeline": WanImageToVideoAdapter,
    "ChromaPipeline": ChromaAdapter,
    "AuraFlowPipeline": AuraFlowAdapter,
    "CogView4Pipeline": CogView4Adapter,
    "Lumina2Pipeline": Lumina2Adapter,
    "PixArtSigmaPipeline": PixArtSigmaAdapter,
    "SanaPipeline": SanaAdapter,
    "HiDreamImagePipeline": HiDreamImageAdapter,
}


def adapter_for(pipe) -> Adapter:
    """The adapter for ``pipe``'s class, or a clear error naming what is supported."""
    name = type(pipe).__name__
    if name not in ADAPTERS:
        raise HastenError(f"pipeline {name} is not supported yet; supported: {', '.join(sorted(ADAPTERS))}")
    network = "unet" if "transformer" not in pipe.components else "transformer"
    for component in (network, "scheduler"):
        if getattr(pipe, component, None) is None:
            raise HastenError(f"{name} is missing its {component!r} component")
    return ADAPTERS[name](pipe)


__all__ = ["ADAPTERS", "Adapter", "AuraFlowAdapter", "ChromaAdapter", "CogVideoXAdapter", "CogView4Adapter",
           "Decoding", "FluxAdapter", "HiDreamImageAdapter", "HunyuanVideoAdapter", "LTXAdapter", "Lumina2Adapter",
           "PixArtSigmaAdapter", "Prepared", "QwenImageAdapter", "SD3Adapter", "SDXLAdapter", "SanaAdapter",
           "StableDiffusionAdapter", "UnconditionalAdapter", "WanAdapter", "WanImageToVideoAdapter", "adapter_for",
           "bind_call", "decode_latents"]
