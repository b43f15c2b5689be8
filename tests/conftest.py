import pytest
import torch

from hasten.noise import initial_noise
from hasten.executors.batched import BatchedExecutor
from hasten.models.gmm import GaussianMixture
from hasten.steps import make_step


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


class Problem:
    """An exact GMM problem: grid, step, denoiser, executor and initial noise."""

    def __init__(self, kind="vp", prediction=None, steps=50, batch=4, seed=0, dim=8):
        self.model = GaussianMixture(dim=dim, kind=kind, prediction=prediction)
        self.grid = self.model.grid(steps)
        self.step = make_step(self.grid)
        self.denoiser = self.model.denoiser(self.grid)
        self.executor = BatchedExecutor(self.denoiser)
        self.x = initial_noise(self.model, batch, seed)


@pytest.fixture
def problem():
    return Problem
