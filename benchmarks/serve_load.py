"""Benchmarks of ``hasten serve`` (not tests): overhead, hit-to-client latency, a bounded load test, previews.

Starts real servers in subprocesses on free loopback ports and talks HTTP to them; every loop is bounded in
count and time and nothing leaves 127.0.0.1. Prints a JSON report (and writes it with --out).

    python benchmarks/serve_load.py --model digits --out docs/benchmarks/serve/serve_load.json

Sections:
* overhead: the same request, one at a time, through the server (client-side latency) and in-process
  ``hasten.sample`` (timed around the call), each after a warm-up, medians of --repeats;
* hit latency: streamed requests; per partial image, the client's receive time minus the server's
  ``landed_at`` (when the engine handed out the hit, before decoding it);
* load: --clients concurrent clients send --requests requests in all, against --max-batch 1 and 8:
  throughput, p50 / p99 latency, errors, lost requests (sent but never answered);
* previews: the same streamed request on a tiny Stable Diffusion pipeline with --preview full / approx / none,
  the server's own measured preview seconds per round.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from serve_helpers import Server, sse_events  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def request_body(args, seed: int, stream: bool = False, steps: int | None = None) -> dict:
    return {"prompt": args.prompt, "seed": seed, "stream": stream,
            "hasten": {"method": "chords", "cores": args.cores, "steps": steps or args.steps}}


def overhead(args) -> dict:
    """Served and in-process runs interleaved (one, then the other), so both see the same machine load."""
    import torch

    import hasten

    torch.set_num_threads(1)  # as the server runs (OMP_NUM_THREADS=1)
    model = hasten.load_model(args.model)  # loaded once, as the server does
    if args.prompt:
        model = model.with_call({"prompt": args.prompt})
    server = Server("--model", args.model, "--steps", str(args.steps), "--cores", str(args.cores),
                    "--max-batch", "1")
    served, engine, service, local = [], [], [], []
    client = httpx.Client(timeout=300)  # one connection, as a real client keeps (a new httpx client costs ~0.1 s)
    try:
        for i in range(args.repeats + 1):
            start = time.perf_counter()
            reply = client.post(server.url + "/v1/images/generations", json=request_body(args, i))
            elapsed = time.perf_counter() - start
            assert reply.status_code == 200, reply.text
            start = time.perf_counter()
            result = hasten.sample(model, "chords", cores=args.cores, steps=args.steps, seed=i, stop="none")
            model.decode(result.x)  # the images the service returns
            if i:  # the first of each is the warm-up
                local.append(time.perf_counter() - start)
                served.append(elapsed)
                cost = reply.json()["hasten"]["cost"]
                engine.append(cost["wall_s"])
                service.append(cost["service_s"])
    finally:
        client.close()
        server.stop()
    s, l = statistics.median(served), statistics.median(local)
    return {"served_median_s": s, "in_process_median_s": l, "overhead_s": s - l, "overhead_pct": 100 * (s - l) / l,
            "server_engine_wall_median_s": statistics.median(engine),
            "server_run_median_s": statistics.median(service),
            "http_and_queue_median_s": statistics.median(a - b for a, b in zip(served, service)),
            "repeats": args.repeats}


def hit_latency(args) -> dict:
    server = Server("--model", args.model, "--steps", str(args.steps), "--cores", str(args.cores))
    gaps = []
    try:
        for i in range(args.repeats):
            with httpx.stream("POST", server.url + "/v1/images/generations", json=request_body(args, i, True),
                              timeout=120) as reply:
                for name, data in sse_events(reply):
                    received = time.time()
                    if name == "image_generation.partial_image":
                        gaps.append(received - data["hasten"]["landed_at"])
    finally:
        server.stop()
    return {"partials": len(gaps), "median_ms": 1000 * statistics.median(gaps),
            "p99_ms": 1000 * percentile(gaps, 99), "max_ms": 1000 * max(gaps)}


def load(args, max_batch: int) -> dict:
    server = Server("--model", args.model, "--steps", str(args.load_steps), "--cores", str(args.cores),
                    "--max-batch", str(max_batch), "--queue", str(args.clients * 2), "--request-timeout", "600")
    latencies, errors, statuses = [], 0, {}
    counter = iter(range(args.requests))
    deadline = time.monotonic() + args.time_limit
    client = httpx.Client(timeout=600, limits=httpx.Limits(max_connections=args.clients))

    def worker() -> None:
        nonlocal errors
        for seed in counter:
            if time.monotonic() > deadline:
                return
            start = time.perf_counter()
            try:
                reply = client.post(server.url + "/v1/images/generations",
                                    json=request_body(args, seed, steps=args.load_steps))
                statuses[reply.status_code] = statuses.get(reply.status_code, 0) + 1
                if reply.status_code == 200 and reply.json()["data"][0]["b64_json"]:
                    latencies.append(time.perf_counter() - start)
                else:
                    errors += 1
            except httpx.HTTPError:
                errors += 1

    try:
        start = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(args.clients) as pool:
            for future in [pool.submit(worker) for _ in range(args.clients)]:
                future.result()
        wall = time.perf_counter() - start
        metrics = httpx.get(server.url + "/metrics").text
    finally:
        client.close()
        server.stop()
    answered = sum(statuses.values())
    rows = [line for line in metrics.splitlines() if line.startswith(("hasten_batch_rows_sum", "hasten_batch_rows_count"))]
    batch = {line.split()[0]: float(line.split()[1]) for line in rows}
    runs = batch.get("hasten_batch_rows_count", 0)
    return {"max_batch": max_batch, "steps": args.load_steps, "clients": args.clients, "requests": args.requests, "answered": answered,
            "ok": len(latencies), "errors": errors, "lost": args.requests - answered - errors,
            "statuses": statuses, "wall_s": wall, "throughput_rps": len(latencies) / wall,
            "p50_s": percentile(latencies, 50), "p99_s": percentile(latencies, 99),
            "runs": runs, "mean_rows_per_run": batch.get("hasten_batch_rows_sum", 0) / runs if runs else 0}


def previews(args) -> dict:
    from hasten.testing.pipelines import save_tiny_pipeline

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = save_tiny_pipeline("sd", Path(tmp) / "tiny-sd")
        for mode in ("full", "approx", "none"):
            server = Server("--model", str(folder), "--preview", mode, "--steps", str(args.steps),
                            "--cores", str(args.cores), "--size", "64x64")
            try:
                cost = []
                for i in range(args.repeats + 1):
                    with httpx.stream("POST", server.url + "/v1/images/generations", timeout=300,
                                      json={**request_body(args, i, True), "prompt": "a cat"}) as reply:
                        events = list(sse_events(reply))
                    final = events[-1][1]["hasten"]["cost"]
                    if i:
                        cost.append(final)
            finally:
                server.stop()
            out[mode] = {"preview_s_per_round": statistics.median(c["preview_s"] / c["rounds"] for c in cost),
                         "preview_s_per_run": statistics.median(c["preview_s"] for c in cost),
                         "engine_wall_s": statistics.median(c["wall_s"] for c in cost),
                         "rounds": cost[0]["rounds"], "partials": len(events) - 1}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="digits")
    parser.add_argument("--prompt", default="")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--cores", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--load-steps", type=int, default=20, help="steps of the load test's requests")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--requests", type=int, default=256)
    parser.add_argument("--time-limit", type=float, default=900, help="seconds a load test may send for")
    parser.add_argument("--sections", default="overhead,hits,load,previews")
    parser.add_argument("--out")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sections = args.sections.split(",")
    report = {"settings": {k: v for k, v in vars(args).items() if k != "out"}, "cpus": os.cpu_count()}
    if "overhead" in sections:
        report["overhead"] = overhead(args)
    if "hits" in sections:
        report["hit_latency"] = hit_latency(args)
    if "load" in sections:
        report["load"] = [load(args, 1), load(args, 8)]
        report["batching_gain"] = report["load"][1]["throughput_rps"] / report["load"][0]["throughput_rps"]
    if "previews" in sections:
        report["previews"] = previews(args)
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
