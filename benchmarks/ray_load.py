"""Benchmark (not a test): ``hasten serve --ray`` with 1 and 2 replicas against the single-process server.

Starts each server with the real command line in a subprocess (``hasten serve ...`` and ``hasten serve --ray
--replicas N ...``, a local Ray), sends the same bounded load to each over loopback, and measures the Ray
proxy's overhead per request (the same small request one at a time, direct against through Ray with one
replica). Prints a JSON report (and writes it with --out).

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/ray_load.py --out docs/benchmarks/ray/ray_load.json
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from serve_helpers import env, free_port  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


class Launched:
    """``hasten serve ARGS`` in its own session until :meth:`stop`; ready once /health answers 200 ``count`` ways."""

    def __init__(self, args: list[str], replicas: int = 1, wait_s: float = 300):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(f"/tmp/hasten-ray-bench-{self.port}.log", "w+")
        self.proc = subprocess.Popen([sys.executable, "-m", "hasten", "serve", "--port", str(self.port), *args],
                                     stdout=self.log, stderr=subprocess.STDOUT, env=env(), start_new_session=True)
        seen, deadline = set(), time.monotonic() + wait_s
        while len(seen) < replicas:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.log.seek(0)
                raise RuntimeError(f"the server did not start:\n{self.log.read()[-3000:]}")
            try:
                reply = httpx.get(self.url + "/health", timeout=5)
                if reply.status_code == 200:
                    seen.add(reply.json().get("replica"))
                    continue
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(0.5)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(120)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.log.close()


def body(args, seed: int) -> dict:
    return {"prompt": "5", "seed": seed, "hasten": {"method": "chords", "cores": args.cores, "steps": args.steps}}


def load(server: Launched, args) -> dict:
    latencies, statuses, replicas = [], {}, {}
    client = httpx.Client(timeout=600, limits=httpx.Limits(max_connections=args.clients))

    def one(seed: int) -> None:
        start = time.perf_counter()
        try:
            reply = client.post(server.url + "/v1/images/generations", json=body(args, seed))
        except httpx.HTTPError:
            statuses["transport"] = statuses.get("transport", 0) + 1
            return
        statuses[reply.status_code] = statuses.get(reply.status_code, 0) + 1
        if reply.status_code == 200 and reply.json()["data"][0]["b64_json"]:
            latencies.append(time.perf_counter() - start)
            name = reply.headers.get("x-hasten-replica", "-")
            replicas[name] = replicas.get(name, 0) + 1

    for seed in range(args.clients):  # warm-up: one round of the clients
        one(10_000 + seed)
    latencies.clear(), statuses.clear(), replicas.clear()
    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(args.clients) as pool:
        list(pool.map(one, range(args.requests)))
    wall = time.perf_counter() - start
    client.close()
    ok = len(latencies)
    return {"requests": args.requests, "ok": ok, "statuses": statuses, "lost": args.requests - sum(statuses.values()),
            "wall_s": wall, "throughput_rps": ok / wall, "p50_s": percentile(latencies, 50),
            "p99_s": percentile(latencies, 99), "per_replica": replicas}


def small_requests(server: Launched, repeats: int) -> dict:
    """Median client latency of GET /v1/models and of a 2-step image request, one at a time on one connection."""
    client = httpx.Client(timeout=60)
    out = {}
    for name, call in (("models", lambda i: client.get(server.url + "/v1/models")),
                       ("image_2_steps", lambda i: client.post(server.url + "/v1/images/generations", json={
                           "prompt": "1", "seed": i, "hasten": {"method": "sequential", "steps": 2}}))):
        times = []
        for i in range(repeats + 3):
            start = time.perf_counter()
            assert call(i).status_code == 200
            if i >= 3:
                times.append(time.perf_counter() - start)
        out[name + "_median_ms"] = 1000 * statistics.median(times)
    client.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="digits-cond")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--cores", type=int, default=3)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=96)
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=30, help="small requests per overhead figure")
    parser.add_argument("--runs", default="single_process,ray_1_replica,ray_2_replicas,single_process_again",
                        help="servers in order (the single-process one again at the end shows the machine's drift)")
    parser.add_argument("--out")
    args = parser.parse_args()
    common = ["--model", args.model, "--steps", str(args.steps), "--max-batch", str(args.max_batch),
              "--queue", str(2 * args.clients), "--request-timeout", "600"]
    report = {"settings": {k: v for k, v in vars(args).items() if k != "out"}, "cpus": os.cpu_count(), "runs": {}}
    kinds = {"single_process": ([], 1), "single_process_again": ([], 1), "ray_1_replica": (["--ray", "--replicas", "1"], 1),
             "ray_2_replicas": (["--ray", "--replicas", "2"], 2)}
    for name in args.runs.split(","):
        extra, replicas = kinds[name]
        server = Launched(common + extra, replicas)
        try:
            run = load(server, args)
            if replicas == 1:
                run["small_requests"] = small_requests(server, args.repeats)
            report["runs"][name] = run
            print(name, json.dumps(run), file=sys.stderr, flush=True)
        finally:
            server.stop()
    direct, ray = report["runs"]["single_process"]["small_requests"], report["runs"]["ray_1_replica"]["small_requests"]
    report["proxy_overhead_ms"] = {key: ray[key] - direct[key] for key in direct}
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
