"""Denoisers: ``denoise(x, index) -> output`` for a batch of (latent, grid index) pairs.

A denoiser is bound to a grid: it maps each grid index to whatever the network
takes as time (a training timestep, a sigma, ...). Conditioning and guidance
belong here, once, for every method. Latents and outputs are float32 on the
denoiser's ``device``; the network itself may run in another dtype (bf16).

Also here, because they serve every denoiser the same way: :func:`compile_network`
(``torch.compile`` of the network, counting the graphs it compiles) and
:class:`EmulatedDevice` (a stated device latency per forward, for benchmarks of
many devices on one CPU).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Protocol

import torch

from hasten.errors import HastenError
from hasten.grid import Grid


class Denoiser(Protocol):
    """Callable ``(x: (B, ...), index: (B,) long) -> output (B, ...)``, float32 in and out.

    Optional attributes the executors read: ``device`` (where latents should
    live; default cpu), ``needs_sample_ids`` (called as ``(x, index, sample)``
    with each row's sample number, for per-sample conditioning) and
    ``rows_per_input`` (network rows per input row, 2 with batched CFG).
    """

    def __call__(self, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor: ...


def call_denoiser(denoiser, x: torch.Tensor, index: torch.Tensor, samples: torch.Tensor | None = None) -> torch.Tensor:
    """Call a denoiser by the protocol's convention: ``(x, index)``, plus ``samples`` when it needs sample ids."""
    return denoiser(x, index) if samples is None else denoiser(x, index, samples)


def needs_sample_ids(denoiser) -> bool:
    """Whether the denoiser conditions per sample and wants each row's sample number."""
    return bool(getattr(denoiser, "needs_sample_ids", False))


def network_rows(denoiser) -> int:
    """Network rows per input row: 2 with batched classifier-free guidance, else 1."""
    return int(getattr(denoiser, "rows_per_input", 1))


def denoiser_device(denoiser) -> torch.device:
    """The device a denoiser wants its latents on (cpu when it does not say)."""
    return torch.device(getattr(denoiser, "device", None) or "cpu")


def grid_times(grid: Grid, device: torch.device) -> torch.Tensor:
    """The grid's model-time inputs on ``device``, copied once (float32 where float64 is unsupported)."""
    times = grid.timesteps
    return times.float().to(device) if device.type == "mps" else times.to(device)


class TimestepDenoiser:
    """Wrap ``net(x, t) -> output`` that takes the grid's timesteps as its time input.

    ``net`` may return a tensor or an object with ``.sample`` (diffusers models).
    The input is cast to the network's dtype and device; the output back to
    float32 on the input's device. The times live on the device (no host copy per call).
    """

    def __init__(self, net: Callable, grid: Grid, dtype: torch.dtype | None = None, device: torch.device | str | None = None):
        self.net = net
        self.grid = grid
        params = next(iter(net.parameters()), None) if isinstance(net, torch.nn.Module) else None
        self.dtype = dtype or (params.dtype if params is not None else torch.float32)
        self.device = torch.device(device) if device is not None else (params.device if params is not None else torch.device("cpu"))
        self.times = grid_times(grid, self.device)

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        t = self.times[index.to(self.device)]
        out = self.net(x.to(self.device, self.dtype), t)
        out = getattr(out, "sample", out)
        return out.to(x.device, torch.float32)


@dataclass
class CompileStats:
    """How many graphs ``torch.compile`` built for a denoiser (1 when every forward has one shape)."""

    backend: str
    graphs: int = 0


def compile_network(network, backend: str = "inductor") -> CompileStats:
    """``torch.compile`` a network module's forward in place, once; count the graphs it compiles.

    Only the network is compiled (conditioning, guidance and float32 steps
    stay eager), and it stays compiled for later runs and pipeline calls.
    ``dynamic=False``: every new row count compiles a new graph, which
    :class:`CompileStats` makes visible; the executors pad forwards to one
    fixed size so that one graph serves a run. Calling it again on the same
    module returns the same stats.
    """
    from torch._dynamo import lookup_backend

    if not isinstance(network, torch.nn.Module):
        raise HastenError("compile needs a network (torch.nn.Module): the embedded digits model or a diffusers "
                          "pipeline; the analytic gmm models have none")
    stats = getattr(network, "_hasten_compile_stats", None)
    if stats is not None:
        if stats.backend != backend:
            raise HastenError(f"this network is already compiled with backend {stats.backend!r}, not {backend!r}")
        return stats
    if hasattr(network, "_hf_hook"):
        raise HastenError("compile and CPU offload (enable_model_cpu_offload / enable_sequential_cpu_offload) do "
                          "not mix: offload hooks move weights inside the forward; use one or the other")
    try:
        compiler = lookup_backend(backend)
    except Exception as err:  # noqa: BLE001 - torch names its own error types per version
        raise HastenError(f"unknown torch.compile backend {backend!r}: {err}") from None
    stats = CompileStats(backend)

    def counting(graph, example_inputs):
        stats.graphs += 1
        return compiler(graph, example_inputs)

    network.forward = torch.compile(network.forward, backend=counting, dynamic=False)
    network._hasten_compile_stats = stats
    return stats


class EmulatedDevice:
    """A denoiser whose every forward takes a stated device latency, for multi-device benchmarks on a CPU.

    A forward of R network rows takes ``latency_s * ceil(R / capacity)``: the
    wrapped (small, real) model computes the numbers, then the call sleeps for
    the rest of that time (a sleep uses no CPU, so many processes on few cores
    behave like many devices). ``capacity`` is how many rows one device runs in
    one latency (a saturated device: ``capacity=1``). A forward whose real
    compute is slower than its emulated latency keeps its real time; the
    ``overruns`` counter says how often that happened.
    """

    def __init__(self, inner, latency_s: float, capacity: int = 1):
        if not (isinstance(latency_s, (int, float)) and math.isfinite(latency_s) and latency_s > 0):
            raise HastenError(f"emulated latency must be a number of seconds > 0, got {latency_s!r}")
        if not isinstance(capacity, int) or capacity < 1:
            raise HastenError(f"emulated device capacity must be an integer >= 1 rows, got {capacity!r}")
        self.inner, self.latency_s, self.capacity = inner, float(latency_s), capacity
        self.device = denoiser_device(inner)
        self.needs_sample_ids = getattr(inner, "needs_sample_ids", False)
        self.rows_per_input = getattr(inner, "rows_per_input", 1)
        self.forwards = self.overruns = 0
        self.compute_s = 0.0  # real compute inside the emulated forwards

    def __call__(self, x: torch.Tensor, *args) -> torch.Tensor:
        start = time.perf_counter()
        out = self.inner(x, *args)
        spent = time.perf_counter() - start
        budget = self.latency_s * math.ceil(x.shape[0] * self.rows_per_input / self.capacity)
        self.forwards += 1
        self.compute_s += spent
        if spent < budget:
            time.sleep(budget - spent)
        else:
            self.overruns += 1
        return out
