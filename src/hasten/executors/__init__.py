"""Executors run one round of model evaluations: batched (one device) or distributed (many ranks)."""

from __future__ import annotations

from hasten.checks import check_int
from hasten.errors import HastenError
from hasten.executors.batched import BatchedExecutor

EXECUTORS = ("batched", "distributed")


def make_executor(denoiser, executor: str = "batched", max_batch: int | None = None, fixed_shape: bool = False,
                  round_rows: int | None = None, context=None):
    """The executor named ``executor`` over ``denoiser``, bounded and shaped as asked.

    ``max_batch``: most network rows in one forward. ``fixed_shape`` (for a
    network compiled by :func:`hasten.denoise.compile_network`): every forward
    is padded to one size, the rows of the widest round (``round_rows`` = the
    method's widest round x samples) capped by ``max_batch``, so one graph
    serves the run.
    """
    if executor not in EXECUTORS:
        raise HastenError(f"executor must be one of {', '.join(EXECUTORS)}, got {executor!r}")
    check_int("max_batch", max_batch, 1, allow_none=True)
    if fixed_shape and round_rows is None and max_batch is None:
        raise HastenError("compile needs a fixed forward size: this method has no fixed round width (srds without "
                          "a cores cap); give max_batch (--max-batch) or a cores cap")
    if executor == "distributed":
        from hasten.executors.distributed import DistributedExecutor

        runner = DistributedExecutor(denoiser, max_batch=max_batch, context=context)
    elif context is not None:
        raise HastenError("context_parallel applies to the distributed executor only")
    else:
        runner = BatchedExecutor(denoiser, max_batch=max_batch)
    if fixed_shape:
        runner.fix_shape(round_rows)
    return runner


__all__ = ["BatchedExecutor", "EXECUTORS", "make_executor"]
