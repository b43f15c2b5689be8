"""Quality against the sequential result of the same seed, and a download-free Frechet distance."""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch


def rmse(x: torch.Tensor, ref: torch.Tensor) -> float:
    """Root mean squared difference over all elements (the papers' latent RMSE)."""
    return float((x.double() - ref.double()).pow(2).mean().sqrt())


def psnr(x: torch.Tensor, ref: torch.Tensor, data_range: float | None = None) -> float:
    """Peak signal-to-noise ratio in dB; the peak is ``data_range`` or the reference's range.

    Identical inputs give ``inf``.
    """
    err = rmse(x, ref)
    peak = float(ref.max() - ref.min()) if data_range is None else data_range
    return math.inf if err == 0 else 20 * math.log10(peak / err)


def ssim(images: torch.Tensor, ref: torch.Tensor, data_range: float = 1.0, window: int = 7, sigma: float = 1.5) -> float:
    """Mean structural similarity (Wang et al. 2004) of images (B, C, H, W), averaged over the batch.

    A Gaussian window of ``window`` pixels (7 by default, suited to 16x16
    digits; 11 is the usual choice for large images) and the usual constants
    ``(0.01 L)^2`` and ``(0.03 L)^2``.
    """
    x, y = images.double(), ref.double()
    c = x.shape[1]
    g = torch.exp(-((torch.arange(window, dtype=torch.float64) - (window - 1) / 2) ** 2) / (2 * sigma**2))
    kernel = (g[:, None] * g[None, :] / g.sum() ** 2).expand(c, 1, window, window)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.conv2d(t, kernel, groups=c)

    mx, my = blur(x), blur(y)
    vx, vy, cov = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return float(s.mean())


def flops_per_evaluation(denoiser, x: torch.Tensor) -> int:
    """FLOPs of one model evaluation for one sample, counted by ``torch.utils.flop_counter``."""
    from torch.utils.flop_counter import FlopCounterMode

    from hasten.executors.base import denoise_round

    counter = FlopCounterMode(display=False)
    with counter:
        denoise_round(denoiser, x[:1], torch.zeros(1, dtype=torch.long, device=x.device), [1], slice(0, 1))
    return int(counter.get_total_flops())


class DigitFeatures:
    """Features for a Frechet distance on 16x16 digits, and a digit classifier, with no download.

    A scikit-learn MLP classifier (one hidden layer of 32 ReLU units, fixed
    seed) is trained in a few seconds on ``load_digits``; images are
    average-pooled back to 8x8 and scaled to the dataset's 0..16 range, and
    the hidden activations are the features. The reference statistics are
    those of all 1797 real digits passed through the same path.
    """

    def __init__(self) -> None:
        from sklearn.datasets import load_digits
        from sklearn.neural_network import MLPClassifier

        from hasten.models.digits import load_digit_images

        data = load_digits()
        self.clf = MLPClassifier(hidden_layer_sizes=(32,), max_iter=600, random_state=0)
        self.clf.fit(self._to_8x8((load_digit_images() + 1) / 2), data.target)
        real = self.features((load_digit_images() + 1) / 2)
        self.mu, self.cov = real.mean(0), np.cov(real, rowvar=False)

    @staticmethod
    def _to_8x8(images: torch.Tensor) -> np.ndarray:
        pooled = torch.nn.functional.avg_pool2d(images.float(), 2)
        return (pooled.flatten(1) * 16).numpy().astype(np.float64)

    def features(self, images: torch.Tensor) -> np.ndarray:
        """Hidden-layer activations for images (B, 1, 16, 16) in [0, 1]."""
        z = self._to_8x8(images) @ self.clf.coefs_[0] + self.clf.intercepts_[0]
        return np.maximum(z, 0)

    def accuracy(self, images: torch.Tensor, labels) -> float:
        """The fraction of images (B, 1, 16, 16) in [0, 1] the classifier reads as their ``labels``."""
        predicted = self.clf.predict(self._to_8x8(images))
        return float((predicted == np.asarray(labels)).mean())

    def frechet(self, images: torch.Tensor) -> float:
        """Frechet distance between the images' features and the real digits'."""
        f = self.features(images)
        return frechet_distance(f.mean(0), np.cov(f, rowvar=False), self.mu, self.cov)


def frechet_distance(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
    """``||mu1 - mu2||^2 + Tr(C1 + C2 - 2 (C1 C2)^(1/2))``.

    A 1e-6 ridge on both covariances keeps the square root defined when a small
    sample makes a covariance singular; it enters every term, so equal inputs still give 0.
    """
    from scipy import linalg

    ridge = 1e-6 * np.eye(cov1.shape[0])
    c1, c2 = cov1 + ridge, cov2 + ridge
    covmean = linalg.sqrtm(c1 @ c2)
    if np.iscomplexobj(covmean):
        covmean = covmean.real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(c1) + np.trace(c2) - 2 * np.trace(covmean))


@lru_cache(maxsize=1)
def digit_features() -> DigitFeatures:
    """The shared feature extractor (trained once per process)."""
    return DigitFeatures()
