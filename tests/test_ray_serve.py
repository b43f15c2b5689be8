"""hasten serve on Ray Serve: a local Ray (2 CPUs), 2 replicas of digits-cond, over loopback HTTP.

Streaming through Ray's proxy, a bounded load spread over both replicas, a replica killed mid-load, autoscaling
from 1 to 2, and no Ray process left after shutdown. The tests run in file order on one Ray instance.
"""

import concurrent.futures
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest

pytest.importorskip("starlette")
ray = pytest.importorskip("ray", reason="Ray Serve is not installed: pip install 'hasten[ray]'")
serve = pytest.importorskip("ray.serve", reason="Ray Serve is not installed: pip install 'hasten[ray]'")

from hasten.serve.config import ServeConfig  # noqa: E402
from hasten.serve.ray import build_app, deployments  # noqa: E402
from hasten.serve.scaling import Scaling  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from serve_helpers import free_port, sse_events  # noqa: E402

CONFIG = ServeConfig.from_dict({"model": "digits-cond", "steps": "8", "cores": "3", "queue": "48", "max_batch": "8"})
QUICK = {"prompt": "7", "hasten": {"steps": 6, "cores": 2}}


def _ray_pids(marker: str) -> set[int]:
    """Processes whose command line names this Ray instance's temp folder (raylet, GCS, workers)."""
    pids = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker.encode() in (entry / "cmdline").read_bytes():
                    pids.add(int(entry.name))
            except OSError:
                pass
    return pids


class Cluster:
    def __init__(self):
        self.temp = tempfile.mkdtemp(prefix="hray", dir="/tmp")  # short: Ray's socket paths have a length limit
        ray.init(num_cpus=2, include_dashboard=False, _temp_dir=self.temp, log_to_driver=False,
                 runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        serve.start(http_options={"host": "127.0.0.1", "port": self.port})
        self.up = True

    def deploy(self, scaling: Scaling) -> None:
        serve.run(deployments(CONFIG, scaling), name="hasten", route_prefix="/")

    def post(self, body: dict, timeout: float = 120) -> httpx.Response:
        return httpx.post(self.url + "/v1/images/generations", json=body, timeout=timeout)

    def replicas_seen(self, count: int, timeout: float) -> dict:
        """replica name -> pid, from /health, until ``count`` distinct replicas answered."""
        seen, deadline = {}, time.monotonic() + timeout
        while len(seen) < count and time.monotonic() < deadline:
            health = httpx.get(self.url + "/health", timeout=10).json()
            seen[health["replica"]] = health["pid"]
        assert len(seen) >= count, f"only {seen} answered within {timeout} s"
        return seen

    def shutdown(self) -> None:
        if self.up:
            self.up = False
            serve.shutdown()
            ray.shutdown()


@pytest.fixture(scope="module")
def cluster():
    c = Cluster()
    c.deploy(Scaling.for_config(CONFIG, replicas=2))
    yield c
    c.shutdown()


def _load(cluster, clients: int, requests: int, body: dict = QUICK):
    def one(i):
        reply = cluster.post({**body, "seed": i})
        return reply.status_code, reply.headers.get("x-hasten-replica"), reply.headers.get("content-type"), reply

    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        return list(pool.map(one, range(requests)))


def test_streamed_partial_images_through_the_proxy_name_their_replica(cluster):
    body = {"prompt": "3", "seed": 5, "stream": True, "partial_images": 2}
    with httpx.stream("POST", cluster.url + "/v1/images/generations", json=body, timeout=120) as reply:
        assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/event-stream")
        assert reply.headers["x-hasten-replica"]
        events = list(sse_events(reply))
    kinds = [name for name, _ in events]
    assert kinds[-1] == "image_generation.completed" and kinds.count("image_generation.partial_image") >= 1
    import openai

    client = openai.OpenAI(base_url=cluster.url + "/v1", api_key="unused")
    stream = client.images.generate(model="digits-cond", prompt="3", stream=True, partial_images=2,
                                    extra_body={"seed": 5})
    streamed = [event.type for event in stream]
    assert streamed[-1] == "image_generation.completed" and "image_generation.partial_image" in streamed
    whole = client.images.generate(model="digits-cond", prompt="3", n=2, response_format="b64_json",
                                   extra_body={"seed": 5})
    assert len(whole.data) == 2 and whole.data[0].b64_json
    assert httpx.get(cluster.url + "/nope").json()["error"]["code"] == 404
    assert cluster.post({"prompt": None}).json()["error"]["param"] == "prompt"


def test_a_bounded_load_spreads_over_both_replicas_with_no_error_and_none_lost(cluster):
    results = _load(cluster, clients=32, requests=128)
    assert len(results) == 128
    assert [r[0] for r in results] == [200] * 128, [r[3].text[:200] for r in results if r[0] != 200][:3]
    by_replica = {}
    for _, replica, _, reply in results:
        by_replica[replica] = by_replica.get(replica, 0) + 1
        assert len(reply.json()["data"]) == 1
    assert len(by_replica) == 2 and min(by_replica.values()) >= 16, by_replica


def test_a_killed_replica_fails_only_its_requests_in_json_then_service_resumes(cluster):
    replicas = cluster.replicas_seen(2, timeout=30)
    victim, pid = sorted(replicas.items())[0]
    slow = {"prompt": "1", "hasten": {"method": "sequential", "steps": 200}}
    with concurrent.futures.ThreadPoolExecutor(1) as killer:
        killer.submit(lambda: (time.sleep(3.0), os.kill(pid, signal.SIGKILL)))
        results = _load(cluster, clients=16, requests=48, body=slow)
    failed = [r for r in results if r[0] != 200]
    served = {r[1] for r in results if r[0] == 200}
    assert failed, "the kill came after every request had finished; nothing was tested"
    limit = Scaling.for_config(CONFIG).max_ongoing_requests
    assert len(failed) <= limit, f"{len(failed)} failed, more than the dead replica could hold ({limit})"
    for status, _, kind, reply in failed:
        assert status == 503 and kind == "application/json", reply.text[:300]
        error = reply.json()["error"]
        assert error["type"] == "server_error" and "replica" in error["message"]
    assert served - {victim}, "the other replica served nothing while one died"
    # Ray restarts the dead one: two replicas answer again, the new one by a new name
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        names = set(cluster.replicas_seen(1, timeout=10))
        if victim not in names and len(cluster.replicas_seen(2, timeout=30)) == 2:
            break
    after = _load(cluster, clients=8, requests=16)
    assert [r[0] for r in after] == [200] * 16


def test_autoscaling_goes_from_one_replica_to_two_under_load(cluster):
    serve.delete("hasten")
    cluster.deploy(Scaling.for_config(CONFIG, min_replicas=1, max_replicas=2, target_ongoing_requests=1))
    assert len(cluster.replicas_seen(1, timeout=30)) == 1
    status = serve.status().applications["hasten"].deployments["hasten"]
    assert sum(status.replica_states.values()) == 1, status.replica_states
    slow = {"prompt": "2", "hasten": {"method": "sequential", "steps": 60}}
    seen, deadline = set(), time.monotonic() + 120
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        while len(seen) < 2 and time.monotonic() < deadline:
            for status_code, replica, _, reply in pool.map(lambda i: _load(cluster, 1, 1, slow)[0], range(8)):
                assert status_code == 200, reply.text[:200]
                seen.add(replica)
    assert len(seen) == 2, f"still {seen} after 120 s of load"


def test_shutdown_leaves_no_ray_process(cluster):
    assert _ray_pids(cluster.temp), "no process of this Ray instance found before shutdown: the check is blind"
    cluster.shutdown()
    deadline = time.monotonic() + 30
    while _ray_pids(cluster.temp) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _ray_pids(cluster.temp)


def test_the_app_builder_takes_ray_serves_key_value_text():
    application = build_app({"model": "digits-cond", "steps": "12", "replicas": "3", "max_batch": "2"})
    assert application is not None
    scaling = Scaling.for_config(CONFIG, min_replicas=1, max_replicas=4)
    auto = scaling.deployment_options()["autoscaling_config"]
    assert (auto["min_replicas"], auto["max_replicas"], auto["target_ongoing_requests"]) == (1, 4, 8.0)
    assert Scaling.for_config(CONFIG.replace(placement=CONFIG.placement.__class__(device="cuda"))).replica_gpus == 1
    with pytest.raises(Exception, match="replicas"):
        build_app({"model": "digits-cond", "replicas": "two"})
