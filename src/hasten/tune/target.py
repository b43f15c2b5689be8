"""Quality targets of ``hasten tune``: ``psnr:DB``, ``ssim:S`` or ``rmse:X`` against sequential sampling of the same seed."""

from __future__ import annotations

import math
from dataclasses import dataclass

from hasten.errors import HastenError

TARGET_FORMS = "psnr:DB (PSNR against sequential sampling at least DB dB, e.g. psnr:35), ssim:S (SSIM of the " \
               "images at least S, in (0, 1], e.g. ssim:0.95) or rmse:X (latent RMSE at most X, e.g. rmse:0.02)"


@dataclass(frozen=True)
class Target:
    """A quality target: ``psnr:DB`` (at least DB dB), ``ssim:S`` (at least S) or ``rmse:X`` (at most X)."""

    metric: str
    value: float

    @classmethod
    def parse(cls, text: str) -> "Target":
        """Parse ``psnr:NUM`` / ``ssim:NUM`` / ``rmse:NUM``; a bad target raises a HastenError naming ``--target``."""
        metric, sep, value = str(text).strip().partition(":")
        metric = metric.strip().lower()
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        bounded = (metric == "rmse" and number <= 0) or (metric == "ssim" and not 0 < number <= 1)
        if not sep or metric not in ("psnr", "ssim", "rmse") or not math.isfinite(number) or bounded:
            raise HastenError(f"--target {text!r} is not a target; use {TARGET_FORMS}")
        return cls(metric, number)

    def met(self, psnr: float, rmse: float, ssim: float | None = None) -> bool:
        """Whether a run with this quality meets the target (an SSIM target needs the run's SSIM)."""
        if self.metric == "ssim":
            return ssim is not None and ssim >= self.value
        return psnr >= self.value if self.metric == "psnr" else rmse <= self.value

    def __str__(self) -> str:
        return f"{self.metric}:{self.value:g}"
