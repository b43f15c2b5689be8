"""The distributed executor: same seed, same result as batched, on 2 and 4 gloo processes; faults fail fast."""

import json
import os
import socket
import subprocess
import sys
import time

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

import hasten
from hasten.executors.distributed import shares

sys.path.insert(0, os.path.dirname(__file__))
import dist_worker  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_shares_split_rows_evenly():
    assert shares(10, 4) == [(0, 3), (3, 6), (6, 8), (8, 10)]
    assert shares(2, 4) == [(0, 1), (1, 2), (2, 2), (2, 2)]  # more ranks than rows: some idle


@pytest.mark.parametrize("world", [2, 4])
def test_distributed_equals_batched_for_every_method(tmp_path, world):
    mp.start_processes(dist_worker.run_cases, args=(world, free_port(), str(tmp_path)), nprocs=world,
                       start_method="spawn", join=True)
    got = torch.load(tmp_path / "results.pt")
    for k, (name, opts) in enumerate(dist_worker.CASES):
        opts = dict(opts)
        stop = opts.pop("stop", None)
        ref = hasten.sample("gmm", name, steps=30, batch=3, seed=5, stop=stop, **opts)
        x, rounds, nfe = got[f"{k}-{name}"]
        assert (x - ref.x).abs().max() <= 1e-5, name
        assert (rounds, nfe) == (ref.rounds, ref.nfe), name


def _launch(cmd, env):
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def test_two_node_launch_on_one_machine(tmp_path):
    """Two torchrun launchers (one process each) share a rendezvous on 127.0.0.1."""
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
                "--master_addr", "127.0.0.1", "--master_port", str(port)]
    job = ["-m", "hasten", "sample", "--model", "gmm", "--method", "chords", "--cores", "4", "--steps", "30",
           "--executor", "distributed", "--json", "--no-progress", "--out", str(tmp_path / "out")]
    nodes = [_launch(torchrun + ["--node_rank", str(r)] + job, env) for r in (0, 1)]
    outs = [p.communicate(timeout=180) for p in nodes]
    assert [p.returncode for p in nodes] == [0, 0], outs
    summary = json.loads(outs[0][0].strip().splitlines()[-1])
    ref = hasten.sample("gmm", "chords", cores=4, steps=30, batch=4, seed=0, stop="first")
    assert summary["world_size"] == 2 and (summary["rounds"], summary["nfe"]) == (ref.rounds, ref.nfe)
    assert outs[1][0].strip() == ""  # only rank 0 prints
    latents = load_file(str(tmp_path / "out" / "latents.safetensors"))["latents"]
    assert (latents - ref.x).abs().max() <= 1e-5


@pytest.mark.parametrize("mode", ["die", "hang"])
def test_a_dead_or_hung_rank_fails_the_others_within_the_timeout(tmp_path, mode):
    timeout_s = 4.0
    ctx = mp.start_processes(dist_worker.run_faulty, args=(2, free_port(), str(tmp_path), mode, timeout_s),
                             nprocs=2, start_method="spawn", join=False)
    deadline = time.monotonic() + 60
    while not (tmp_path / "rank0.txt").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    for p in ctx.processes:  # the hung rank is still asleep: nothing may be left running
        if p.is_alive():
            p.terminate()
        p.join(10)
    assert all(not p.is_alive() for p in ctx.processes)
    elapsed, outcome = (tmp_path / "rank0.txt").read_text().splitlines()[:2]
    assert outcome != "finished"
    assert float(elapsed) < timeout_s + 15


def test_accelerated_pipeline_on_two_ranks_equals_batched(tmp_path):
    """Prompts follow their rows across the rank split; CFG and all, the result is the batched one."""
    pytest.importorskip("transformers")
    from hasten.testing.pipelines import tiny_pipeline

    mp.start_processes(dist_worker.run_pipeline, args=(2, free_port(), str(tmp_path)), nprocs=2,
                       start_method="spawn", join=True)
    got = torch.load(tmp_path / "pipeline.pt")
    ref = hasten.accelerate(tiny_pipeline("sd"), "chords", cores=3, stop="none")(
        prompt=["a photo of a cat", "a red dog"], num_images_per_prompt=2, guidance_scale=4.0,
        num_inference_steps=10, output_type="latent", generator=torch.Generator().manual_seed(0))
    # this random pipeline's latents reach |x| ~ 17, where float32's spacing is 2e-6: bound the
    # difference (a different batch composition per rank) relative to that scale
    assert (got - ref.images).abs().max() <= 1e-6 * ref.images.abs().max()
    # conditioning is computed once (rank 0) and sent: rank 1 never runs its text encoder
    calls = [int((tmp_path / f"text_encoder_calls_rank{r}.txt").read_text()) for r in (0, 1)]
    assert calls[0] > 0 and calls[1] == 0


def test_the_readme_torchrun_script_runs_a_saved_pipeline_on_two_ranks(tmp_path):
    """examples/distributed_pipeline.py, as documented, on a saved tiny Flux pipeline with gloo."""
    pytest.importorskip("transformers")
    from hasten.testing.pipelines import save_tiny_pipeline

    folder = save_tiny_pipeline("flux", tmp_path / "flux")
    script = os.path.join(os.path.dirname(__file__), "..", "examples", "distributed_pipeline.py")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), script, "--model", str(folder), "--cores", "2", "--steps", "6",
           "--out", str(tmp_path / "cat.png")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "rounds for 6 steps" in proc.stdout and "on 2 ranks" in proc.stdout
    assert (tmp_path / "cat.png").is_file()
