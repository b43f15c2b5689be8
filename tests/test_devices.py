"""Devices, dtypes, model resolution, --max-batch, --compile and emulated devices (issue 9), on the CPU.

What needs a GPU (NCCL, CUDA buffers, bf16 on CUDA) is in test_cuda.py, which runs where CUDA exists.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import hasten
from hasten.denoise import EmulatedDevice, compile_network
from hasten.devices import parse_dtype, resolve_device, resolve_dtype, stored_dtype
from hasten.engine import FiniteCheck
from hasten.errors import HastenError, NonFiniteOutputError
from hasten.executors import make_executor
from hasten.executors.base import forward_rows
from hasten.methods import Eval

REPO = Path(__file__).resolve().parents[1]


class FakeCuda:
    """Pretend this machine has ``count`` GPUs (for the device rules only; nothing runs on them)."""

    def __init__(self, monkeypatch, count: int, bf16: bool = True):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: bf16)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda *_: "Fake GPU")


# -- device and dtype selection -------------------------------------------------------------------------------

def test_default_device_is_cpu_without_cuda_and_cuda_with_it(monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    FakeCuda(monkeypatch, 0)
    assert resolve_device(None) == torch.device("cpu")
    FakeCuda(monkeypatch, 2)
    assert resolve_device(None) == torch.device("cuda", 0)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)


def test_each_torchrun_rank_takes_its_own_gpu(monkeypatch):
    FakeCuda(monkeypatch, 4)
    for rank in range(4):
        monkeypatch.setenv("LOCAL_RANK", str(rank))
        assert resolve_device(None) == torch.device("cuda", rank)
        assert resolve_device("cuda") == torch.device("cuda", rank)
    monkeypatch.setenv("LOCAL_RANK", "4")
    with pytest.raises(HastenError, match="more ranks than it has GPUs: LOCAL_RANK=4 but only 4"):
        resolve_device("cuda")


@pytest.mark.parametrize("device, message", [
    ("cuda", "needs CUDA"), ("cuda:0", "needs CUDA"), ("tpu", "is not a device"), ("xla", "not supported"),
])
def test_unavailable_devices_are_refused(monkeypatch, device, message):
    FakeCuda(monkeypatch, 0)
    with pytest.raises(HastenError, match=message):
        resolve_device(device)


def test_a_gpu_index_beyond_the_visible_ones_is_refused(monkeypatch):
    FakeCuda(monkeypatch, 2)
    with pytest.raises(HastenError, match="only 2 GPU"):
        resolve_device("cuda:2")


def test_dtype_names_and_defaults(monkeypatch):
    assert parse_dtype("bf16") is torch.bfloat16 and parse_dtype("float16") is torch.float16
    with pytest.raises(HastenError, match="--dtype 'int8' is not supported; valid: float32, bfloat16"):
        parse_dtype("int8")
    cpu = torch.device("cpu")
    assert resolve_dtype(None, cpu, torch.bfloat16) is torch.float32  # float32 on the CPU whatever is stored
    assert resolve_dtype("bf16", cpu) is torch.bfloat16
    FakeCuda(monkeypatch, 1)
    gpu = torch.device("cuda", 0)
    assert resolve_dtype(None, gpu, torch.bfloat16) is torch.bfloat16  # the checkpoint's own on a GPU
    assert resolve_dtype(None, gpu, None) is torch.float32
    FakeCuda(monkeypatch, 1, bf16=False)
    assert resolve_dtype(None, gpu, torch.bfloat16) is torch.float32  # a GPU without bf16
    with pytest.raises(HastenError, match="bfloat16 is not supported by Fake GPU"):
        resolve_dtype("bfloat16", gpu)


def test_stored_dtype_is_read_from_the_weights_header(tmp_path):
    from hasten.testing.pipelines import tiny_pipeline

    pipe = tiny_pipeline("ddim")
    pipe.unet.to(torch.bfloat16)
    pipe.save_pretrained(str(tmp_path / "p"))
    assert stored_dtype(tmp_path / "p") is torch.bfloat16
    assert stored_dtype(tmp_path) is None


def test_nccl_on_the_cpu_and_gloo_choices_are_refused_before_joining(monkeypatch):
    from hasten.executors.distributed import init_distributed

    FakeCuda(monkeypatch, 0)
    for key, value in {"RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(HastenError, match="--backend nccl needs CUDA devices, but this rank's device is cpu"):
        init_distributed("nccl", device="cpu")
    with pytest.raises(HastenError, match="--backend 'mpi' is not supported"):
        init_distributed("mpi")
    FakeCuda(monkeypatch, 1)
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(HastenError, match="more ranks than it has GPUs"):
        init_distributed()


# -- placement of latents, buffers and dtypes -----------------------------------------------------------------

def test_latents_and_results_live_on_the_denoisers_device_and_steps_stay_float32():
    model = hasten.load_model("digits", "cpu", torch.bfloat16)
    assert model.unet.dtype is torch.bfloat16
    low = hasten.sample(model, "chords", cores=4, steps=20, batch=2, stop="none")
    full = hasten.sample("digits", "chords", cores=4, steps=20, batch=2, stop="none", dtype="float32")
    assert low.x.dtype is torch.float32 and low.x.device == model.device
    rel = float((low.x - full.x).norm() / full.x.norm())
    assert 0 < rel < 0.05  # bf16 network: close to the float32 run, not equal to it


def test_bf16_pipeline_sequential_matches_its_own_loop_to_bf16_rounding():
    from hasten.integrations.random_pipelines import random_pipeline

    pipe = random_pipeline("random:flux-dev:tiny", "cpu", torch.bfloat16)
    assert pipe.transformer.dtype is torch.bfloat16
    call = dict(prompt="a cat", height=64, width=64, num_inference_steps=6, output_type="latent")
    ours = hasten.accelerate(pipe)(generator=torch.Generator().manual_seed(0), **call).images
    own = pipe(generator=torch.Generator().manual_seed(0), **call).images
    # the pipeline keeps its latents in bf16 between steps; hasten keeps them in float32
    assert ours.dtype is torch.bfloat16 and float((ours.float() - own.float()).abs().max()) <= 0.1
    assert float((ours.float() - own.float()).abs().mean()) <= 0.01


def test_random_real_size_specs_build_the_published_architectures_on_meta():
    import diffusers

    from hasten.integrations.random_pipelines import SPECS

    expected = {"flux-dev": 11.9e9, "sd3.5-medium": 2.2e9, "wan2.1-1.3b": 1.4e9}
    for name, spec in SPECS.items():
        with torch.device("meta"):
            net = getattr(diffusers, spec.transformer)(**spec.config)
        params = sum(p.numel() for p in net.parameters())
        assert abs(params - expected[name]) / expected[name] < 0.06, (name, params)


def test_gather_buffers_follow_the_denoiser_device(tmp_path):
    """A one-rank gloo group: the distributed executor's buffers and outputs sit where the denoiser lives."""
    import torch.distributed as dist

    from hasten.executors.distributed import DistributedExecutor

    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        model = hasten.load_model("gmm")
        grid = model.grid(10)
        ex = DistributedExecutor(model.denoiser(grid))
        assert ex.device == model.device and ex.comm_device == model.device
        x = torch.randn(3, 16)
        outs = ex.evaluate([Eval(x, 2), Eval(x, 5)])
        ref = model.denoiser(grid)(torch.cat([x, x]), torch.tensor([2] * 3 + [5] * 3))
        assert all(o.device == x.device for o in outs)
        assert torch.equal(torch.cat(outs), ref)
    finally:
        dist.destroy_process_group()


# -- --model: embedded, folder, model id (offline) ------------------------------------------------------------

def _hub_cache(tmp_path: Path) -> Path:
    """A Hugging Face cache folder holding a saved tiny pipeline under the id ``hasten-tests/tiny-ddim``."""
    from hasten.testing.pipelines import tiny_pipeline

    cache = tmp_path / "hub"
    repo = cache / "models--hasten-tests--tiny-ddim"
    commit = "0123456789abcdef0123456789abcdef01234567"
    tiny_pipeline("ddim").save_pretrained(str(repo / "snapshots" / commit))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    return cache


def test_model_sources_are_told_apart_with_clear_refusals(tmp_path):
    from hasten.opening import model_source

    (tmp_path / "file.txt").write_text("x")
    assert model_source("digits") == "embedded" and model_source("gmm-flow:shape=4x4") == "embedded"
    assert model_source("random:flux-dev") == "random"
    assert model_source(str(tmp_path)) == "folder"
    assert model_source("black-forest-labs/FLUX.1-dev") == "id"
    with pytest.raises(HastenError, match="no such folder"):
        model_source("./missing/pipe")
    with pytest.raises(HastenError, match="this is a file"):
        model_source(str(tmp_path / "file.txt"))
    with pytest.raises(HastenError, match="is not an embedded model"):
        model_source("nope")


def test_a_model_id_resolves_offline_from_the_local_cache(tmp_path):
    cache = _hub_cache(tmp_path)
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "hasten", "sample", "--model", "hasten-tests/tiny-ddim", "--method", "chords",
           "--cores", "2", "--steps", "6", "--batch", "1", "--json", "--no-progress", "--out", str(tmp_path / "o")]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["model"] == "DDIMPipeline" and summary["device"] == "cpu" and summary["dtype"] == "float32"
    missing = cmd[:5] + ["hasten-tests/other"] + cmd[6:]
    proc = subprocess.run(missing, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "not found in the local Hugging Face cache and downloads are off (HF_HUB_OFFLINE=1)" in proc.stderr


def test_local_files_only_refuses_an_uncached_id_before_loading(tmp_path, capsys):
    from hasten.cli import main

    assert main(["sample", "--model", "hasten-tests/not-cached", "--local-files-only", "--prompt", "a",
                 "--no-progress", "--out", str(tmp_path / "o")]) == 2
    assert "--local-files-only" in capsys.readouterr().err and not (tmp_path / "o").exists()


@pytest.mark.parametrize("args, message", [
    (["--device", "cuda"], "--device cuda needs CUDA"),
    (["--dtype", "int4"], "--dtype 'int4' is not supported"),
    (["--backend", "nccl"], "--backend applies to the distributed executor only"),
    (["--max-batch", "0"], "--max-batch must be an integer >= 1"),
    (["--compile", "--method", "srds"], "compile needs a fixed forward size"),
    (["--compile", "no-such-backend"], "unknown torch.compile backend"),
])
def test_bad_device_options_are_one_line_errors(tmp_path, capsys, args, message):
    from hasten.cli import main

    assert main(["sample", "--model", "digits", "--steps", "10", "--no-progress", "--out", str(tmp_path / "o"),
                 *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


# -- --max-batch and --compile ---------------------------------------------------------------------------------

@pytest.mark.parametrize("method, options", [("chords", dict(cores=4)), ("parasolver-turbo", dict(cores=4))])
def test_max_batch_chunks_give_the_unchunked_result(method, options):
    whole = hasten.sample("digits", method, steps=20, batch=3, stop="none", **options)
    chunked = hasten.sample("digits", method, steps=20, batch=3, stop="none", max_batch=2, **options)
    assert (chunked.rounds, chunked.nfe) == (whole.rounds, whole.nfe)
    assert torch.allclose(chunked.x, whole.x, atol=1e-5)


def test_max_batch_counts_network_rows_with_classifier_free_guidance():
    from hasten.testing.pipelines import tiny_pipeline

    pipe = tiny_pipeline("sd")
    rows = []
    pipe.unet.register_forward_pre_hook(lambda _, args: rows.append(args[0].shape[0]))
    call = dict(prompt="a cat", num_inference_steps=8, guidance_scale=4.0, num_images_per_prompt=2,
                output_type="latent")
    whole = hasten.accelerate(pipe, "chords", cores=3, stop="none")(generator=torch.Generator().manual_seed(0), **call)
    assert max(rows) == 3 * 2 * 2  # cores x samples x (uncond, cond)
    rows.clear()
    fast = hasten.accelerate(pipe, "chords", cores=3, stop="none", max_batch=4)
    chunked = fast(generator=torch.Generator().manual_seed(0), **call)
    assert max(rows) == 4
    assert torch.allclose(chunked.images, whole.images, atol=1e-5)
    with pytest.raises(HastenError, match="max_batch=1 is below the 2 network rows one sample needs"):
        hasten.accelerate(pipe, "chords", cores=3, max_batch=1)(generator=torch.Generator().manual_seed(0), **call)


def test_forward_rows_pads_every_chunk_to_one_size():
    seen = []

    def denoise(x, index):
        seen.append(x.shape[0])
        return x * index.view(-1, 1)

    x, index = torch.randn(7, 2), torch.arange(7)
    out = forward_rows(denoise, x, index, None, max_rows=3, pad_rows=3)
    assert seen == [3, 3, 3] and torch.equal(out, x * index.view(-1, 1))


def test_compile_pads_rounds_so_one_graph_serves_the_run():
    model = hasten.load_model("digits")
    plain = hasten.sample(model, "chords", cores=4, steps=12, batch=2, stop="none")
    compiled = hasten.sample(model, "chords", cores=4, steps=12, batch=2, stop="none", compile="eager")
    stats = model.unet._hasten_compile_stats
    assert stats.graphs == 1  # CHORDS rounds grow from 1 to 4 requests; padding keeps one shape
    assert (compiled.rounds, compiled.nfe) == (plain.rounds, plain.nfe)  # padding is not counted
    assert torch.allclose(compiled.x, plain.x, atol=1e-5)
    # without padding each new round size compiles again: the count shows it
    grid = model.grid(12)
    unpadded = make_executor(model.denoiser(grid), "batched")
    for width in (1, 2, 3):
        unpadded.evaluate([Eval(torch.randn(2, 1, 16, 16), 0)] * width)
    assert stats.graphs == 1 + 3  # 2, 4 and 6 rows: three new shapes, three more graphs
    with pytest.raises(HastenError, match="already compiled with backend 'eager'"):
        compile_network(model.unet, "inductor")


def test_compile_refuses_models_without_a_network():
    with pytest.raises(HastenError, match="compile needs a network"):
        hasten.sample("gmm", "chords", cores=4, steps=10, compile="eager")


# -- emulated devices and deferred NaN checks ------------------------------------------------------------------

def test_emulated_device_takes_its_stated_latency_per_forward():
    model = hasten.load_model("gmm")
    grid = model.grid(10)
    device = EmulatedDevice(model.denoiser(grid), 0.05, capacity=2)
    x = torch.randn(3, 16)
    start = time.perf_counter()
    out = device(x, torch.tensor([1, 2, 3]))
    assert time.perf_counter() - start >= 0.1  # 3 rows on a 2-row device: two latencies
    assert torch.equal(out, model.denoiser(grid)(x, torch.tensor([1, 2, 3])))
    assert device.forwards == 1 and device.overruns == 0
    with pytest.raises(HastenError, match="emulated latency must be"):
        EmulatedDevice(device, 0)


def test_deferred_finite_check_names_the_first_bad_step(problem):
    p = problem(steps=20)
    check = FiniteCheck(p.step, torch.device("cuda"), every=4)  # an accelerator's schedule: read every 4 rounds
    good = torch.zeros(2, 8)
    check.add([good], [Eval(good, 0)], 1)
    check.add([good, good], [Eval(good, 1), Eval(good, 5)], 2)
    check.add([good, torch.full_like(good, float("nan"))], [Eval(good, 2), Eval(good, 7)], 3)
    assert len(check.pending) == 3  # nothing read yet
    with pytest.raises(NonFiniteOutputError, match="grid step 7 of 20 .* in round 3"):
        check.add([good], [Eval(good, 3)], 4)


# -- the GPU benchmark script's smoke test ---------------------------------------------------------------------

def test_gpu_benchmark_script_runs_on_tiny_networks(tmp_path):
    env = {**os.environ, "HASTEN_GPU_SMOKE": "1", "MODELS": "flux-dev", "PYTHON": sys.executable,
           "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu.sh"), str(tmp_path)], capture_output=True,
                          text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = (tmp_path / "summary.md").read_text()
    for run in ("flux-dev-64 | sequential", "flux-dev-64 | chords | 4", "flux-dev-64 | chords | 8",
                "flux-dev-64 | parasolver-turbo", "flux-dev-64-abcache | sequential | - | abcache:2"):
        assert run in summary, run
