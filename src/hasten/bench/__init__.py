"""``hasten bench``: methods side by side on one model, same seed, one report.

Every parallel run goes to the end (so the convergence curve has every hit);
its table row is read at the hit where the stop rule would have stopped it.
That hit's round, NFE and wall time are the engine's own counters at that
moment: the work up to it is the same whether or not the run continues.
Quality is measured against the sequential result of the same seed and grid.

* :mod:`.grid`: :class:`BenchConfig`, the grid of runs and its validation;
* :mod:`.timing`: warm-up, timed runs and their costs, the median of repeats;
* :mod:`.runner`: :func:`run_bench`, every run through one session, and the report.
"""

from hasten.bench.grid import ENTRY_OPTIONS, BenchConfig, parse_steps
from hasten.bench.runner import CACHE_COLUMNS, COLUMNS, run_bench

__all__ = ["BenchConfig", "CACHE_COLUMNS", "COLUMNS", "ENTRY_OPTIONS", "parse_steps", "run_bench"]
