"""The run description (issue 20): one validated shape for every surface, and the bad input it now refuses."""

import json
import logging

import pytest
import torch

import hasten
from hasten import HastenError
from hasten.cli import main
from hasten.config import load_config, merge_config, save_config
from hasten.spec import Placement, RunSpec, Sampling


# -- one shape ---------------------------------------------------------------------------------------------------

def test_the_dict_form_round_trips_and_reproduces_the_run():
    spec = RunSpec.build("gmm", "chords", cores=3, steps=12, batch=2, seed=4, init="uniform",
                         cache="abcache:2:interval=2")
    assert RunSpec.from_dict(spec.to_dict()) == spec
    result = hasten.sample(spec)
    again = hasten.sample(RunSpec.from_dict(result.summary()["run"]))  # a report's run description runs it again
    assert torch.equal(result.x, again.x) and (result.rounds, result.nfe) == (again.rounds, again.nfe)
    assert result.summary()["run"]["cache"] == "abcache:2:interval=2"


def test_every_surface_builds_the_same_run():
    by_api = hasten.sample("gmm", "paradigms", cores=6, tol=0.2, steps=20, batch=2)
    by_spec = hasten.sample(RunSpec.build("gmm", "paradigms:window=6:tol=0.2", steps=20, batch=2))
    assert by_api.run == by_spec.run and torch.equal(by_api.x, by_spec.x)
    assert by_api.run["cores"] == 6 and by_api.run["options"] == {"tol": 0.2}


def test_the_budget_by_its_own_name_is_the_cores():
    assert Sampling("chords:cores=8") == Sampling("chords", cores=8)
    assert Sampling("paradigms:window=8") == Sampling("paradigms", cores=8)
    assert Sampling("parasolver-turbo:rho=4:window=12").options == {"window": 12}
    with pytest.raises(HastenError, match="cores=4 disagree; give it once"):
        Sampling("chords:cores=8", cores=4)


def test_sample_and_bench_take_chords_cores_in_the_spec(tmp_path, capsys):
    assert main(["sample", "--model", "gmm", "--method", "chords:cores=3", "--steps", "12", "--json", "--no-progress",
                 "--out", str(tmp_path / "s")]) == 0
    assert json.loads(capsys.readouterr().out)["cores"] == 3
    assert main(["bench", "--model", "gmm", "--methods", "sequential,chords:cores=3", "--steps", "12", "--batch", "2",
                 "--no-progress", "--out", str(tmp_path / "b")]) == 0
    rows = json.loads((tmp_path / "b" / "results.json").read_text())["rows"]
    assert [r["cores"] for r in rows if r["method"] == "chords"] == [3]


def test_a_merged_method_drops_the_old_methods_options():
    base = Sampling("chords", cores=6, options={"init": "uniform"}, steps=30)
    assert base.merged(steps=40) == Sampling("chords", cores=6, options={"init": "uniform"}, steps=40)
    other = base.merged(method="paradigms")
    assert (other.name, other.cores, other.options, other.stop) == ("paradigms", None, {}, "none")


# -- bad input, refused when the description is built --------------------------------------------------------------

@pytest.mark.parametrize("settings, message", [
    (dict(cache="abcache:2:interval=3:interval=4"), "option interval of abcache is given twice"),
    (dict(cache="abcache:2:order=3"), "option order of abcache is given twice"),
    (dict(method="paradigms:tol=0.1:tol=0.2"), "option tol of paradigms is given twice"),
    (dict(method=""), "method must name one of"),
    (dict(cache=""), "cache must be a non-empty string"),
    (dict(cache="abcache: 2"), "has a space in it"),
    (dict(method="chords", cache="abcache:2:tol=inf"), "cache tol must be a number > 0 and finite"),
    (dict(method="chords", speedup=float("inf")), "speedup must be > 1 and finite"),
    (dict(call={"guidance_scale": float("nan")}), "guidance_scale must be a finite number"),
    (dict(timeout=0), "timeout must be a number of seconds > 0"),
    (dict(timeout=-1), "timeout must be a number of seconds > 0"),
    (dict(timeout=float("nan")), "timeout must be a finite number"),
    (dict(method="paradigms", window=60, steps=50), "window=60 exceeds the 50 steps"),
    (dict(seed=2**64), "seed must be an integer in 0..9223372036854775807"),
    (dict(seed=-1), "seed must be an integer in 0.."),
    (dict(batch=0), "batch must be an integer >= 1"),
    (dict(call={"height": 0}), "height must be a positive integer"),
    (dict(executor="cluster"), "executor must be one of batched, distributed"),
    (dict(dtype="int4"), "is not supported"),
])
def test_bad_settings_are_refused_before_any_model_is_opened(settings, message, monkeypatch):
    opened = []
    monkeypatch.setattr("hasten.opening.open_model", lambda *a, **k: opened.append(1))
    with pytest.raises(HastenError, match=message):
        RunSpec.build("gmm", **{"method": "sequential", **settings})
    assert opened == []


def test_a_dtype_the_model_cannot_take_is_refused_not_ignored():
    with pytest.raises(HastenError, match="dtype bfloat16 does not apply to gmm"):
        hasten.sample("gmm", dtype="bfloat16")
    assert hasten.sample("digits", steps=4, dtype="float32").x.dtype == torch.float32


def test_unknown_keys_are_named():
    with pytest.raises(HastenError, match="unknown key 'stpes'"):
        RunSpec.from_dict({"stpes": 3})
    with pytest.raises(HastenError, match="method chords does not take stpes"):
        hasten.sample("gmm", "chords", stpes=3)
    with pytest.raises(HastenError, match="backend applies to the distributed executor only"):
        Placement(backend="gloo")


# -- config files -------------------------------------------------------------------------------------------------

def test_config_files_name_what_is_wrong(tmp_path):
    (tmp_path / "binary.json").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    with pytest.raises(HastenError, match="is not a JSON file: it is not UTF-8 text"):
        load_config(tmp_path / "binary.json")
    with pytest.raises(HastenError, match="hasten_config 7 is not a version this hasten reads"):
        load_config({"hasten_config": 7, "method": "chords"})
    with pytest.raises(HastenError, match="is a folder"):
        load_config(tmp_path)
    assert main(["sample", "--config", str(tmp_path / "binary.json"), "--out", str(tmp_path / "o")]) == 2
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("key, value, need", [
    ("tune", "fast", "an object"), ("options", "window=8", "an object"), ("call", ["a cat"], "an object"),
    ("steps", "50", "an integer"), ("seed", True, "an integer"), ("timeout", "30", "an integer or a number"),
    ("local_files_only", 1, "true or false"), ("model", 7, "a string"), ("method", None, "a string"),
])
def test_every_config_field_is_checked_by_type_and_named(tmp_path, capsys, key, value, need):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"method": "chords", "steps": 12, key: value}))
    with pytest.raises(HastenError, match=f"key '{key}' must be {need}, got "):
        load_config(path)
    assert main(["sample", "--config", str(path), "--no-progress", "--out", str(tmp_path / "o")]) == 2
    assert f"key '{key}' must be {need}" in capsys.readouterr().err and not (tmp_path / "o").exists()


def test_a_config_records_its_model_and_says_when_used_on_another(tmp_path, caplog, capsys):
    path = save_config({"model": "gmm", "method": "chords", "cores": 3, "steps": 12, "stop": "none"},
                       tmp_path / "c.json")
    assert json.loads(path.read_text())["hasten_config"] == 2
    with caplog.at_level(logging.WARNING, logger="hasten.config"):
        assert merge_config(path, model="gmm").model == "gmm" and not caplog.records
        assert merge_config(path, model="gmm-flow").model == "gmm-flow"
    assert "tuned for model gmm; it runs here on gmm-flow" in caplog.text
    # without --model, the file's model is used
    assert main(["sample", "--config", str(path), "--json", "--no-progress", "--out", str(tmp_path / "o")]) == 0
    assert json.loads(capsys.readouterr().out)["model"] == "gmm"


def test_version_one_configs_still_read():
    spec = merge_config({"method": "paradigms", "steps": 20, "solver": None, "cores": 4, "options": {"tol": 0.3},
                         "cache": None, "stop": None}, model="gmm")
    assert spec.sampling == Sampling("paradigms", cores=4, options={"tol": 0.3}, steps=20)
