"""The command line tried as a new user would (issue 10): --out, bad input, messages, optional deps, noise."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import hasten
from hasten.cli import main
from hasten.errors import HastenError

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}


def cli(*args, env=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "hasten", *args], capture_output=True, text=True, timeout=timeout,
                          env=env or ENV)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# -- --out ------------------------------------------------------------------------------------------------------

def test_an_out_that_is_a_file_is_refused_before_any_model_call(tmp_path, capsys, monkeypatch):
    loaded = []
    monkeypatch.setattr("hasten.models.load_embedded", lambda *a, **k: loaded.append(1))
    (tmp_path / "taken").write_text("mine")
    for command in (["sample"], ["bench", "--methods", "sequential"]):
        assert main([*command, "--model", "digits", "--no-progress", "--out", str(tmp_path / "taken")]) == 2
        err = capsys.readouterr().err
        assert f"--out {tmp_path / 'taken'} is a file, not a folder" in err
    assert (tmp_path / "taken").read_text() == "mine" and loaded == []
    assert leftovers(tmp_path) == ["taken"]  # no hidden staging folder


def test_an_empty_model_and_a_capacity_without_latency_are_refused_not_defaulted(tmp_path, capsys, monkeypatch):
    loaded = []
    monkeypatch.setattr("hasten.models.load_embedded", lambda *a, **k: loaded.append(1))
    for command in (["sample"], ["bench", "--methods", "sequential"], ["tune", "--target", "psnr:30"]):
        assert main([*command, "--model", "", "--no-progress", "--out", str(tmp_path / "o")]) == 2
        assert "--model must be a non-empty string" in capsys.readouterr().err
    for capacity, message in (("0", "--emulate-capacity must be an integer >= 1, got 0"),
                              ("4", "--emulate-capacity applies to emulated devices; give --emulate-latency")):
        assert main(["bench", "--model", "digits", "--methods", "sequential", "--emulate-capacity", capacity,
                     "--no-progress", "--out", str(tmp_path / "o")]) == 2
        assert message in capsys.readouterr().err
    assert loaded == [] and not (tmp_path / "o").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_an_unwritable_out_is_refused_before_work(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        assert main(["sample", "--model", "gmm", "--no-progress", "--out", str(locked / "o")]) == 2
        assert "no permission to write" in capsys.readouterr().err
    finally:
        locked.chmod(0o700)


def test_a_reused_out_holds_only_the_new_runs_files(tmp_path, capsys):
    out = tmp_path / "o"
    (tmp_path / "o").mkdir()
    (out / "notes.txt").write_text("the user's own file")
    assert main(["sample", "--model", "digits", "--cores", "4", "--steps", "12", "--stop", "none", "--batch", "1",
                 "--no-progress", "--out", str(out)]) == 0
    first = [n for n in leftovers(out) if n.startswith("hit_")]
    assert len(first) == 4
    assert main(["sample", "--model", "digits", "--method", "sequential", "--steps", "12", "--batch", "1",
                 "--no-progress", "--out", str(out)]) == 0
    capsys.readouterr()
    hits = [n for n in leftovers(out) if n.startswith("hit_")]
    assert hits == ["hit_core1_round12.png"]  # the earlier run's four hit images are gone
    assert (out / "notes.txt").read_text() == "the user's own file"  # what hasten did not write stays


def test_sigterm_mid_run_leaves_nothing_behind_and_hits_appear_as_they_land(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "hasten", "sample", "--model", "digits", "--cores", "8",
                             "--steps", "400", "--stop", "none", "--batch", "1", "--no-progress", "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (out.is_dir() and any(out.glob("hit_*.png"))):
        time.sleep(0.05)
    assert any(out.glob("hit_*.png")), "a hit's image must be in --out while the run goes on"
    assert proc.poll() is None
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "interrupted" in err
    assert leftovers(tmp_path) == []  # the folder it created and every file it wrote are gone


# -- bad input: one line each ---------------------------------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["--batch", "0"], "--batch must be an integer >= 1, got 0"),
    (["--stop", ""], "--stop must be one of first"),
    (["--out", ""], "--out must name a folder"),
    (["--method", "parasolver-turbo", "--rho", "8", "--window", "4"], "rho=8 exceeds window=4"),
    (["--cache", "reuse:order=3"], "bad option 'order=3' for reuse in 'reuse:order=3'; use key=value with key in:"),
    (["--cache", "abcache:form=lambda"], "cache form must be one of paper, eps, x0, index, got 'lambda'"),
    (["--method", "paradigms:tol=0.1", "--tol", "0.2"], "sets tol=0.1 and --tol 0.2; give it once"),
    (["--steps", "1001"], "steps=1001: `num_inference_steps`: 1001 cannot be larger"),
    (["--batch", "1000000000"], "batch=1000000000: the initial latents alone need"),
    (["--height", "-8"], "--height must be a positive integer"),
    (["--prompt", "a cat"], "--prompt apply to diffusers pipelines"),
    (["--model", "./no/such/pipe"], "model ./no/such/pipe: no such folder"),
])
def test_bad_input_is_one_clear_line(tmp_path, capsys, args, message):
    argv = ["sample", "--model", "digits", "--steps", "10", "--no-progress", "--out", str(tmp_path / "o")]
    assert main(argv + args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err
    assert not (tmp_path / "o").exists()


def test_init_empty_names_the_option():
    proc = cli("sample", "--model", "gmm", "--init", "")
    assert proc.returncode == 2 and "argument --init: needs paper, uniform or comma-separated" in proc.stderr


@pytest.fixture(scope="module")
def tiny_flux(tmp_path_factory):
    from hasten.testing.pipelines import save_tiny_pipeline

    return save_tiny_pipeline("flux", tmp_path_factory.mktemp("pipes") / "flux")


@pytest.mark.parametrize("args, message", [
    ([], "FluxPipeline: Provide either `prompt` or `prompt_embeds`"),
    (["--prompt", "a cat", "--height", "1"], "smaller than one latent patch"),
])
def test_pipeline_argument_errors_are_one_line(tmp_path, tiny_flux, args, message):
    proc = cli("sample", "--model", str(tiny_flux), "--steps", "4", "--cores", "2", "--no-progress",
               "--out", str(tmp_path / "o"), *args)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert not (tmp_path / "o").exists()


def test_make_tiny_onto_a_file_is_refused(tmp_path):
    (tmp_path / "f").write_text("x")
    proc = cli("make-tiny", "--kind", "ddim", "--out", str(tmp_path / "f"))
    assert proc.returncode == 2 and "is a file, not a folder" in proc.stderr and "Traceback" not in proc.stderr


def test_the_api_takes_pipeline_folders_and_names_pipeline_errors(tiny_flux):
    result = hasten.sample(str(tiny_flux), "chords", cores=2, steps=4, stop="first",
                           call={"prompt": "a cat", "height": 32, "width": 32})
    assert result.rounds < 4 and torch.isfinite(result.x).all()
    with pytest.raises(HastenError, match="prompt apply to diffusers pipelines"):
        hasten.sample("gmm", call={"prompt": "a cat"})
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(str(tiny_flux))
    with pytest.raises(HastenError, match="FluxPipeline: Provide either `prompt`"):
        hasten.accelerate(pipe)(num_inference_steps=4)


# -- optional dependencies and noise --------------------------------------------------------------------------

def test_sample_needs_no_plotting_library_and_bench_says_so_before_work(tmp_path):
    blocker = tmp_path / "block"
    blocker.mkdir()
    (blocker / "matplotlib.py").write_text("raise ImportError('matplotlib is not installed')\n")
    env = {**ENV, "PYTHONPATH": f"{blocker}{os.pathsep}{REPO / 'src'}"}
    proc = cli("sample", "--model", "digits", "--steps", "8", "--cores", "2", "--batch", "2", "--no-progress",
               "--out", str(tmp_path / "s"), env=env)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "s" / "samples.png").is_file()
    start = time.monotonic()
    proc = cli("bench", "--model", "digits", "--no-progress", "--out", str(tmp_path / "b"), env=env)
    assert proc.returncode == 2 and "need matplotlib" in proc.stderr and time.monotonic() - start < 30
    assert not (tmp_path / "b").exists()


def test_no_progress_is_quiet_on_a_pipeline(tmp_path, tiny_flux):
    proc = cli("sample", "--model", str(tiny_flux), "--prompt", "a cat", "--steps", "4", "--cores", "2",
               "--no-progress", "--out", str(tmp_path / "o"))
    assert proc.returncode == 0, proc.stderr
    assert "Loading pipeline components" not in proc.stderr and "torchvision" not in proc.stderr
    assert "%|" not in proc.stderr  # no progress bar of any kind


def test_help_says_each_default_once_and_tables_name_the_width():
    proc = cli("sample", "--help")
    assert proc.returncode == 0
    text = " ".join(proc.stdout.split())
    assert text.count("(default:") == text.count("(default: ") and "(default: None)" not in text
    assert "default: length of --init, else 4) (default" not in text


def test_window_methods_report_their_width_not_one_core(tmp_path, capsys):
    assert main(["sample", "--model", "gmm", "--method", "paradigms", "--cores", "6", "--json", "--no-progress",
                 "--out", str(tmp_path / "o")]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["cores"] is None and summary["width"] == 6


def test_a_node_that_never_joins_fails_within_the_rendezvous_timeout(tmp_path):
    """The README's advice: torchrun's own rendezvous waits 600 s unless --rdzv-conf timeout=... is given."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node_rank", "0",
                           "--nproc_per_node", "1", "--master_addr", "127.0.0.1", "--master_port", str(port),
                           "--rdzv-conf", "timeout=5", "-m", "hasten", "sample", "--model", "gmm",
                           "--executor", "distributed", "--no-progress", "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=120, env=ENV)
    assert proc.returncode != 0 and time.monotonic() - start < 60
    assert "waiting for clients" in proc.stderr


def test_prompt_embeds_of_the_wrong_width_are_refused_before_any_forward():
    from hasten.testing.pipelines import tiny_pipeline

    pipe = tiny_pipeline("sd")
    calls = []
    pipe.unet.register_forward_pre_hook(lambda *_: calls.append(1))
    with pytest.raises(HastenError, match="prompt_embeds has width 32 but UNet2DConditionModel takes 16"):
        hasten.accelerate(pipe)(prompt_embeds=torch.randn(1, 16, 32), num_inference_steps=2, guidance_scale=1.0)
    assert calls == []
