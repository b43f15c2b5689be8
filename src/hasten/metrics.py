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


#: the fewest pixels a side needs for MS-SSIM's five scales with an 11-pixel window ((11 - 1) * 2^4)
MS_SSIM_MIN_SIDE = 161


def _torchmetrics_image():
    try:
        from torchmetrics.functional import image
    except ImportError as err:
        from hasten.errors import HastenError

        raise HastenError(f"SSIM and MS-SSIM need torchmetrics ({err.name} is missing): pip install "
                          "'hasten[bench]'") from None
    return image


def _images(images: torch.Tensor, ref: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Video frames or images as (B, C, H, W) float32 on the CPU, the shapes checked alike."""
    if images.shape != ref.shape or images.ndim != 4:
        from hasten.errors import HastenError

        raise HastenError(f"SSIM compares images (B, C, H, W) of one shape, got {tuple(images.shape)} and "
                          f"{tuple(ref.shape)}")
    return images.detach().float().cpu(), ref.detach().float().cpu()


def ssim(images: torch.Tensor, ref: torch.Tensor, data_range: float = 1.0) -> float:
    """Mean structural similarity (Wang et al. 2004) of images (B, C, H, W) against ``ref``, over the batch.

    torchmetrics' SSIM with a Gaussian window (sigma 1.5) of 11 pixels, the
    usual choice, or 7 on images under 32 pixels a side (the 16x16 digits),
    where 11 would leave too few window positions.
    """
    x, y = _images(images, ref)
    window = 11 if min(x.shape[-2:]) >= 32 else 7
    return float(_torchmetrics_image().structural_similarity_index_measure(
        x, y, data_range=data_range, kernel_size=window))


def ms_ssim(images: torch.Tensor, ref: torch.Tensor, data_range: float = 1.0) -> float | None:
    """Multi-scale SSIM (Wang et al. 2003, five scales) by torchmetrics; None where a side is under 161 pixels."""
    x, y = _images(images, ref)
    if min(x.shape[-2:]) < MS_SSIM_MIN_SIDE:
        return None
    return float(_torchmetrics_image().multiscale_structural_similarity_index_measure(x, y, data_range=data_range))


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
