"""The command line: JSON fields, files written, errors without tracebacks or partial files."""

import json
import subprocess
import sys

import pytest

from hasten.cli import main


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "hasten", *args], capture_output=True, text=True, cwd=cwd, timeout=300)


def test_sample_json_fields(tmp_path, capsys):
    out = tmp_path / "o"
    assert main(["sample", "--model", "gmm", "--method", "chords", "--cores", "8", "--steps", "50",
                 "--stop", "none", "--json", "--no-progress", "--out", str(out)]) == 0
    data = json.loads(capsys.readouterr().out)
    for key in ("method", "model", "steps", "cores", "init", "rounds", "nfe", "speedup", "rmse", "psnr",
                "wall_s", "hits"):
        assert key in data
    assert data["init"] == [0, 2, 4, 8, 16, 24, 32, 40]
    assert data["rounds"] == 50 and data["speedup"] == 1.0 and data["rmse"] <= 1e-5
    assert [(h["core"], h["round"]) for h in data["hits"]][0] == (8, 17)
    assert data["hits"][-1]["rmse"] <= 1e-5
    assert (out / "result.json").is_file() and (out / "latents.safetensors").is_file()


def test_sample_first_hit_speedup(tmp_path, capsys):
    assert main(["sample", "--model", "gmm-flow", "--cores", "8", "--json", "--no-progress",
                 "--out", str(tmp_path / "o")]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["rounds"] == 17 and data["speedup"] == pytest.approx(50 / 17) and 0 < data["rmse"] < 0.1


def test_sample_digits_saves_images_per_hit(tmp_path, capsys):
    out = tmp_path / "d"
    assert main(["sample", "--model", "digits", "--cores", "3", "--steps", "10", "--batch", "2", "--stop", "none",
                 "--no-progress", "--out", str(out)]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert "samples.png" in names and sum(n.startswith("hit_core") for n in names) == 3
    assert "| core | round |" in capsys.readouterr().out


@pytest.mark.parametrize("args,message", [
    (["--init", "1,8,16,32"], "init must start at 0"),
    (["--cores", "4", "--init", "0,8,16"], "one entry per core"),
    (["--cores", "0"], "cores must be an integer >= 1"),
    (["--steps", "4", "--cores", "4"], "steps must be greater than cores"),
    (["--stop", "residual:0"], "tolerance must be a finite number > 0"),
    (["--method", "magic"], "unknown method 'magic'"),
    (["--model", "nope"], "model 'nope' is not an embedded model"),
])
def test_errors_are_one_line_and_leave_no_files(tmp_path, args, message):
    out = tmp_path / "never"
    proc = run_cli("sample", "--model", "gmm", *args, "--out", str(out), "--no-progress")
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_bench_writes_the_report(tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["bench", "--model", "gmm", "--cores", "2,3", "--steps", "12,16", "--init", "paper,uniform",
                 "--batch", "4", "--no-progress", "--out", str(out)]) == 0
    table = capsys.readouterr().out
    assert "| method | solver | N | cores | params |" in table
    for name in ("results.json", "results.md", "convergence.png", "scaling.png"):
        assert (out / name).is_file(), name
    report = json.loads((out / "results.json").read_text())
    rows = report["rows"]
    assert len(rows) == 2 + 2 * 2 * 2  # sequential per N, chords per (N, K, init)
    for run in report["runs"]:
        assert run["max_abs_diff_vs_sequential"] <= 1e-5
        assert run["hits"][0]["round"] == min(h["round"] for h in run["hits"])
    chords = [r for r in rows if r["method"] == "chords"]
    assert all(r["speedup"] > 1 and r["rounds"] < r["steps"] for r in chords)


def test_bench_on_digits_writes_hit_grids(tmp_path):
    out = tmp_path / "r"
    assert main(["bench", "--model", "digits", "--cores", "2", "--steps", "8", "--batch", "4", "--no-progress",
                 "--out", str(out)]) == 0
    assert (out / "hits_chords_k2_paper_n8.png").is_file()
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert all(r["fd"] is not None for r in rows)


def test_bench_cache_forms_and_pinned_cache_entries(tmp_path, capsys):
    """--caches entries take form=; a method entry with cache=none runs once, not once per --caches entry."""
    out = tmp_path / "r"
    assert main(["bench", "--model", "gmm", "--methods", "sequential,sequential:steps=8:cache=none", "--steps", "16",
                 "--caches", "abcache:2:interval=2:form=x0,reuse:form=index,abcache:3:tol=0.05", "--batch", "2",
                 "--no-progress", "--out", str(out)]) == 0
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [(r["cache"], r["params"]) for r in rows] == [
        ("none", None), ("abcache:2 T=2 W=2 form=x0", ""), ("reuse T=3 W=1 form=index", ""),
        ("abcache:3 tol=0.05 W=3 form=eps", ""), ("none", " steps=8")]
    assert (out / "pareto.png").stat().st_size > 0  # model calls against quality, one line per cache family
    from hasten.report import cache_family

    assert [cache_family(r) for r in rows] == ["fewer steps", "abcache:2 fixed W=2 form=x0", "reuse fixed W=1 form=index",
                                               "abcache:3 adaptive W=3 form=eps", "fewer steps"]


def test_sample_cache_form(tmp_path, capsys):
    assert main(["sample", "--model", "gmm", "--method", "sequential", "--cache", "abcache:form=index",
                 "--json", "--no-progress", "--out", str(tmp_path / "o")]) == 0
    assert json.loads(capsys.readouterr().out)["cache"]["config"] == "abcache:2 T=3 W=2 form=index"
    assert main(["sample", "--model", "gmm", "--method", "sequential", "--cache", "abcache:tol=0.05",
                 "--json", "--no-progress", "--out", str(tmp_path / "o2")]) == 0
    assert json.loads(capsys.readouterr().out)["cache"]["config"] == "abcache:2 tol=0.05 W=2 form=eps"
    assert main(["sample", "--model", "gmm", "--cache", "abcache:tol=0.05:interval=2", "--no-progress"]) == 2
    assert "either interval (fixed schedule) or tol (adaptive), not both" in capsys.readouterr().err


def test_bench_refuses_bad_lists_before_work(tmp_path, capsys):
    assert main(["bench", "--model", "gmm", "--cores", "4,60", "--steps", "50", "--out", str(tmp_path / "x")]) == 2
    assert "steps must be greater than cores" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_help_explains_every_option():
    proc = run_cli("sample", "--help")
    for option in ("--model", "--method", "--cores", "--steps", "--init", "--stop", "--seed", "--batch", "--out",
                   "--json", "--speedup", "--solver"):
        assert option in proc.stdout
    assert "residual:TOL" in proc.stdout
    assert "Table 3" in run_cli("bench", "--help").stdout


def test_sample_speaks_the_bench_grammar(tmp_path, capsys):
    """--method takes bench's method specs; every method option has its sample flag too (they cannot drift)."""
    from hasten.cli import BUDGET_ONLY, build_parser
    from hasten.methods import OPTIONS

    flags = {a.dest for a in build_parser()._subparsers._group_actions[0].choices["sample"]._actions}
    assert {k for opts in OPTIONS.values() for k in opts} - set(BUDGET_ONLY) <= flags
    by_spec = ["sample", "--model", "gmm", "--method", "paradigms:window=6:tol=0.2", "--steps", "20", "--json",
               "--no-progress", "--out", str(tmp_path / "a")]
    assert main(by_spec) == 0
    spec = json.loads(capsys.readouterr().out)
    assert main(["sample", "--model", "gmm", "--method", "paradigms", "--cores", "6", "--tol", "0.2", "--steps", "20",
                 "--json", "--no-progress", "--out", str(tmp_path / "b")]) == 0
    flags_run = json.loads(capsys.readouterr().out)
    assert (spec["rounds"], spec["nfe"], spec["params"]) == (flags_run["rounds"], flags_run["nfe"], flags_run["params"])
