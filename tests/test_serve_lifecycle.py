"""hasten serve under pressure: a full queue, clients that leave, request timeouts, SIGTERM."""

import concurrent.futures
import os
import signal
import sys
import time

import httpx
import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

sys.path.insert(0, os.path.dirname(__file__))
from serve_helpers import Server, metric, sse_events  # noqa: E402

LONG = {"prompt": "", "seed": 0, "stream": True, "hasten": {"method": "sequential", "steps": 1000}}




def test_a_full_queue_answers_429_and_a_client_that_leaves_frees_the_device():
    server = Server("--model", "digits", "--queue", "1", "--max-batch", "1", "--steps", "10", "--cores", "2",
                    "--request-timeout", "600")
    try:
        client = httpx.Client(timeout=120)
        with client.stream("POST", server.url + "/v1/images/generations", json=LONG) as running:
            assert running.status_code == 200
            server.wait_for(lambda h: h["running"] == 1, what="the long request running")
            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                queued = pool.submit(server.post, {"prompt": "", "seed": 1})
                server.wait_for(lambda h: h["queue"] == 1, what="one request queued")
                full = server.post({"prompt": "", "seed": 2})
                assert full.status_code == 429, full.text
                assert int(full.headers["retry-after"]) >= 1
                assert full.json()["error"]["type"] == "rate_limit_error"
                left = time.monotonic()
                running.close()  # the client leaves mid-run
                assert queued.result().status_code == 200  # the device was freed for the next request
                freed_s = time.monotonic() - left
        # 1000 steps take several seconds here; a cancelled run stops at its next round
        assert freed_s < 3.0, freed_s
        assert metric(server, "hasten_cancelled_requests_total") == 1
        assert metric(server, 'hasten_requests_total{path="/v1/images/generations",status="429"}') == 1
        assert server.health()["running"] == 0
    finally:
        assert server.stop() == 0, server.output()


def test_a_request_past_its_timeout_fails_with_504_and_its_run_stops():
    server = Server("--model", "digits", "--request-timeout", "1")
    try:
        start = time.monotonic()
        reply = server.post({"prompt": "", "hasten": {"method": "sequential", "steps": 1000}})
        assert reply.status_code == 504 and "request-timeout" in reply.json()["error"]["message"]
        assert time.monotonic() - start < 4.0
        assert server.health()["running"] == 0
    finally:
        assert server.stop() == 0, server.output()


def test_sigterm_finishes_the_running_request_refuses_new_ones_and_exits_zero():
    server = Server("--model", "digits")
    client = httpx.Client(timeout=120)
    body = {**LONG, "hasten": {"method": "sequential", "steps": 400}}
    with client.stream("POST", server.url + "/v1/images/generations", json=body) as running:
        server.wait_for(lambda h: h["running"] == 1, what="the long request running")
        server.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        while server.health()["status"] != "draining" and time.monotonic() < deadline:
            time.sleep(0.05)
        refused = server.post({"prompt": ""})
        assert refused.status_code == 503, refused.text
        assert httpx.get(server.url + "/health").status_code == 503
        names = [name for name, _ in sse_events(running)]
    assert names == ["image_generation.completed"]  # the running request finished
    assert server.proc.wait(60) == 0, server.output()
    server.stop()
