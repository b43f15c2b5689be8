"""Two-dimensional parallelism: T time groups x C context ranks (gloo, CPU) give the batched executor's result.

Each launch runs every case (Flux and Wan; sequential, CHORDS, ParaDiGMS,
ParaSolver-Turbo; with and without AB-Cache) and each rank saves its own
results, so the test also sees that every rank ended with the same latents
and took the same cache decisions.
"""

import json
import os
import socket
import subprocess
import sys
import time

import pytest
import torch
import torch.multiprocessing as mp

import hasten
from hasten.errors import HastenError
from hasten.executors.context import ContextLayout, check_world, parse_context_parallel
from hasten.integrations.context import check_folder, check_sequence
from hasten.spec import Placement, RunSpec

pytest.importorskip("transformers")
sys.path.insert(0, os.path.dirname(__file__))
import cp_worker  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def references():
    """Each case with the batched executor, in this process."""
    from hasten.testing.pipelines import tiny_pipeline

    out = {}
    for kind in cp_worker.PIPELINES:
        pipe = tiny_pipeline(kind)
        for k, name, opts, cache in (c for c in cp_worker.cases() if c[0] == kind):
            out[cp_worker.key(k, name, cache)] = cp_worker.sample(pipe, k, name, opts, cache)
    return out


@pytest.mark.parametrize("world,layout", [(4, "ulysses=2"), (2, "ulysses=2")], ids=["2x2", "1x2"])
def test_layout_equals_batched_with_same_rounds_nfe_and_cache_decisions(tmp_path, references, world, layout):
    mp.start_processes(cp_worker.run_layout, args=(world, free_port(), str(tmp_path), layout), nprocs=world,
                       start_method="spawn", join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(world)]
    assert set(ranks[0]) == set(references)
    for case, (ref_x, ref_stats) in references.items():
        x, stats = ranks[0][case]
        assert x.shape == ref_x.shape, case
        assert (x - ref_x).abs().max() <= 1e-5, case
        assert (stats["rounds"], stats["nfe"]) == (ref_stats["rounds"], ref_stats["nfe"]), case
        assert stats["cache"] == ref_stats["cache"], case  # the same steps computed and predicted
        for other in ranks[1:]:  # every rank: the same latents, bit for bit, and the same cache decisions
            assert torch.equal(other[case][0], x) and other[case][1] == stats, case
    cached = [s["cache"] for k, (_, s) in references.items() if "abcache" in k]
    assert all(c["nfe_saved"] > 0 for c in cached)  # the cache did answer some evaluations


def test_a_rank_dying_inside_a_context_parallel_forward_stops_the_others(tmp_path):
    timeout_s = 5.0
    ctx = mp.start_processes(cp_worker.run_dying, args=(2, free_port(), str(tmp_path), timeout_s), nprocs=2,
                             start_method="spawn", join=False)
    deadline = time.monotonic() + 120
    while not (tmp_path / "rank0.json").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    for p in ctx.processes:
        if p.is_alive():
            p.terminate()
        p.join(10)
    report = json.loads((tmp_path / "rank0.json").read_text())
    assert report["outcome"] != "finished"
    assert report["elapsed"] < timeout_s + 15
    assert not (tmp_path / "rank1.json").exists()  # rank 1 died in its forward


# ---------------------------------------------------------------- refusals, before loading


def test_layout_specs_parse_and_bad_ones_are_refused():
    assert parse_context_parallel("ring=2:ulysses=2") == ContextLayout(ulysses=2, ring=2)
    assert Placement("distributed", context_parallel="ring=2:ulysses=2").context_parallel == "ulysses=2:ring=2"
    assert Placement.from_dict(Placement("distributed", context_parallel="ring=4").to_dict()).layout.degree == 4
    for bad, why in [("ulysses", "must be ulysses=C"), ("tensor=2", "must be ulysses=C"),
                     ("ulysses=2:ulysses=2", "twice"), ("ulysses=1", "degree 1"), ("", "must be")]:
        with pytest.raises(HastenError, match=why):
            Placement("distributed", context_parallel=bad)
    with pytest.raises(HastenError, match="distributed executor only"):
        Placement("batched", context_parallel="ulysses=2")


def test_world_not_divisible_by_the_degree_is_refused_before_joining(monkeypatch):
    assert check_world(ContextLayout(ulysses=2), 8) == 4
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(HastenError, match="3 ranks of this launch are not divisible by the context degree 2"):
        hasten.sample("random:flux-dev:tiny", "sequential", steps=2, executor="distributed",
                      context_parallel="ulysses=2")


def test_embedded_models_are_refused():
    with pytest.raises(HastenError, match="embedded model with no attention to split"):
        RunSpec.build("digits", "sequential", executor="distributed", context_parallel="ulysses=2")


def test_families_without_a_plan_and_indivisible_heads_are_refused_from_the_configs(tmp_path):
    from hasten.testing.pipelines import save_tiny_pipeline

    sd = save_tiny_pipeline("sd", tmp_path / "sd")
    with pytest.raises(HastenError, match="UNet2DConditionModel has no context-parallel plan.*FluxTransformer2DModel"):
        check_folder(sd, ContextLayout(ulysses=2))
    flux = save_tiny_pipeline("flux", tmp_path / "flux")
    check_folder(flux, ContextLayout(ulysses=2))  # 2 heads: Ulysses-2 splits them
    with pytest.raises(HastenError, match="2 attention heads, which ulysses=4 cannot split"):
        check_folder(flux, ContextLayout(ulysses=4))
    check_folder(flux, ContextLayout(ring=4))  # ring attention does not split heads
    with pytest.raises(HastenError, match="SD3Transformer2DModel has no context-parallel plan"):
        hasten.sample("random:sd3.5-medium:tiny", "sequential", steps=2, executor="distributed",
                      context_parallel="ulysses=2")


def test_ring_attention_on_a_backend_without_log_sum_exp_is_refused():
    """diffusers' default (native) attention cannot merge ring blocks: refused before loading, naming the fix."""
    with pytest.raises(HastenError, match="ring attention needs an attention backend.*DIFFUSERS_ATTN_BACKEND"):
        hasten.sample("random:flux-dev:tiny", "sequential", steps=2, executor="distributed",
                      context_parallel="ring=2")


def test_a_sequence_the_degree_cannot_split_is_refused():
    from hasten.testing.pipelines import tiny_pipeline

    net = tiny_pipeline("flux").transformer
    check_sequence(net, ContextLayout(ulysses=2), torch.zeros(1, 16, 4), 8)
    with pytest.raises(HastenError, match="15 image tokens through FluxTransformer2DModel, which 2 ranks"):
        check_sequence(net, ContextLayout(ulysses=2), torch.zeros(1, 15, 4), 8)
    with pytest.raises(HastenError, match="splits the text too, and this call has 7 text tokens"):
        check_sequence(net, ContextLayout(ulysses=2), torch.zeros(1, 16, 4), 7)
    wan = tiny_pipeline("wan").transformer  # patches (1, 2, 2): 2 frames x 2 x 3 patches = 12 tokens
    check_sequence(wan, ContextLayout(ulysses=2), torch.zeros(1, 16, 2, 4, 6), 7)  # Wan keeps the text whole
    with pytest.raises(HastenError, match="12 image tokens"):
        check_sequence(wan, ContextLayout(ulysses=2, ring=4), torch.zeros(1, 16, 2, 4, 6), None)


def test_cli_takes_the_option_and_refuses_in_one_line():
    proc = subprocess.run([sys.executable, "-m", "hasten", "sample", "--model", "digits", "--executor",
                           "distributed", "--context-parallel", "ulysses=2", "--no-progress"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "embedded model with no attention to split" in proc.stderr and "Traceback" not in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "hasten", "sample", "--model", "random:flux-dev:tiny",
                           "--context-parallel", "ring=2", "--no-progress"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode != 0 and "distributed executor only" in proc.stderr


# ---------------------------------------------------------------- the layout chooser of hasten tune


def test_tune_ranks_layouts_from_a_latency_table(tmp_path):
    from hasten.testing.pipelines import save_tiny_pipeline
    from hasten.tune import tune
    from hasten.tune.latency import predict_wall
    from hasten.tune.layouts import load_table

    folder = save_tiny_pipeline("flux", tmp_path / "flux")
    table = {"device": "test node", "forward": {"1": {"rows": [1, 4], "seconds": [1.0, 4.0]},
                                                "2": {"rows": [1, 4], "seconds": [0.6, 2.1]},
                                                "4": {"rows": [1, 4], "seconds": [0.5, 1.2]}},
             "gather": {"rows": [1], "seconds": [0.05]}}
    (tmp_path / "table.json").write_text(json.dumps(table))
    run = RunSpec.build(str(folder), "sequential", steps=6, batch=2, call={"prompt": "a cat", "height": 32,
                                                                            "width": 32})
    report = tune(run, "psnr:20", devices=4, methods=["chords"], chords_cores=[2], repeats=1, progress=False,
                  latency_table=str(tmp_path / "table.json"))
    layouts = report.settings["layouts"]
    assert layouts["source"] == f"latency table {tmp_path / 'table.json'} (test node)"
    row = next(r for r in report.rows if r["label"] == layouts["for"])
    loaded = load_table(tmp_path / "table.json")
    expect = {f"{4 // c}x{c}": predict_wall(row["round_rows"], loaded["forward"][c], 4 // c, row["bookkeeping_s"],
                                              loaded["gather"]) for c in (1, 2, 4)}
    got = {e["layout"]: e["predicted_s"] for e in layouts["rows"]}
    assert got == pytest.approx(expect)
    assert [e["predicted_s"] for e in layouts["rows"]] == sorted(expect.values())  # fastest first
    assert {e["layout"]: e["context_parallel"] for e in layouts["rows"]} == {"4x1": None, "2x2": "ulysses=2",
                                                                              "1x4": "ring=4"}  # 2 heads
    with pytest.raises(HastenError, match="forward keys are context degrees"):
        (tmp_path / "bad.json").write_text(json.dumps({"forward": {"x": table["forward"]["1"]}}))
        load_table(tmp_path / "bad.json")


def test_tune_measures_the_context_parallel_forward_here(tmp_path):
    from hasten.testing.pipelines import save_tiny_pipeline
    from hasten.tune import tune

    folder = save_tiny_pipeline("flux", tmp_path / "flux")
    run = RunSpec.build(str(folder), "sequential", steps=4, batch=1, call={"prompt": "a cat", "height": 32,
                                                                            "width": 32})
    report = tune(run, "psnr:20", devices=2, methods=["chords"], chords_cores=[2], repeats=1, progress=False)
    layouts = report.settings["layouts"]
    assert layouts["source"].startswith("measured here")
    assert {e["layout"] for e in layouts["rows"]} == {"2x1", "1x2"}
    assert all(e["predicted_s"] > 0 for e in layouts["rows"])
    assert set(layouts["forward"]) == {"1", "2"} and all(s > 0 for s in layouts["forward"]["2"]["seconds"])
    digits = tune("digits", "psnr:20", devices=2, steps=8, batch=2, methods=["chords"], chords_cores=[2],
                  repeats=1, progress=False)  # an embedded model: only the time layout has a prediction
    rows = {e["layout"]: e for e in digits.settings["layouts"]["rows"]}
    assert rows["2x1"]["predicted_s"] > 0 and rows["1x2"]["predicted_s"] is None
    assert "no context-parallel plan" in rows["1x2"]["source"]


def test_gpu_layouts_script_smoke_runs_every_layout_on_cpu(tmp_path):
    """benchmarks/gpu_layouts.sh in its smoke mode: tiny networks, gloo, 2 ranks as 1x2 and 2x1."""
    script = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "gpu_layouts.sh")
    env = {**os.environ, "HASTEN_GPU_SMOKE": "1", "MODELS": "flux-dev", "PYTHON": sys.executable,
           "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(["bash", script, str(tmp_path)], capture_output=True, text=True, timeout=400, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    runs = {f.stem: json.loads(f.read_text().strip().splitlines()[-1]) for f in tmp_path.glob("*.json")}
    assert set(runs) == {"flux-dev-1x2", "flux-dev-2x1"}
    assert runs["flux-dev-1x2"]["context_parallel"] == "ulysses=2" and runs["flux-dev-2x1"]["context_parallel"] is None
    assert runs["flux-dev-1x2"]["rounds"] == runs["flux-dev-2x1"]["rounds"]  # the layout does not change the method
    assert all(r["world_size"] == 2 and r["rmse"] < 1e-3 for r in runs.values())
    assert "| flux-dev-1x2 | ulysses=2 | 2 |" in (tmp_path / "layouts.md").read_text()
    # the CLI's context-parallel run gives the batched executor's latents, rounds and NFE
    from safetensors.torch import load_file

    run = {**runs["flux-dev-1x2"]["run"], "executor": "batched", "context_parallel": None, "backend": None}
    ref = hasten.sample(RunSpec.from_dict(run))
    latents = load_file(str(tmp_path / "flux-dev-1x2" / "latents.safetensors"))["latents"]
    assert (latents - ref.x).abs().max() <= 1e-5
    assert (runs["flux-dev-1x2"]["rounds"], runs["flux-dev-1x2"]["nfe"]) == (ref.rounds, ref.nfe)


def test_serve_on_a_context_parallel_pool_answers_as_the_batched_executor(tmp_path):
    """hasten serve --executor distributed --context-parallel ulysses=2 on 2 gloo ranks (T = 1)."""
    pytest.importorskip("starlette")
    pytest.importorskip("uvicorn")
    from serve_helpers import Server, latents

    from hasten.testing.pipelines import save_tiny_pipeline

    folder = save_tiny_pipeline("flux", tmp_path / "flux")
    server = Server("--model", str(folder), "--executor", "distributed", "--context-parallel", "ulysses=2",
                    "--size", "32x32", "--timeout", "60", torchrun=2, wait_s=240)
    try:
        health = server.health()
        assert health["world_size"] == 2 and health["context_parallel"] == "ulysses=2"  # the transformer shares
        reply = server.post({"prompt": "a cat", "seed": 9, "hasten": {"cores": 2, "steps": 6, "latents": True}})
        assert reply.status_code == 200, reply.text + server.output()
        ref = hasten.sample(str(folder), "chords", cores=2, steps=6, seed=9, stop="none",
                            call={"prompt": "a cat", "height": 32, "width": 32})
        got = latents(reply.json()["data"][0])
        assert (got - ref.x[0]).abs().max() <= 1e-5
        assert reply.json()["hasten"]["cost"]["rounds"] == ref.rounds
    finally:
        server.stop()


@pytest.mark.parametrize("content, match", [
    (None, "no such file"), ("folder", "is a folder"), (b"\x00\x01\xff", "not UTF-8 text"),
    (b"{", "is not a JSON file"), (b'{"forward": {"1": {"rows": [1], "seconds": [NaN]}}}', "finite numbers >= 0"),
    (b"{}", 'needs a "forward" mapping')])
def test_a_bad_latency_table_gets_a_one_line_error(tmp_path, content, match):
    from hasten.tune.layouts import load_table

    path = tmp_path / "table.json"
    if content == "folder":
        path.mkdir()
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(HastenError, match=match):
        load_table(path)
