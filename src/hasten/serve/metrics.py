"""``GET /metrics``: the service's counters in Prometheus' text format (prometheus-client).

One registry per app (not the process-wide default), so several apps in one process keep their own counts.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
COUNT_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Metrics:
    def __init__(self, queue_depth, running):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("hasten_requests", "HTTP requests answered, by path and status", ["path", "status"],
                                registry=r)
        self.latency = Histogram("hasten_request_latency_seconds", "image requests, arrival to last byte",
                                 ["stream"], buckets=LATENCY_BUCKETS, registry=r)
        self.first_image = Histogram("hasten_time_to_first_image_seconds", "streamed requests, arrival to first "
                                     "partial or final image", buckets=LATENCY_BUCKETS, registry=r)
        self.queue = Gauge("hasten_queue_depth", "requests waiting in the queue", registry=r)
        self.queue.set_function(queue_depth)
        self.running = Gauge("hasten_running_requests", "requests in the running batch", registry=r)
        self.running.set_function(running)
        self.rounds = Histogram("hasten_run_rounds", "rounds of model latency per run", buckets=COUNT_BUCKETS,
                                registry=r)
        self.nfe = Histogram("hasten_run_nfe", "model evaluations per sample per run", buckets=COUNT_BUCKETS,
                             registry=r)
        self.run_seconds = Histogram("hasten_run_seconds", "engine wall time per run", buckets=LATENCY_BUCKETS,
                                     registry=r)
        self.preview_seconds = Histogram("hasten_preview_seconds", "time spent making partial images per run",
                                         buckets=LATENCY_BUCKETS, registry=r)
        self.batch_rows = Histogram("hasten_batch_rows", "samples per run (batched requests together)",
                                    buckets=COUNT_BUCKETS, registry=r)
        self.hits = Counter("hasten_hits", "hits landed (CHORDS cores, converged windows)", registry=r)
        self.cancelled = Counter("hasten_cancelled_requests", "requests whose run stopped because nobody wanted it",
                                 registry=r)

    def observe_run(self, result, requests: int, rows: int, preview_s: float) -> None:
        self.rounds.observe(result.rounds)
        self.nfe.observe(result.nfe)
        self.run_seconds.observe(result.wall_s)
        self.preview_seconds.observe(preview_s)
        self.batch_rows.observe(rows)
