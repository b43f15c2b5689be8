"""``hasten bench --race`` on a tiny random Flux: every row counted, the reference exact, hooks off after their row."""

import json
import math

import pytest

from hasten.bench.counting import WorkCounter, diffusers_hooks_left
from hasten.bench.race import RaceConfig, run_race
from hasten.cli import main
from hasten.session import Session
from hasten.spec import RunSpec

STEPS = 8
CALL = dict(prompt="a cat", height=16, width=16, max_sequence_length=8)
HASTEN = ["hasten:sequential", "hasten:reuse:interval=2", "hasten:abcache:2:interval=3", "hasten:abcache:3:tol=0.05",
          "hasten:chords:4", "hasten:chords:4+abcache:2:interval=2"]
DIFFUSERS = ["diffusers:firstblock:threshold=0.4", "diffusers:taylorseer", "diffusers:magcache:threshold=0.24",
             "diffusers:fastercache", "diffusers:pab:spatial_attention_block_skip_range=2", "diffusers:seacache"]


@pytest.fixture(scope="module")
def flux(tmp_path_factory):
    from hasten.testing.pipelines import save_tiny_pipeline

    return save_tiny_pipeline("flux", tmp_path_factory.mktemp("race") / "flux")


@pytest.fixture(scope="module")
def race(flux, tmp_path_factory):
    out = tmp_path_factory.mktemp("race_out")
    assert main(["bench", "--race", "--model", str(flux), "--prompt", "a cat", "--height", "16", "--width", "16",
                 "--steps", str(STEPS), "--batch", "2", "--no-progress", "--race-entrants", ",".join(HASTEN + DIFFUSERS),
                 "--out", str(out)]) == 0
    return out, json.loads((out / "race.json").read_text())


def test_every_row_is_there_with_counted_work(race):
    out, report = race
    assert (out / "race.md").read_text().count("| hasten:") == len(HASTEN)
    assert (out / "race.png").stat().st_size > 10_000
    rows = {r["name"]: r for r in report["rows"]}
    assert list(rows) == HASTEN + DIFFUSERS and not report["skipped"]
    for r in report["rows"]:
        assert set(r) >= {"name", "settings", "nfe", "blocks_frac", "wall_s", "speedup_wall", "psnr", "ssim",
                          "adherence"}
        assert r["adherence"] is None and r["wall_s"] > 0 and r["speedup_wall"] > 0
        assert r["hooks_left"] == 0
    for name in HASTEN:  # the engine's NFE, and the transformer rows the hooks counted, agree
        r = rows[name]
        assert r["rows"] == r["nfe"] * report["batch"], name
    for name in HASTEN[:4]:  # sequential + cache: every call runs every block, so the counted work is NFE / N
        assert rows[name]["blocks_frac"] == pytest.approx(rows[name]["nfe"] / STEPS)
    assert rows["hasten:reuse:interval=2"]["nfe"] < STEPS
    assert rows["hasten:chords:4"]["rounds"] < STEPS < rows["hasten:chords:4"]["nfe"]
    assert rows["hasten:chords:4+abcache:2:interval=2"]["nfe"] < rows["hasten:chords:4"]["nfe"]
    for name in DIFFUSERS:  # a hook skips inside the call: N calls counted, less block work where it skips
        assert rows[name]["nfe"] == STEPS and rows[name]["calls"] == STEPS and rows[name]["blocks_frac"] <= 1
    for name in DIFFUSERS[:5]:
        assert rows[name]["blocks_frac"] < 1, name
    assert rows["diffusers:seacache"]["blocks_frac"] == 1 and "fail-open" in rows["diffusers:seacache"]["note"]
    assert len(report["magcache_ratios"]) == STEPS  # calibrated on this model first


def test_the_reference_row_is_exact_and_comes_back_after_the_hooks(race):
    _, report = race
    ref = report["rows"][0]
    assert ref["name"] == "hasten:sequential" and ref["blocks_frac"] == 1 and ref["speedup_wall"] == 1
    assert math.isinf(float(ref["psnr"]))  # JSON writes inf as "inf"
    assert ref["ssim"] == pytest.approx(1.0, abs=1e-6)
    assert all(float(r["psnr"]) < math.inf for r in report["rows"] if r["blocks_frac"] < 1)
    assert report["reference_after_max_abs_diff"] == 0.0


def test_a_hook_is_removed_after_its_row(flux):
    run = RunSpec.build(str(flux), "sequential", steps=4, batch=1, call=CALL)
    session = Session.open(run)
    network = session.network
    from hasten.bench.entrants import hook_config, parse_entrant
    from hasten.integrations.hooks import diffusers_cache

    s = session.prepare(run.sampling, seed=0, batch=1, call=CALL)
    with diffusers_cache(network, s.executor.denoiser, hook_config(parse_entrant("diffusers:firstblock", 4), 4)):
        assert diffusers_hooks_left(network) > 0  # the check sees a hook while it is on
    assert diffusers_hooks_left(network) == 0
    report = run_race(RaceConfig(run, entrants=["diffusers:taylorseer", "diffusers:pab"], repeats=1, progress=False),
                      None, log=lambda _: None, session=session)
    assert [r["hooks_left"] for r in report["rows"]] == [0, 0, 0]
    assert diffusers_hooks_left(network) == 0 and network._cache_config is None
    with WorkCounter(network) as counter:  # and the forward hooks that counted are gone too
        pass
    assert not network._forward_pre_hooks and all(not m._forward_hooks for m in counter.layers)


@pytest.mark.parametrize("flags, message", [
    (["--race-entrants", "hasten:abcache:2"], "applies to --race only"),
    (["--race", "--methods", "chords"], "--methods belong to the bench grid"),
    (["--race", "--caches", "reuse"], "--caches belong to the bench grid"),
    (["--race", "--steps", "4,8"], "one --steps N"),
    (["--race", "--executor", "distributed"], "one device"),
    (["--race", "--race-entrants", "diffusers:nope"], "unknown diffusers hook 'nope'"),
    (["--race", "--race-entrants", "diffusers:firstblock:bogus=1"], "bogus=1"),
    (["--race", "--race-entrants", "diffusers:magcache:calibrate=1"], "calibrate=1"),
    (["--race", "--race-entrants", "hasten:chords:x"], "hasten:chords:K"),
    (["--race", "--race-entrants", "hasten:abcache:9"], "order must be an integer in 1..4"),
    (["--race", "--race-entrants", "hasten:none"], "write hasten:sequential"),
    (["--race", "--race-entrants", "hasten:reuse,hasten:reuse"], "more than once"),
    (["--race", "--race-entrants", "magcache"], "hasten:... or diffusers:..."),
    (["--race", "--race-score", "clip"], "--race-score must be one of shapes"),
    (["--race", "--race-prompts", "a cat;"], "non-empty prompts"),
    (["--race", "--race-score", "shapes", "--race-prompts", "a red circle;a cat"], "--race-prompts"),
])
def test_bad_race_flags_are_refused_before_loading(tmp_path, capsys, flags, message):
    missing = tmp_path / "no-such-model"  # refused before the model is opened: it does not exist
    assert main(["bench", "--model", str(missing), "--steps", "4", *flags, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not (tmp_path / "o").exists()


def test_adherence_is_scored_where_the_model_has_a_scorer(flux):
    run = RunSpec.build(str(flux), "sequential", steps=4, batch=2, call={**CALL, "height": 32, "width": 32})
    report = run_race(RaceConfig(run, entrants=["hasten:reuse:interval=2"], prompts=["a red circle", "a blue square"],
                                 repeats=1, scorer="shapes", progress=False), None, log=lambda _: None)
    assert report["prompts"] == ["a red circle", "a blue square"]
    for row in report["rows"]:  # random weights draw no shape: a real score, and 0
        assert isinstance(row["adherence"], float) and 0 <= row["adherence"] <= 1
