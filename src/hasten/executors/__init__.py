"""Executors run one round of model evaluations: batched (one device) or distributed (many ranks)."""

from hasten.executors.batched import BatchedExecutor

__all__ = ["BatchedExecutor"]
