"""Embedded models: the exact GMM denoiser and the shipped digits DDPM."""

import pytest
import torch

import hasten
from hasten.metrics import DigitFeatures, digit_features, frechet_distance, psnr, rmse
from hasten.models.digits import WEIGHTS_PATH, load_digit_images
from hasten.models.gmm import GaussianMixture


def gmm_log_density(model, x, alpha, sigma):
    var = alpha**2 * model.stds**2 + sigma**2
    d = x.shape[-1]
    diff = x[:, None, :] - alpha * model.means[None]
    logp = model.weights.log() - 0.5 * d * torch.log(2 * torch.pi * var) - 0.5 * diff.pow(2).sum(-1) / var
    return torch.logsumexp(logp, dim=1)


@pytest.mark.parametrize("alpha,sigma", [(0.99, 0.14), (0.7, 0.71), (0.05, 0.998)])
def test_gmm_eps_is_minus_sigma_times_the_score(alpha, sigma):
    model = GaussianMixture(dim=5)
    x = torch.randn(6, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0)).requires_grad_()
    score = torch.autograd.grad(gmm_log_density(model, x, alpha, sigma).sum(), x)[0]
    full = dict(size=(6,), dtype=torch.float64)
    _, eps = model.posterior(x.detach(), torch.full(fill_value=alpha, **full), torch.full(fill_value=sigma, **full))
    assert torch.allclose(eps, -sigma * score, atol=1e-8)


def test_gmm_parameterisations_agree():
    grid = GaussianMixture(dim=4).grid(10)
    x = torch.randn(3, 4)
    idx = torch.tensor([2, 5, 8])
    a, s = grid.alpha[idx].float()[:, None], grid.sigma[idx].float()[:, None]
    outs = {}
    for pred in ("epsilon", "v_prediction", "sample"):
        model = GaussianMixture(dim=4, prediction=pred)
        g = model.grid(10)
        outs[pred] = model.denoiser(g)(x, idx)
    x0_from_eps = (x - s * outs["epsilon"]) / a
    assert torch.allclose(x0_from_eps, outs["sample"], atol=1e-4)
    assert torch.allclose(a * outs["epsilon"] - s * outs["sample"], outs["v_prediction"], atol=1e-5)


@pytest.mark.parametrize("kind", ["vp", "flow"])
def test_gmm_sampling_reaches_the_data_distribution(kind):
    """Many-step sampling with the exact denoiser lands on the mixture (checks grid + step + denoiser)."""
    model = GaussianMixture(dim=2, components=3, kind=kind, seed=3)
    x = hasten.sample(model, "sequential", steps=200, batch=2000, seed=0).x
    data = model.sample_data(20000, torch.Generator().manual_seed(1))
    assert torch.allclose(x.mean(0), data.mean(0), atol=0.12)
    assert torch.allclose(x.std(0), data.std(0), rtol=0.1)


def test_digits_weights_ship_with_the_package():
    assert WEIGHTS_PATH.is_file()
    assert WEIGHTS_PATH.stat().st_size < 5 * 2**20


@pytest.fixture(scope="module")
def digits():
    return hasten.load_model("digits")


def test_digits_sequential_and_chords(digits):
    seq = hasten.sample(digits, "sequential", steps=12, batch=3, seed=0)
    images = digits.decode(seq.x)
    assert images.shape == (3, 1, 16, 16) and images.min() >= 0 and images.max() <= 1
    res = hasten.sample(digits, "chords", cores=4, steps=12, batch=3, seed=0, stop="none")
    assert (res.x - seq.x).abs().max() <= 1e-5  # the real UNet in a batch of several requests
    first = hasten.sample(digits, "chords", cores=4, steps=12, batch=3, seed=0, stop="first")
    assert first.rounds < 12 and rmse(first.x, seq.x) > 0


def test_digits_samples_look_like_digits(digits):
    """Samples from the shipped weights score like real digits and unlike noise."""
    feats = digit_features()
    x = hasten.sample(digits, "sequential", steps=25, batch=64, seed=0).x
    images = digits.decode(x)
    assert 0.3 < x.std() < 1.0 and x.abs().max() < 2  # a sane DDIM run, not a blown-up one
    real = (load_digit_images() + 1) / 2
    picks = torch.randperm(real.shape[0], generator=torch.Generator().manual_seed(0))[:64]
    fd_real = feats.frechet(real[picks])
    fd_samples = feats.frechet(images)
    fd_noise = feats.frechet(torch.rand(64, 1, 16, 16))
    assert fd_samples < 2 * fd_real and fd_noise > 20 * fd_samples
    classes = set(feats.clf.predict(feats._to_8x8(images)).tolist())
    assert len(classes) >= 8  # diverse: most digits appear in 64 samples


def test_frechet_distance_basics():
    mu, cov = torch.zeros(3).numpy(), torch.eye(3).numpy()
    assert frechet_distance(mu, cov, mu, cov) == pytest.approx(0, abs=1e-9)
    assert frechet_distance(mu + 2, cov, mu, cov) == pytest.approx(12)
    assert isinstance(digit_features(), DigitFeatures)


def test_rmse_and_psnr():
    a = torch.zeros(2, 4)
    b = torch.full((2, 4), 0.1)
    assert rmse(a, b) == pytest.approx(0.1)
    assert psnr(b, a, data_range=1.0) == pytest.approx(20.0)
    assert psnr(a, a, 1.0) == float("inf")
