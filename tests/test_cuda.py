"""What needs a GPU: CUDA placement, bf16, NCCL, offload and no host synchronisation per round.

Skipped where CUDA is absent (CI); run on a GPU machine with ``python -m pytest tests/test_cuda.py``.
"""

import warnings

import pytest
import torch

import hasten
from hasten.errors import NonFiniteOutputError

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_default_device_is_the_gpu_and_results_stay_there():
    result = hasten.sample("digits", "chords", cores=4, steps=20, batch=2, stop="none")
    assert result.x.device.type == "cuda" and result.x.dtype is torch.float32
    cpu = hasten.sample("digits", "chords", cores=4, steps=20, batch=2, stop="none", device="cpu")
    assert torch.allclose(result.x.cpu(), cpu.x, atol=1e-3)


def test_bf16_network_with_float32_steps_on_the_gpu():
    full = hasten.sample("digits", "sequential", steps=20, batch=4, device="cuda")
    low = hasten.sample("digits", "sequential", steps=20, batch=4, device="cuda", dtype="bfloat16")
    assert low.x.dtype is torch.float32
    assert 0 < float((low.x - full.x).norm() / full.x.norm()) < 0.05


def test_rounds_do_not_synchronise_with_the_host():
    """CUDA's sync debug mode reports every implicit device-to-host wait; rounds must add none."""
    model = hasten.load_model("digits", "cuda")
    hasten.sample(model, "chords", cores=4, steps=10, batch=2, stop="none")  # warm-up
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = hasten.sample(model, "chords", cores=4, steps=50, batch=2, stop="none")
    finally:
        torch.cuda.set_sync_debug_mode(0)
    syncs = [w for w in caught if "synchroniz" in str(w.message).lower()]
    # set-up copies, the NaN flags read every 16 rounds and each hit's residual: far fewer than one per round
    assert result.all_rounds == 50 and len(syncs) < result.all_rounds // 3, [str(w.message)[:120] for w in syncs]


def test_nan_is_reported_with_its_step_on_the_gpu(problem):
    p = problem(steps=30)
    calls = {"n": 0}

    def broken(x, index):
        calls["n"] += 1
        out = p.denoiser(x.cpu(), index.cpu()).to(x.device)
        return out * float("nan") if calls["n"] == 7 else out

    broken.device = torch.device("cuda")
    with pytest.raises(NonFiniteOutputError, match="grid step 6 of 30 .* in round 7"):
        hasten.run(hasten.Sequential(), p.x.cuda(), p.step, hasten.BatchedExecutor(broken))


def test_nccl_executor_on_one_rank_keeps_buffers_on_the_gpu(tmp_path):
    import torch.distributed as dist

    from hasten.executors.distributed import DistributedExecutor

    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("nccl", store=store, rank=0, world_size=1, device_id=torch.device("cuda", 0))
    try:
        ref = hasten.sample("digits", "chords", cores=4, steps=20, batch=3, stop="none", device="cuda")
        got = hasten.sample("digits", "chords", cores=4, steps=20, batch=3, stop="none", device="cuda",
                            executor="distributed")
        assert got.x.device.type == "cuda" and torch.allclose(got.x, ref.x, atol=1e-5)
        assert (got.rounds, got.nfe) == (ref.rounds, ref.nfe)
        model = hasten.load_model("digits", "cuda")
        ex = DistributedExecutor(model.denoiser(model.grid(10)))
        assert ex.comm_device.type == "cuda"
    finally:
        dist.destroy_process_group()


def test_accelerated_pipeline_on_the_gpu_reproduces_the_pipeline():
    from hasten.testing.pipelines import tiny_pipeline

    pipe = tiny_pipeline("sd").to("cuda")
    call = dict(prompt="a cat", num_inference_steps=10, guidance_scale=4.0, output_type="latent")
    own = pipe(generator=torch.Generator("cuda").manual_seed(0), **call).images
    ours = hasten.accelerate(pipe)(generator=torch.Generator("cuda").manual_seed(0), **call).images
    assert ours.device.type == "cuda" and float((ours - own).abs().max()) <= 1e-4


def test_model_cpu_offload_works_with_every_method():
    from hasten.testing.pipelines import tiny_pipeline

    call = dict(prompt="a cat", num_inference_steps=10, guidance_scale=4.0, output_type="latent")
    plain = tiny_pipeline("sd").to("cuda")
    offloaded = tiny_pipeline("sd")
    offloaded.enable_model_cpu_offload()
    for method, options in [("sequential", {}), ("chords", dict(cores=3, stop="none")),
                            ("paradigms", dict(cores=4)), ("parasolver-turbo", dict(cores=2))]:
        ref = hasten.accelerate(plain, method, **options)(generator=torch.Generator("cuda").manual_seed(0), **call)
        got = hasten.accelerate(offloaded, method, **options)(generator=torch.Generator("cuda").manual_seed(0),
                                                               **call)
        assert float((got.images.to(ref.images.device) - ref.images).abs().max()) <= 1e-4, method
