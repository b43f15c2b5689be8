"""How many replicas of a server Ray Serve runs and what each one reserves: values only (no Ray import).

A fixed count (``replicas``) or autoscaling between ``min_replicas`` and
``max_replicas`` towards ``target_ongoing_requests`` per replica (Ray Serve's
``autoscaling_config``), and each replica's ``ray_actor_options`` (CPUs, GPUs).
:mod:`hasten.serve.ray` turns it into a deployment's options.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from hasten.checks import check_int
from hasten.errors import HastenError


@dataclass(frozen=True)
class Scaling:
    """Replica count (or autoscaling bounds) and per-replica resources; validated when built."""

    replicas: int | None = None
    min_replicas: int | None = None
    max_replicas: int | None = None
    target_ongoing_requests: float | None = None
    replica_cpus: float = 1.0
    replica_gpus: float = 0.0
    #: requests a replica holds at once (running, queued, and a few for /health and /metrics); Ray's proxy keeps
    #: the rest until a replica has room, so the replica's own bounded queue answers 429 first
    max_ongoing_requests: int = 32

    KEYS = ("replicas", "min_replicas", "max_replicas", "target_ongoing_requests", "replica_cpus", "replica_gpus")

    def __post_init__(self) -> None:
        for key in ("replicas", "max_replicas"):
            check_int(key, getattr(self, key), 1, allow_none=True)
        check_int("min_replicas", self.min_replicas, 0, allow_none=True)
        check_int("max_ongoing_requests", self.max_ongoing_requests, 1)
        if self.replicas is not None and (self.min_replicas is not None or self.max_replicas is not None):
            raise HastenError("replicas must not be given with min_replicas / max_replicas: a fixed count or "
                              "autoscaling bounds, not both")
        if self.autoscaling:
            low, high = self.min_replicas or 1, self.max_replicas or max(1, self.min_replicas or 1)
            if high < max(low, 1):
                raise HastenError(f"max_replicas must be >= min_replicas ({low}), got {high}")
        for key in ("target_ongoing_requests", "replica_cpus", "replica_gpus"):
            value = getattr(self, key)
            if value is None:
                continue
            low_ok = value > 0 if key == "target_ongoing_requests" else value >= 0
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not low_ok:
                need = "> 0" if key == "target_ongoing_requests" else ">= 0"
                raise HastenError(f"{key} must be a finite number {need}, got {value!r}")
        if self.target_ongoing_requests is not None and not self.autoscaling:
            raise HastenError("target_ongoing_requests applies with min_replicas / max_replicas (autoscaling) only")

    @property
    def autoscaling(self) -> bool:
        return self.min_replicas is not None or self.max_replicas is not None

    @classmethod
    def for_config(cls, config, **given) -> "Scaling":
        """The scaling of replicas of ``config``: a GPU per replica on a cuda device, room for its queue."""
        device = config.placement.device or ""
        if "replica_gpus" not in given and device.startswith("cuda"):
            given["replica_gpus"] = 1.0
        given.setdefault("max_ongoing_requests", config.queue + config.max_batch + 4)
        scaling = cls(**given)
        if scaling.autoscaling and scaling.target_ongoing_requests is None:
            scaling = cls(**{**given, "target_ongoing_requests": float(config.max_batch)})
        return scaling

    def deployment_options(self) -> dict:
        """Ray Serve's ``.options(...)`` of the deployment."""
        actor = {"num_cpus": self.replica_cpus, "num_gpus": self.replica_gpus}
        options = {"ray_actor_options": actor, "max_ongoing_requests": self.max_ongoing_requests}
        if self.autoscaling:
            low = 1 if self.min_replicas is None else self.min_replicas
            high = self.max_replicas or max(1, low)
            options["autoscaling_config"] = {
                "min_replicas": low, "max_replicas": high, "initial_replicas": max(low, 1),
                "target_ongoing_requests": self.target_ongoing_requests,
                "upscale_delay_s": 2.0, "downscale_delay_s": 60.0, "look_back_period_s": 4.0}
        else:
            options["num_replicas"] = self.replicas or 1
        return options
