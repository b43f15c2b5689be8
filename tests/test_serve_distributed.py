"""hasten serve on a 2-rank gloo torchrun pool: the same answers as one process; a lost rank fails fast."""

import os
import signal
import sys
import time
from pathlib import Path

import httpx
import pytest
import torch

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

import hasten  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from serve_helpers import Server, latents, sse_events  # noqa: E402

TIMEOUT_S = 8


def _rank_pids(torchrun_pid: int) -> dict[int, int]:
    """{rank: pid} of the processes torchrun started (read from /proc)."""
    ranks = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid != torchrun_pid:
                continue
            environ = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue
        for item in environ:
            if item.startswith(b"RANK="):
                ranks[int(item[5:])] = int(entry.name)
    return ranks


def test_two_rank_server_answers_as_hasten_sample_and_a_lost_rank_fails_fast():
    server = Server("--model", "digits", "--executor", "distributed", "--timeout", str(TIMEOUT_S), torchrun=2,
                    wait_s=240)
    try:
        assert server.health()["world_size"] == 2
        body = {"prompt": "", "n": 3, "seed": 9, "hasten": {"cores": 3, "steps": 16, "latents": True}}
        reply = server.post(body)
        assert reply.status_code == 200, reply.text + server.output()
        ref = hasten.sample("digits", "chords", cores=3, steps=16, seed=9, batch=3, stop="none")
        got = torch.stack([latents(d) for d in reply.json()["data"]])
        assert (got - ref.x).abs().max() <= 1e-5
        assert reply.json()["hasten"]["cost"]["rounds"] == ref.rounds
        with httpx.stream("POST", server.url + "/v1/images/generations", timeout=60,
                          json={"prompt": "", "seed": 1, "stream": True, "hasten": {"cores": 4, "steps": 16}}) as s:
            names = [name for name, _ in sse_events(s)]
        assert names == ["image_generation.partial_image"] * 3 + ["image_generation.completed"]

        ranks = _rank_pids(server.proc.pid)
        assert sorted(ranks) == [0, 1], ranks
        long = {"prompt": "", "stream": True, "hasten": {"method": "sequential", "steps": 1000}}
        with httpx.stream("POST", server.url + "/v1/images/generations", json=long, timeout=120) as s:
            server.wait_for(lambda h: h["running"] == 1, what="the long request running")
            os.kill(ranks[1], signal.SIGKILL)  # a rank dies mid-run
            killed = time.monotonic()
            got = list(sse_events(s))
        assert [name for name, _ in got] == ["error"]
        assert "distributed run failed" in got[0][1]["error"]["message"]
        assert time.monotonic() - killed < TIMEOUT_S + 5
        code = server.proc.wait(TIMEOUT_S + 30)
        assert code != 0  # the server exits non-zero rather than hang
    finally:
        server.stop()


def test_sigterm_reaches_every_rank_and_the_pool_exits_zero():
    server = Server("--model", "digits", "--executor", "distributed", "--timeout", str(TIMEOUT_S), torchrun=2,
                    wait_s=240)
    try:
        ranks = _rank_pids(server.proc.pid)
        with httpx.stream("POST", server.url + "/v1/images/generations", timeout=120,
                          json={"prompt": "", "stream": True, "hasten": {"method": "sequential", "steps": 300}}) as s:
            server.wait_for(lambda h: h["running"] == 1, what="the request running")
            os.kill(ranks[0], signal.SIGTERM)
            time.sleep(0.3)
            assert server.post({"prompt": ""}).status_code == 503
            names = [name for name, _ in sse_events(s)]
        assert names == ["image_generation.completed"]  # the running request finished on both ranks
        assert server.proc.wait(TIMEOUT_S + 30) == 0, server.output()  # both ranks left with 0
    finally:
        server.stop()
