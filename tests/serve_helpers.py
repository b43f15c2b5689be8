"""Start a real ``hasten serve`` in a subprocess on a free loopback port, and talk to it."""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import torch

SRC = str(Path(__file__).resolve().parents[1] / "src")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env(**extra) -> dict:
    out = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out.update(extra)
    return out


class Server:
    """``hasten serve ARGS`` (or ``torchrun ... -m hasten serve ARGS``) until :meth:`stop`."""

    def __init__(self, *args: str, torchrun: int | None = None, environ: dict | None = None, wait_s: float = 120):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        serve = ["-m", "hasten", "serve", "--port", str(self.port), *args]
        if torchrun:
            cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(torchrun),
                   "--master_addr", "127.0.0.1", "--master_port", str(free_port()), *serve]
        else:
            cmd = [sys.executable, *serve]
        self.log = open(Path(os.environ.get("TMPDIR", "/tmp")) / f"hasten-serve-{self.port}.log", "w+")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env(**(environ or {})),
                                     start_new_session=True)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {self.proc.returncode}:\n{self.output()}")
            try:
                httpx.get(self.url + "/health", timeout=2)
                return
            except httpx.HTTPError:
                time.sleep(0.3)
        output = self.output()
        self.stop()
        raise RuntimeError(f"the server did not start within {wait_s} s:\n{output}")

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def health(self) -> dict:
        return httpx.get(self.url + "/health", timeout=10).json()

    def wait_for(self, test, timeout: float = 60.0, what: str = "condition") -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.health()
            if test(state):
                return state
            time.sleep(0.05)
        raise AssertionError(f"{what} not reached within {timeout} s; last /health: {state}")

    def post(self, body: dict, key: str | None = None, timeout: float = 120) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.post(self.url + "/v1/images/generations", json=body, headers=headers, timeout=timeout)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        """Stop the server (its whole process group) and return its exit code."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, sig)
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
            except ProcessLookupError:
                pass
        self.log.close()
        return self.proc.returncode


def metric(server: Server, name: str) -> float:
    """The sum of /metrics samples whose line starts with ``name`` (labels included in it, if given)."""
    lines = httpx.get(server.url + "/metrics").text.splitlines()
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith(name))


def sse_events(response: httpx.Response):
    """(event name, data) of each server-sent event of a streamed response, as they arrive."""
    name, data = None, []
    for line in response.iter_lines():
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            data.append(line[6:])
        elif line == "" and data:
            yield name, json.loads("\n".join(data))
            name, data = None, []


def png_pixels(b64: str) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))))


def latents(item: dict) -> torch.Tensor:
    """A response item's ``hasten_latents`` as a tensor."""
    raw = base64.b64decode(item["hasten_latents"]["b64"])
    return torch.from_numpy(np.frombuffer(raw, dtype="<f4").copy()).reshape(item["hasten_latents"]["shape"])
