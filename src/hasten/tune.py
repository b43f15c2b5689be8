"""``hasten tune``: pick the fastest configuration that meets a quality target on D devices.

Steps, all through the one engine (:func:`hasten.assembly.prepare` and
:func:`hasten.engine.run`; tune never calls the model or counts cost itself):

1. **Reference.** Sequential sampling of a pilot batch on the full grid; quality
   of every candidate is PSNR / RMSE against it (same seed, :mod:`hasten.metrics`).
2. **Candidates** (:func:`candidates`): sequential on fewer steps, sequential +
   AB-Cache at a few intervals, CHORDS at a few core counts (alone and with a
   cache), ParaDiGMS and ParaSolver-Turbo at a few widths and tolerances. They
   form *chains* ordered from most to least accurate; once a member fails the
   target, the rest of its chain is skipped (pruning).
3. **Latency curve** (:func:`measure_latency`): the executor's forward time
   against rows per forward, 1, 2, 4, ... up to the most rows one device needs,
   median of a few repeats after a warm-up, under the thread count the
   distributed workers will use (:func:`worker_threads`; the candidates run
   under it too), then shifted by one constant per forward so that it
   explains the model time the candidate runs measured (:func:`calibrate`:
   forwards inside a run are slower than in a tight loop).
4. **Prediction** (:func:`predict_wall`), for each run candidate on D devices::

       wall(D) = sum over rounds r with model work of  latency(ceil(rows_r / D))
               + comm(ceil(rows_r / D))        (D > 1: the all-gather, measured)
               + bookkeeping                   (measured: the run's wall time here
                                                minus its time inside the model)

   ``rows_r`` is the engine's ``Result.round_rows`` (latent rows that reached the
   model in round r); ``latency`` and ``comm`` interpolate measured curves
   linearly. Every rank of the distributed executor runs the same bookkeeping
   at the same time, so it does not shrink with D.
5. **Ranking**: candidates meeting the target by predicted wall time, then the
   others; the winner is saved as a config file (:func:`save_config`) that
   ``hasten sample --config FILE`` and ``hasten.accelerate(pipe, config=FILE)`` read.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch

from hasten.errors import HastenError

TARGET_FORMS = "psnr:DB (PSNR against sequential sampling at least DB dB, e.g. psnr:35) or rmse:X (latent RMSE at " \
               "most X, e.g. rmse:0.02)"
CONFIG_VERSION = 1
#: keys of a config file (``tune`` holds what the tuner measured, for people; it is not read back)
CONFIG_KEYS = ("hasten_config", "method", "steps", "solver", "cores", "options", "cache", "stop", "tune")


# ----------------------------------------------------------------------------- target


@dataclass(frozen=True)
class Target:
    """A quality target: ``psnr:DB`` (at least DB dB) or ``rmse:X`` (at most X)."""

    metric: str
    value: float

    @classmethod
    def parse(cls, text: str) -> "Target":
        """Parse ``psnr:NUM`` / ``rmse:NUM``; a bad target raises a HastenError naming ``--target``."""
        metric, sep, value = str(text).strip().partition(":")
        metric = metric.strip().lower()
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if not sep or metric not in ("psnr", "rmse") or not math.isfinite(number) or (metric == "rmse" and number <= 0):
            raise HastenError(f"--target {text!r} is not a target; use {TARGET_FORMS}")
        return cls(metric, number)

    def met(self, psnr: float, rmse: float) -> bool:
        """Whether a run with this quality meets the target."""
        return psnr >= self.value if self.metric == "psnr" else rmse <= self.value

    def __str__(self) -> str:
        return f"{self.metric}:{self.value:g}"


# ----------------------------------------------------------------------------- curves and the predictor


@dataclass
class Curve:
    """Seconds against rows, measured at a few sizes, interpolated linearly.

    Beyond the largest size the last segment is extended, below the smallest
    the smallest size's time holds; 0 rows cost 0. ``offset`` is added to every
    forward (the in-situ calibration of :func:`calibrate`).
    """

    sizes: list[int]
    seconds: list[float]
    threads: int | None = None
    offset: float = 0.0

    def __call__(self, rows: float) -> float:
        if rows <= 0:
            return 0.0
        xs, ys = self.sizes, [v + self.offset for v in self.seconds]
        if len(xs) == 1 or rows <= xs[0]:  # one point: a constant
            return ys[0]
        for i in range(1, len(xs)):
            if rows <= xs[i] or i == len(xs) - 1:
                a, b = xs[i - 1], xs[i]
                return max(0.0, ys[i - 1] + (ys[i] - ys[i - 1]) * (rows - a) / (b - a))
        raise AssertionError("unreachable")

    def to_dict(self) -> dict:
        return {"rows": self.sizes, "seconds": self.seconds, "threads": self.threads, "offset": self.offset}


def batch_sizes(max_rows: int) -> list[int]:
    """1, 2, 4, ... below ``max_rows``, then ``max_rows`` itself."""
    sizes, b = [], 1
    while b < max_rows:
        sizes.append(b)
        b *= 2
    return sizes + [max(1, max_rows)]


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``n`` intra-op threads (None: unchanged)."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def worker_threads(devices: int) -> int:
    """Threads each of ``devices`` CPU ranks runs with under ``torchrun ... hasten sample --executor distributed``.

    torchrun sets ``OMP_NUM_THREADS=1`` for its workers unless it is set already,
    and the CLI divides the threads by the ranks on the node; one device keeps
    this process's own count.
    """
    if devices <= 1:
        return torch.get_num_threads()
    omp = os.environ.get("OMP_NUM_THREADS")
    threads = int(omp) if omp and omp.isdigit() else 1
    return max(1, threads // devices)


def measure_latency(executor, x: torch.Tensor, index: int, sizes: Sequence[int], repeats: int = 5,
                    threads: int | None = None) -> Curve:
    """Median seconds of one round of ``b`` rows through ``executor``, for each ``b`` in ``sizes``.

    ``x`` holds at least one latent row; rows are copies of it at grid point
    ``index``. One untimed warm-up per size comes first; then the sizes are
    timed in turn, ``repeats`` times over.
    """
    from hasten.devices import synchronize
    from hasten.rounds import Eval

    times: dict[int, list[float]] = {b: [] for b in sizes}
    with torch_threads(threads):
        inputs = {b: x[:1].expand(b, *x.shape[1:]).contiguous() for b in sizes}
        for b in sizes:
            executor.evaluate([Eval(inputs[b], index)])
        for _ in range(repeats):  # sizes interleaved: a burst of load elsewhere spreads over them
            for b in sizes:
                synchronize(x.device)
                t0 = time.perf_counter()
                executor.evaluate([Eval(inputs[b], index)])
                synchronize(x.device)
                times[b].append(time.perf_counter() - t0)
        used = torch.get_num_threads()
    return Curve(list(sizes), [statistics.median(times[b]) for b in sizes], used)


@contextmanager
def _gloo_rank(rank: int, world: int, port: int, threads: int, timeout_s: float) -> Iterator[None]:
    """One spawned gloo rank on 127.0.0.1 with ``threads`` torch threads; all ranks leave together."""
    import datetime

    import torch.distributed as dist

    torch.set_num_threads(threads)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=timeout_s))
    try:
        yield
        dist.barrier()  # leave together: gloo aborts a rank whose peer tears down mid-connection
    finally:
        dist.destroy_process_group()


def _spawn_gloo(worker, devices: int, args: tuple) -> list[float]:
    """Run ``worker(rank, devices, port, *args, out)`` in ``devices`` spawned processes; rank 0's JSON result."""
    import socket
    import tempfile

    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "result.json")
        mp.start_processes(worker, args=(devices, port, *args, out), nprocs=devices, start_method="spawn", join=True)
        return json.loads(Path(out).read_text())


def _comm_worker(rank: int, world: int, port: int, shape: tuple, sizes: list[int], repeats: int, out: str) -> None:
    """One rank of :func:`measure_comm` (module level: spawned processes import it)."""
    from hasten.executors.distributed import _all_gather_single

    with _gloo_rank(rank, world, port, 1, 60):
        seconds = _time_gather(_all_gather_single, world, shape, sizes, repeats)
        if rank == 0:
            Path(out).write_text(json.dumps(seconds))


def _time_gather(gather, world: int, shape: tuple, sizes: list[int], repeats: int,
                 device: torch.device | str = "cpu") -> list[float]:
    import torch.distributed as dist

    from hasten.devices import synchronize

    seconds = []
    for b in sizes:
        times = []
        for k in range(repeats + 1):
            dist.barrier()
            synchronize(torch.device(device))
            t0 = time.perf_counter()
            gathered = torch.empty((world * b, *shape), device=device)
            mine = gathered.new_zeros((b, *shape))
            gather(gathered, mine)
            synchronize(torch.device(device))
            if k:  # the first is a warm-up
                times.append(time.perf_counter() - t0)
        seconds.append(statistics.median(times))
    return seconds


def measure_comm(devices: int, shape: tuple, sizes: Sequence[int], repeats: int = 10,
                 device: torch.device | str = "cpu") -> Curve:
    """Median seconds of the distributed executor's all-gather of ``b`` rows per rank, for ``b`` in ``sizes``.

    Inside a process group of ``devices`` ranks it is measured there; otherwise
    (CPU only) ``devices`` gloo processes are spawned on 127.0.0.1 for the
    measurement, one thread each.
    """
    import torch.distributed as dist

    sizes = list(sizes)
    if dist.is_available() and dist.is_initialized():
        if dist.get_world_size() != devices:
            raise HastenError(f"--devices {devices} differs from the {dist.get_world_size()} ranks of this launch")
        from hasten.executors.distributed import _all_gather_single

        return Curve(sizes, _time_gather(_all_gather_single, devices, shape, sizes, repeats, device))
    if torch.device(device).type != "cpu":
        raise HastenError("communication on several GPUs can only be measured inside a launch with that many ranks "
                          "(torchrun); outside one, give --comm-ms")
    return Curve(sizes, _spawn_gloo(_comm_worker, devices, (tuple(shape), sizes, repeats)), 1)


def calibrate(latency: Curve, runs: Sequence[tuple[Sequence[int], float]]) -> float:
    """Set ``latency.offset`` so the curve explains the model time the runs measured; returns it.

    ``runs``: (rows per round, seconds inside the model) of runs on one device.
    A forward inside a run is slower than the same forward repeated in a tight
    loop (the bookkeeping between rounds evicts caches: a refill, about the
    same for every forward; on digits, 1 thread, a few ms), so the curve gives
    the shape (time against rows) and the runs one constant per forward: the
    mean gap between the model time they measured and the curve. It never
    lowers a forward below half the curve's smallest time.
    """
    latency.offset = 0.0
    forwards = sum(1 for rows, _ in runs for r in rows if r)
    curve = sum(latency(r) for rows, _ in runs for r in rows if r)
    measured = sum(seconds for _, seconds in runs)
    if forwards and measured > 0:
        latency.offset = max((measured - curve) / forwards, -0.5 * min(latency.seconds))
    return latency.offset


def _round_worker(rank: int, world: int, port: int, spec: str, steps: int, sizes: list[int], repeats: int,
                  threads: int, out: str) -> None:
    """One rank of :func:`measure_rounds` (module level: spawned processes import it)."""
    from hasten.executors.distributed import DistributedExecutor
    from hasten.models import load_model

    with _gloo_rank(rank, world, port, threads, 120):
        model = load_model(spec)
        executor = DistributedExecutor(model.denoiser(model.grid(steps)))
        curve = _time_rounds(executor, model, world, sizes, repeats, steps // 2)
        if rank == 0:
            Path(out).write_text(json.dumps(curve))


def _time_rounds(executor, model, world: int, sizes: list[int], repeats: int, index: int) -> list[float]:
    """Median seconds of a distributed round of ``world x b`` rows (b rows per rank), for each b in ``sizes``."""
    import torch.distributed as dist

    from hasten.assembly import initial_noise
    from hasten.devices import synchronize
    from hasten.rounds import Eval

    x = initial_noise(model, 1, 0).to(executor.device)
    inputs = {b: x.expand(world * b, *x.shape[1:]).contiguous() for b in sizes}
    times: dict[int, list[float]] = {b: [] for b in sizes}
    for b in sizes:
        executor.evaluate([Eval(inputs[b], index)])  # warm-up
    for _ in range(repeats):
        for b in sizes:
            dist.barrier()
            synchronize(executor.device)
            t0 = time.perf_counter()
            executor.evaluate([Eval(inputs[b], index)])
            synchronize(executor.device)
            times[b].append(time.perf_counter() - t0)
    return [statistics.median(times[b]) for b in sizes]


def measure_rounds(spec: str, devices: int, steps: int, sizes: Sequence[int], repeats: int = 5,
                   threads: int = 1, device: torch.device | str = "cpu") -> Curve:
    """Seconds of a whole distributed round (each rank's forward of b rows + the all-gather) against b.

    Spawns ``devices`` gloo processes on 127.0.0.1 that load the embedded model
    ``spec`` and time :class:`~hasten.executors.distributed.DistributedExecutor`
    rounds, as ``hasten sample --executor distributed`` runs them: the ranks
    share this machine's cores and whatever else runs on it, and the gather
    waits for the slowest rank, so contention and skew are in the measurement.
    Inside a launch of ``devices`` ranks it is measured there with this
    process's model instead (see :func:`tune`).
    """
    if torch.device(device).type != "cpu":
        raise HastenError("distributed rounds on several GPUs are measured inside a launch with that many ranks")
    seconds = _spawn_gloo(_round_worker, devices, (spec, steps, list(sizes), repeats, threads))
    return Curve(list(sizes), seconds, threads)


def predict_wall(round_rows: Sequence[int], latency: Curve, devices: int = 1, bookkeeping_s: float = 0.0,
                 comm: Curve | None = None) -> float:
    """Predicted wall seconds of a run on ``devices`` devices (model in the module docstring).

    ``round_rows``: latent rows that reached the model in each round
    (``Result.round_rows``); ``bookkeeping_s``: the run's time outside the model.
    """
    if devices < 1:
        raise HastenError(f"devices must be >= 1, got {devices}")
    total = bookkeeping_s
    for rows in round_rows:
        if rows:
            share = math.ceil(rows / devices)
            total += latency(share) + (comm(share) if comm is not None and devices > 1 else 0.0)
    return total


# ----------------------------------------------------------------------------- candidates


@dataclass
class Candidate:
    """One configuration to try; ``chain`` names its pruning chain (most accurate member first)."""

    method: str
    steps: int
    chain: str
    cores: int | None = None
    options: dict = field(default_factory=dict)
    cache: str | None = None
    stop: str | None = None

    @property
    def label(self) -> str:
        parts = [self.method]
        if self.cores is not None:
            parts.append(f"K={self.cores}")
        parts += [f"{k}={v}" for k, v in self.options.items()]
        parts.append(f"N={self.steps}")
        if self.cache:
            parts.append(f"+ {self.cache}")
        return " ".join(parts)

    def config(self, solver: str | None) -> dict:
        """This candidate as a config file's content (see :func:`load_config`)."""
        return {"hasten_config": CONFIG_VERSION, "method": self.method, "steps": self.steps, "solver": solver,
                "cores": self.cores, "options": dict(self.options), "cache": self.cache, "stop": self.stop}


def _cache_supports(key: str) -> bool:
    from hasten.caches import parse_cache_spec

    try:
        parse_cache_spec(f"abcache:2:{key}")
        return True
    except HastenError:
        return False


def candidates(steps: int, solver: str | None = None, chords_cores: Sequence[int] = (2, 3, 4, 6, 8),
               widths: Sequence[int] = (4, 8), intervals: Sequence[int] = (2, 3, 4),
               methods: Sequence[str] | None = None) -> list[Candidate]:
    """The candidate list (a few dozen), in chains ordered from most to least accurate.

    ``methods`` restricts the families: ``sequential`` (fewer steps), ``abcache``
    (sequential + AB-Cache), ``chords``, ``chords+abcache``, ``paradigms``,
    ``parasolver-turbo``. Tolerances are the method's default x 1/3, 1, 3.
    Chains: fewer steps (descending), cache intervals (ascending), each
    method-and-width's tolerances (ascending). CHORDS core counts are not a
    chain: the fastest core's quality is not monotone in K (on digits it rises).
    """
    families = ("sequential", "abcache", "chords", "chords+abcache", "paradigms", "parasolver-turbo")
    chosen = families if methods is None else tuple(methods)
    unknown = [m for m in chosen if m not in families]
    if unknown:
        raise HastenError(f"--methods: unknown {', '.join(unknown)}; valid: {', '.join(families)}")
    out: list[Candidate] = []
    if "sequential" in chosen:
        for m in sorted({round(steps * f) for f in (0.75, 0.5, 0.25) if 2 <= round(steps * f) < steps}, reverse=True):
            out.append(Candidate("sequential", m, "sequential-steps"))
    cache_specs = [f"abcache:2:interval={t}" for t in intervals if t < steps // 2]
    if "abcache" in chosen:
        out += [Candidate("sequential", steps, "abcache", cache=c) for c in cache_specs]
        if _cache_supports("tol=0.1"):  # the adaptive cache, where this build has it
            out += [Candidate("sequential", steps, "abcache-tol", cache=f"abcache:2:tol={t}") for t in (0.02, 0.05, 0.1)]
    valid_cores = [k for k in chords_cores if 2 <= k < steps]
    if "chords" in chosen:
        out += [Candidate("chords", steps, f"chords-{k}", cores=k, stop="first") for k in valid_cores]
    if "chords+abcache" in chosen and cache_specs:
        out += [Candidate("chords", steps, f"chords-{k}+abcache", cores=k, cache=cache_specs[0], stop="first")
                for k in valid_cores]
    for name, default in (("paradigms", 0.1), ("parasolver-turbo", 0.5 if solver in ("ddpm", "euler-stochastic") else 0.03)):
        if name not in chosen:
            continue
        for w in widths:
            if not 2 <= w <= steps:
                continue
            for scale in (1 / 3, 1, 3):
                tol = float(f"{default * scale:.3g}")
                out.append(Candidate(name, steps, f"{name}-{w}", cores=w, options={"tol": tol}))
    return out


# ----------------------------------------------------------------------------- config files


def load_config(source: "str | os.PathLike | dict") -> dict:
    """A config (file path or dict), validated; raises a HastenError naming the bad key.

    Keys: ``method`` (required), ``steps``, ``solver``, ``cores``, ``options``
    (the method's own: ``tol``, ``window``, ``rho``, ``init``, ...), ``cache`` (a
    spec such as ``abcache:2:interval=3``, or null), ``stop``; ``hasten_config``
    (format version) and ``tune`` (what the tuner measured) are informative.
    """
    from hasten.caches import parse_cache_spec
    from hasten.assembly import build_method
    from hasten.methods import METHODS
    from hasten.steps import SOLVERS
    from hasten.stopping import Stop

    where = "config"
    if isinstance(source, dict):
        data = dict(source)
    else:
        where = f"config {str(source)!r}"
        try:
            data = json.loads(Path(source).read_text())
        except FileNotFoundError:
            raise HastenError(f"{where}: no such file") from None
        except (OSError, json.JSONDecodeError) as err:
            raise HastenError(f"{where} is not a JSON file: {err}") from None
    if not isinstance(data, dict):
        raise HastenError(f"{where} must hold a JSON object with keys {', '.join(CONFIG_KEYS)}")
    unknown = [k for k in data if k not in CONFIG_KEYS]
    if unknown:
        raise HastenError(f"{where}: unknown key {unknown[0]!r}; valid keys: {', '.join(CONFIG_KEYS)}")
    if data.get("method") not in METHODS:
        raise HastenError(f"{where}: key 'method' must be one of {', '.join(METHODS)}, got {data.get('method')!r}")
    for key in ("steps", "cores"):
        value = data.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise HastenError(f"{where}: key {key!r} must be an integer >= 1 or null, got {value!r}")
    if data.get("solver") is not None and data["solver"] not in SOLVERS:
        raise HastenError(f"{where}: key 'solver' must be one of {', '.join(SOLVERS)} or null, got {data['solver']!r}")
    options = data.setdefault("options", {}) or {}
    if not isinstance(options, dict):
        raise HastenError(f"{where}: key 'options' must be an object, got {options!r}")
    data["options"] = options
    try:
        build_method(data["method"], data.get("cores"), options)
    except (HastenError, TypeError) as err:
        raise HastenError(f"{where}: key 'options' (or 'cores'): {err}") from None
    if data.get("cache") is not None:
        try:
            parse_cache_spec(data["cache"])
        except HastenError as err:
            raise HastenError(f"{where}: key 'cache': {err}") from None
    if data.get("stop") is not None:
        try:
            Stop.parse(data["stop"])
        except HastenError as err:
            raise HastenError(f"{where}: key 'stop': {err}") from None
    for key in ("steps", "solver", "cores", "cache", "stop"):
        data.setdefault(key, None)
    return data


def merge_config(source: "str | os.PathLike | dict", method=None, cores: int | None = None,
                 options: dict | None = None, **given) -> dict:
    """A config file under what the caller gave (``hasten sample --config``, ``accelerate(config=)``).

    Everything given (not None) wins; ``given`` names the other keys to fill (steps, solver,
    cache, stop). A ``method`` other than the file's (another name, or a method object) drops the
    file's cores and options.
    """
    config = load_config(source)
    same = method is None or (isinstance(method, str) and method.split(":")[0] == config["method"])
    merged = {key: value if value is not None else config[key] for key, value in given.items()}
    merged["method"] = method if method is not None else config["method"]
    merged["cores"] = cores if cores is not None or not same else config["cores"]
    given_options = {k: v for k, v in (options or {}).items() if v is not None}
    merged["options"] = {**(config["options"] if same else {}), **given_options}
    return merged


def save_config(config: dict, path: "str | os.PathLike") -> Path:
    """Write a config (validated first) as JSON; returns the path."""
    load_config(config)
    path = Path(path)
    from hasten.report import json_safe

    path.write_text(json.dumps(json_safe(config), indent=2) + "\n")
    return path


# ----------------------------------------------------------------------------- the tuner


@dataclass
class TuneReport:
    """What :func:`tune` measured: ranked rows, the curves, the reference and the winner."""

    rows: list[dict]
    best: dict
    latency: Curve
    comm: Curve | None
    settings: dict
    skipped: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {**self.settings, "latency": self.latency.to_dict(),
                "comm": None if self.comm is None else self.comm.to_dict(), "rows": self.rows,
                "skipped": self.skipped, "best": self.best}


COLUMNS = [("rank", "#"), ("label", "configuration"), ("predicted_s", "predicted wall s"),
           ("predicted_speedup", "pred. speedup"), ("measured_s", "measured s (here, D=1)"), ("rounds", "rounds"),
           ("nfe", "NFE"), ("psnr", "PSNR dB"), ("rmse", "RMSE"), ("meets", "meets target")]


def tune(model, target: "Target | str", devices: int = 1, steps: int = 50, batch: int = 4, seed: int = 0,
         solver: str | None = None, chords_cores: Sequence[int] = (2, 3, 4, 6, 8), widths: Sequence[int] = (4, 8),
         methods: Sequence[str] | None = None, threads: int | None = None, comm_ms: float | None = None,
         repeats: int = 5, max_batch: int | None = None, progress: bool = True,
         log: Callable[[str], None] = lambda _: None, spec: str | None = None) -> TuneReport:
    """Run the candidates on ``model`` (an embedded or opened model) and rank them for ``devices`` devices.

    ``threads``: torch threads of the candidate runs and the latency curve
    (default :func:`worker_threads`, what each distributed worker gets);
    ``comm_ms``: a fixed communication time per round instead of measuring the
    all-gather (D > 1). ``spec``: the embedded model's name when ``model`` is
    an object (``model`` may be the name itself); with it, D > 1 on the CPU is
    measured as whole distributed rounds in D spawned processes
    (:func:`measure_rounds`), else as this process's forward plus a measured
    all-gather (:func:`measure_comm`).
    """
    target = Target.parse(target) if isinstance(target, str) else target
    if not isinstance(devices, int) or devices < 1:
        raise HastenError(f"--devices must be an integer >= 1, got {devices!r}")
    threads = threads if threads is not None else worker_threads(devices)
    if isinstance(model, str):
        from hasten.models import is_embedded, load_model

        spec = model if is_embedded(model) else spec
        model = load_model(model)
    with torch_threads(threads):
        return _tune(model, target, devices, steps, batch, seed, solver, chords_cores, widths, methods, threads,
                     comm_ms, repeats, max_batch, progress, log, spec)


def _tune(model, target: Target, devices: int, steps: int, batch: int, seed: int, solver: str | None,
          chords_cores: Sequence[int], widths: Sequence[int], methods: Sequence[str] | None, threads: int,
          comm_ms: float | None, repeats: int, max_batch: int | None, progress: bool,
          log: Callable[[str], None], spec: str | None) -> TuneReport:
    from tqdm.auto import tqdm

    from hasten.assembly import prepare
    from hasten.engine import run
    from hasten.metrics import psnr, rmse

    cands = candidates(steps, solver, chords_cores, widths, methods=methods)

    def setup(c: Candidate):
        s = prepare(model, c.method, c.steps, seed, batch, c.stop, solver, c.cores, c.cache, "batched",
                    max_batch=max_batch, **c.options)
        s.executor.time_model = True  # the bookkeeping is the wall time outside the model
        return s

    def timed(s):
        before = s.executor.model_seconds
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = run(s.method, s.x, s.step, s.executor, s.stop, cache=s.cache)
        return result, s.executor.model_seconds - before, [str(w.message) for w in caught]

    log(f"reference: sequential, {steps} steps, batch {batch}")
    ref_setup = setup(Candidate("sequential", steps, "reference"))
    run(ref_setup.method, ref_setup.x, ref_setup.step, ref_setup.executor)  # warm-up, untimed
    ref, ref_model_s, _ = timed(ref_setup)
    decode = ref_setup.model.decode
    ref_images = decode(ref.x)

    def quality(x: torch.Tensor) -> tuple[float, float]:
        images = decode(x)
        return (psnr(images, ref_images, 1.0) if images is not None else psnr(x, ref.x)), rmse(x, ref.x)

    runs: list[tuple[Candidate, Any, float, list[str]]] = [(Candidate("sequential", steps, "reference"), ref,
                                                            ref_model_s, [])]
    failed: dict[str, str] = {}
    skipped = []
    bar = tqdm(cands, desc="tune", unit="config", disable=not progress)
    for c in bar:
        bar.set_postfix_str(c.label, refresh=True)
        if c.chain in failed:
            skipped.append({"label": c.label, "reason": f"pruned: {failed[c.chain]} missed the target"})
            continue
        result, model_s, warned = timed(setup(c))
        runs.append((c, result, model_s, warned))
        if not target.met(*quality(result.x)):
            failed[c.chain] = c.label
    bar.close()

    # the latency curve, up to the most rows one device needs, under the workers' threads
    most = max(math.ceil(r / devices) for _, res, _, _ in runs for r in res.round_rows if r)
    log(f"latency curve: 1..{most} rows per forward, {threads} thread(s)")
    latency = measure_latency(ref_setup.executor, ref_setup.x, steps // 2, batch_sizes(most), repeats, threads)
    calibrate(latency, [(res.round_rows, model_s) for _, res, model_s, _ in runs])
    log(f"in-situ calibration: a forward inside a run takes {1000 * latency.offset:+.2f} ms beside the tight-loop "
        "curve")
    comm = None
    kind = "forward (one process)"
    if devices > 1:
        import torch.distributed as dist

        grouped = dist.is_available() and dist.is_initialized()
        if comm_ms is not None:
            comm = Curve([1], [comm_ms / 1000])
            kind += f" + {comm_ms:g} ms per round (--comm-ms)"
        elif spec is not None and not grouped and ref.x.device.type == "cpu":
            log(f"distributed rounds: {devices} gloo processes, {threads} thread(s) each")
            rounds = measure_rounds(spec, devices, steps, batch_sizes(most), repeats, threads)
            rounds.offset = latency.offset
            latency, kind = rounds, f"distributed round ({devices} processes: forward + all-gather)"
        else:
            log(f"communication: all-gather over {devices} ranks")
            comm = measure_comm(devices, tuple(ref.x.shape[1:]), batch_sizes(most), device=ref.x.device)
            kind += " + all-gather (measured)"

    rows = []
    for c, result, model_s, warned in runs:
        p, r = quality(result.x)
        bookkeeping = max(0.0, result.wall_s - model_s)
        rows.append({
            "label": c.label, "method": c.method, "steps": c.steps, "cores": c.cores, "options": c.options,
            "cache": c.cache, "stop": c.stop,
            **{k: v for k, v in result.summary().items() if k in ("rounds", "all_rounds", "nfe", "requests")},
            "round_rows": result.round_rows,
            "max_rows": max(result.round_rows), "bookkeeping_s": bookkeeping, "model_s": model_s,
            "predicted_s": predict_wall(result.round_rows, latency, devices, bookkeeping, comm),
            "measured_s": result.wall_s, "psnr": p, "rmse": r, "meets": target.met(p, r), "warnings": warned,
            "config": c.config(solver),
        })
    base = rows[0]["predicted_s"]
    for row in rows:
        row["predicted_speedup"] = base / row["predicted_s"] if row["predicted_s"] > 0 else math.inf
    rows.sort(key=lambda r: (not r["meets"], r["predicted_s"] if r["meets"] else -r["psnr"]))
    for i, row in enumerate(rows, 1):
        row["rank"] = i
    winner = rows[0]
    best = {**winner["config"], "tune": {
        "model": getattr(ref_setup.model, "name", str(model)), "devices": devices, "target": str(target),
        "label": winner["label"], "predicted_s": winner["predicted_s"], "predicted_speedup": winner["predicted_speedup"],
        "rounds": winner["rounds"], "nfe": winner["nfe"], "psnr": winner["psnr"], "rmse": winner["rmse"],
        "batch": batch, "seed": seed}}
    settings = {"model": best["tune"]["model"], "devices": devices, "target": str(target), "steps": steps,
                "batch": batch, "seed": seed, "solver": ref_setup.step.name, "threads": threads,
                "device": str(ref.x.device), "date": time.strftime("%Y-%m-%d"), "latency_kind": kind,
                "calibration_offset_s": latency.offset,
                "reference_measured_s": ref.wall_s, "candidates": len(cands), "run": len(runs) - 1,
                "pruned": len(skipped)}
    return TuneReport(rows, best, latency, comm, settings, skipped)


def write_report(report: TuneReport, out, command: str = "") -> None:
    """``tune.json`` (every row and the curves), ``best.json`` (the winner's config), ``tune.md`` and ``pareto.png``.

    ``out``: a folder path, or a :class:`hasten.output.OutputFolder` (files land when it commits).
    """
    from hasten.output import OutputFolder
    from hasten.report import markdown_table, plot_tune_front, write_json

    out = out if isinstance(out, OutputFolder) else Path(out)
    write_json({"command": command, **report.to_dict()}, out / "tune.json")
    save_config(report.best, out / "best.json")
    s = report.settings
    title = (f"hasten tune: {s['model']}, {s['devices']} device(s), target {s['target']}, "
             f"{s['solver']}-{s['steps']}, batch {s['batch']}")
    (out / "tune.md").write_text(f"# {title}\n\nCommand: `{command}`\n\n{markdown_table(report.rows, COLUMNS)}\n\n"
                                 f"Winner: `{report.best['tune']['label']}` (best.json)\n")
    plot_tune_front(report.rows, out / "pareto.png", title)
