"""hasten: training-free accelerators for diffusion sampling, in one engine.

The names below load on first use (PEP 562), so importing one layer (an
executor, a step) does not import every method, the integrations or diffusers.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

#: public name -> the module that defines it
_EXPORTS = {
    "initial_noise": "hasten.noise", "sample": "hasten.api", "stream": "hasten.api",
    "accelerate": "hasten.accelerated", "AcceleratedPipeline": "hasten.accelerated",
    "HitInfo": "hasten.engine", "HitStream": "hasten.engine", "Result": "hasten.engine",
    "iterate": "hasten.engine", "run": "hasten.engine",
    "HastenError": "hasten.errors", "NonFiniteOutputError": "hasten.errors",
    "BatchedExecutor": "hasten.executors.batched", "init_distributed": "hasten.executors.distributed",
    "Grid": "hasten.grid",
    "Chords": "hasten.methods", "Sequential": "hasten.methods", "make_method": "hasten.methods",
    "continuous_init": "hasten.methods.chords_init", "resolve_init": "hasten.methods.chords_init",
    "Eval": "hasten.rounds", "Hit": "hasten.rounds",
    "load_model": "hasten.opening", "Session": "hasten.session", "RunSpec": "hasten.spec", "Sampling": "hasten.spec", "Placement": "hasten.spec",
    "DDIMStep": "hasten.steps", "EulerStep": "hasten.steps", "make_step": "hasten.steps",
    "Stop": "hasten.stopping",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'hasten' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
