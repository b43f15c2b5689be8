"""Previews of hits, and the images a response carries (PNG, an animated PNG per sample for video).

Three preview modes (``--preview``):

* ``full``: each hit through the model's own decoder (a pipeline's VAE), the same as the final image;
* ``approx``: a linear latent-to-RGB projection, ``rgb = A z + b`` per latent pixel, upsampled to the
  image size. It is fitted once when the server starts, by least squares against the model's own decoder
  on standard normal latents (the distribution of a VAE's scaled latents), so it needs no published
  coefficients per family. Image latents (B, C, h, w) only. For an embedded model whose latents are
  its pixels (digits) the model's own decode is already linear and cheap, and is used as is;
* ``none``: no partial images; the stream still reports each hit's round and time.

What previews cost is measured per run (``preview_s`` in a response's cost, ``hasten_preview_seconds``
in /metrics).
"""

from __future__ import annotations

import base64
import io

import torch

from hasten.errors import HastenError

PREVIEWS = ("full", "approx", "none")
#: latents drawn to fit the approximate projection
FIT_SAMPLES = 8


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1] (B, C, H, W) as uint8 (B, H, W, C): the pixels a PNG of them holds."""
    return (images.float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu()


def _pil(pixels: torch.Tensor):
    from PIL import Image

    array = pixels.numpy()
    return Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)


def encode_pngs(images: torch.Tensor, samples: int) -> list[bytes]:
    """One PNG per sample; a video's frames (samples x frames images) become one animated PNG per sample."""
    pixels = to_uint8(images)
    frames = pixels.shape[0] // samples
    out = []
    for s in range(samples):
        buffer = io.BytesIO()
        clip = [_pil(p) for p in pixels[s * frames:(s + 1) * frames]]
        if frames == 1:
            clip[0].save(buffer, format="PNG")
        else:
            clip[0].save(buffer, format="PNG", save_all=True, append_images=clip[1:], duration=125, loop=0)
        out.append(buffer.getvalue())
    return out


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class LinearPreview:
    """``rgb = A z + b`` per latent pixel, least-squares fitted to ``decode`` on standard normal latents."""

    def __init__(self, decode, latent_shape: tuple[int, ...], generator_seed: int = 0):
        if len(latent_shape) != 3:
            raise HastenError(f"--preview approx needs image latents (channels, height, width), not shape "
                              f"{latent_shape}; use --preview full or none")
        z = torch.randn((FIT_SAMPLES, *latent_shape), generator=torch.Generator().manual_seed(generator_seed))
        images = decode(z).float()
        if images.shape[0] != FIT_SAMPLES:
            raise HastenError("--preview approx: the decoder returns frames per latent; use --preview full or none")
        h, w = latent_shape[1:]
        self.scale = (images.shape[2] // h, images.shape[3] // w)  # image pixels per latent pixel
        small = torch.nn.functional.adaptive_avg_pool2d(images, (h, w))
        inputs = torch.cat([z, torch.ones_like(z[:, :1])], 1).permute(0, 2, 3, 1).reshape(-1, latent_shape[0] + 1)
        target = small.permute(0, 2, 3, 1).reshape(-1, images.shape[1])
        self.weight = torch.linalg.lstsq(inputs.double(), target.double()).solution.float()
        fitted = inputs @ self.weight
        self.r2 = float(1 - ((fitted - target) ** 2).sum() / ((target - target.mean(0)) ** 2).sum())

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        weight = self.weight.to(z.device)
        rgb = torch.einsum("bchw,cd->bdhw", z.float(), weight[:-1]) + weight[-1].view(1, -1, 1, 1)
        size = (z.shape[2] * self.scale[0], z.shape[3] * self.scale[1])
        return torch.nn.functional.interpolate(rgb, size=size, mode="nearest").clamp(0, 1).cpu()


class Previewer:
    """Turns a hit's latents into the images of its partial events, as ``--preview`` says."""

    def __init__(self, served, mode: str = "full"):
        if mode not in PREVIEWS:
            raise HastenError(f"--preview must be one of {', '.join(PREVIEWS)}, got {mode!r}")
        self.mode = mode
        self.linear = None
        if mode == "approx" and served.is_pipeline:
            view = served.model
            self.linear = LinearPreview(view.decode, tuple(view.initial_latents(1, 0).shape[1:]))

    def images(self, view, x: torch.Tensor) -> torch.Tensor | None:
        """Preview images of latents ``x`` of a run on ``view`` (None with ``--preview none``)."""
        if self.mode == "none":
            return None
        if self.linear is not None:
            return self.linear(x)
        return view.decode(x)
