"""hasten: training-free accelerators for diffusion sampling, in one engine."""

from hasten.api import initial_noise, sample, stream
from hasten.integrations import accelerate
from hasten.engine import HitInfo, HitStream, Result, iterate, run
from hasten.errors import HastenError, NonFiniteOutputError
from hasten.executors.batched import BatchedExecutor
from hasten.executors.distributed import init_distributed
from hasten.grid import Grid
from hasten.methods import Chords, Eval, Hit, Sequential, make_method
from hasten.methods.chords_init import continuous_init, resolve_init
from hasten.models import load_model
from hasten.steps import DDIMStep, EulerStep, make_step
from hasten.stopping import Stop

__version__ = "0.1.0"

__all__ = [
    "BatchedExecutor", "Chords", "accelerate", "DDIMStep", "Eval", "EulerStep", "Grid", "HastenError", "Hit", "HitInfo",
    "HitStream", "NonFiniteOutputError", "Result", "Sequential", "Stop", "continuous_init", "init_distributed",
    "initial_noise",
    "iterate", "load_model", "make_method", "make_step", "resolve_init", "run", "sample", "stream",
]
