"""Video frames as an H.264 MP4, through PyAV (FFmpeg's libraries in a PyPI wheel: ``pip install 'hasten[video]'``).

:func:`encode_mp4` writes frames (F, C, H, W) in [0, 1] as yuv420p H.264
(an odd width or height is padded by one edge row / column, as yuv420p needs
even sides); :func:`mp4_bytes` gives the same file in memory (the service's
answer); :func:`decode_mp4` reads one back as frames (F, H, W, 3) uint8.
"""

from __future__ import annotations

import io
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from hasten.errors import HastenError


def require_video():
    """PyAV, or a one-line error naming the extra that installs it."""
    try:
        import av
    except ImportError:
        raise HastenError("writing MP4 video needs PyAV: pip install 'hasten[video]' (or pip install av)") from None
    return av


def _rgb(frames: torch.Tensor) -> np.ndarray:
    """(F, C, H, W) in [0, 1] -> (F, H', W', 3) uint8 with even H', W' (edge-padded)."""
    if frames.ndim != 4 or frames.shape[1] not in (1, 3):
        raise HastenError(f"frames must be (F, 1 or 3, H, W), got {tuple(frames.shape)}")
    x = (frames.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    rgb = x.permute(0, 2, 3, 1).numpy()
    h, w = rgb.shape[1:3]
    return np.pad(rgb, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")


def encode_mp4(frames: torch.Tensor, target, fps: float = 16.0, crf: int = 18) -> None:
    """Write ``frames`` (F, C, H, W) in [0, 1] to ``target`` (a path or a binary file) as H.264 at ``fps``."""
    av = require_video()
    if not fps > 0:
        raise HastenError(f"fps must be > 0, got {fps}")
    rgb = _rgb(frames)
    rate = Fraction(fps).limit_denominator(1001)
    with av.open(str(target) if isinstance(target, Path) else target, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.width, stream.height = rgb.shape[2], rgb.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(crf)}
        for frame in rgb:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def mp4_bytes(frames: torch.Tensor, fps: float = 16.0) -> bytes:
    """The MP4 of ``frames`` in memory."""
    buf = io.BytesIO()
    encode_mp4(frames, buf, fps)
    return buf.getvalue()


def decode_mp4(source) -> np.ndarray:
    """An MP4 (path, bytes or binary file) read back: frames (F, H, W, 3) uint8."""
    av = require_video()
    if isinstance(source, (bytes, bytearray)):
        source = io.BytesIO(source)
    with av.open(str(source) if isinstance(source, Path) else source) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def clips(images: torch.Tensor, batch: int) -> torch.Tensor | None:
    """Decoded samples (B * F, C, H, W) as one clip (F, C, H, B * W), the samples side by side; None for images."""
    if images is None or batch < 1 or images.shape[0] % batch or images.shape[0] // batch < 2:
        return None
    frames = images.shape[0] // batch
    return torch.cat(list(images.reshape(batch, frames, *images.shape[1:])), dim=-1)


def save_clips(images: torch.Tensor, batch: int, path: Path, fps: float = 16.0) -> bool:
    """Write a video model's samples (B * F frames) as one MP4 at ``path``; False (nothing written) for images."""
    clip = clips(images, batch)
    if clip is None:
        return False
    encode_mp4(clip, Path(path), fps)
    return True
