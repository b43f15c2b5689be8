"""Adapters from a diffusers pipeline to (grid, denoiser, initial latents, decoder), by family.

Each adapter reuses the pipeline's own pieces (``encode_prompt``,
``prepare_latents``, the scheduler's arrays, the VAE and image processor) and
never copies its ``__call__``. ``prepare`` validates the call's arguments and
returns everything the engine needs, before any network call.

* :mod:`.base`: the one preparation sequence (:meth:`Adapter.prepare`), :class:`Prepared`, the refusals and the
  one decoder (:class:`Decoding`, :func:`decode_latents`);
* :mod:`.images`: what the image-input workflows share (a start from a noised image, ControlNet weights);
* :mod:`.sd`: unconditional DDPM / DDIM and Stable Diffusion (text, image-to-image, inpainting, ControlNet);
* :mod:`.sdxl`: SDXL (the same four); :mod:`.sd3`: Stable Diffusion 3;
* :mod:`.flux`: Flux (text, image-to-image, inpainting, Kontext, Fill, ControlNet);
* :mod:`.dit`: further text-to-image transformers (Qwen-Image, Chroma, AuraFlow, CogView4, Lumina 2, HiDream);
* :mod:`.pixart`: PixArt-Σ and Sana (resolution binning, learned sigma);
* :mod:`.video`: CogVideoX, HunyuanVideo, LTX-Video; :mod:`.wan`: Wan text- and image-to-video.
"""

from __future__ import annotations

from hasten.errors import HastenError
from hasten.integrations.adapters.base import Adapter, bind_call
from hasten.integrations.adapters.dit import (AuraFlowAdapter, ChromaAdapter, CogView4Adapter, HiDreamImageAdapter,
                                              Lumina2Adapter, QwenImageAdapter)
from hasten.integrations.adapters.flux import (FluxAdapter, FluxControlNetAdapter, FluxFillAdapter, FluxImg2ImgAdapter,
                                               FluxInpaintAdapter, FluxKontextAdapter)
from hasten.integrations.adapters.output import Decoding, Prepared, decode_latents
from hasten.integrations.adapters.pixart import PixArtSigmaAdapter, SanaAdapter
from hasten.integrations.adapters.sd import (StableDiffusionAdapter, StableDiffusionControlNetAdapter,
                                             StableDiffusionImg2ImgAdapter, StableDiffusionInpaintAdapter,
                                             UnconditionalAdapter)
from hasten.integrations.adapters.sd3 import SD3Adapter
from hasten.integrations.adapters.sdxl import SDXLAdapter, SDXLControlNetAdapter, SDXLImg2ImgAdapter, SDXLInpaintAdapter
from hasten.integrations.adapters.video import CogVideoXAdapter, HunyuanVideoAdapter, LTXAdapter
from hasten.integrations.adapters.wan import WanAdapter, WanImageToVideoAdapter

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
