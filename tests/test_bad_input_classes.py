"""Bad input found by trying the command line as a new user would (issue 20): files, tune, sizes and ranks.

Each class gets a clean one-line error (exit 2, no traceback) before work where possible, and leaves no files.
"""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hasten.cli import main
from hasten.output import OutputFolder

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}


def one_line_error(capsys, *argv, code=2) -> str:
    assert main(list(argv)) == code
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith("hasten: "), err
    return err


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory):
    from hasten.testing.pipelines import save_tiny_pipeline

    return save_tiny_pipeline("sd", tmp_path_factory.mktemp("pipes") / "sd")


# -- files ----------------------------------------------------------------------------------------------------------

def test_a_cut_download_is_named_not_a_traceback(tmp_path, tiny_sd, capsys):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_sd, broken)
    weights = next((broken / "unet").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:100])  # a download cut short
    err = one_line_error(capsys, "sample", "--model", str(broken), "--prompt", "a cat", "--steps", "2",
                         "--no-progress", "--out", str(tmp_path / "o"))
    assert "is not a readable safetensors file (truncated or corrupt" in err and not (tmp_path / "o").exists()
    weights.write_bytes(b"")
    assert "not a readable safetensors file" in one_line_error(
        capsys, "sample", "--model", str(broken), "--prompt", "a cat", "--no-progress", "--out", str(tmp_path / "o"))


@pytest.mark.parametrize("out, message", [
    ("/proc/hasten-out", "cannot write there"),
    ("/sys/hasten-out", "cannot write there"),
    ("{tmp}/" + "n" * 300, "cannot write there (File name too long)"),
    ("{tmp}/dangling", "is a symbolic link to nothing"),
])
def test_an_out_that_cannot_be_created_is_refused_before_the_model_loads(tmp_path, capsys, monkeypatch, out, message):
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    loaded = []
    monkeypatch.setattr("hasten.models.load_embedded", lambda *a, **k: loaded.append(1))
    err = one_line_error(capsys, "sample", "--model", "digits", "--no-progress", "--out", out.format(tmp=tmp_path))
    assert message in err and loaded == []


def test_a_failed_nested_out_leaves_no_parent_folders(tmp_path):
    out = tmp_path / "a" / "b" / "c"
    with pytest.raises(RuntimeError):
        with OutputFolder(out) as folder:
            folder.stream("hit.png").write_text("partial")
            raise RuntimeError("the run failed")
    assert list(tmp_path.iterdir()) == []


def test_an_interrupted_rerun_leaves_the_previous_run_as_it_was(tmp_path):
    out = tmp_path / "o"
    with OutputFolder(out) as folder:  # the previous run, complete
        folder.stream("hit_core1_round5.png").write_text("old hit")
        (folder / "results.json").write_text("old results")
    before = {p.name: p.read_text() for p in out.iterdir()}
    with pytest.raises(KeyboardInterrupt):
        with OutputFolder(out) as folder:
            folder.stream("hit_core1_round5.png").write_text("new hit")  # same name as the old run's
            folder.stream("hit_core2_round3.png").write_text("new")
            raise KeyboardInterrupt
    assert {p.name: p.read_text() for p in out.iterdir()} == before


def test_make_tiny_replaces_an_earlier_pipeline_whole_and_refuses_other_folders(tmp_path, capsys):
    out = tmp_path / "pipe"
    assert main(["make-tiny", "--kind", "ddim", "--out", str(out)]) == 0
    (out / "old_component").mkdir()  # what an earlier pipeline of another kind left
    assert main(["make-tiny", "--kind", "ddpm", "--out", str(out)]) == 0
    assert not (out / "old_component").exists() and json.loads((out / "model_index.json").read_text())[
        "_class_name"] == "DDPMPipeline"
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    capsys.readouterr()
    assert "holds files that are not a saved pipeline" in one_line_error(
        capsys, "make-tiny", "--kind", "ddim", "--out", str(mine))
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]


# -- tune and bench lists -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["--comm-ms", "nan", "--devices", "2"], "--comm-ms must be a finite number >= 0"),
    (["--comm-ms", "inf", "--devices", "2"], "--comm-ms must be a finite number >= 0"),
    (["--methods", ""], "--methods needs at least one value"),
    (["--widths", "0", "--methods", "paradigms"], "--widths 0: each must be in 2..20 for 20 steps"),
    (["--cores", "4,40", "--methods", "chords"], "--cores 40: each must be in 2..19 for 20 steps"),
    (["--cores", "4,4", "--methods", "chords"], "--cores lists 4 more than once"),
    (["--methods", "chords,chords"], "--methods lists chords more than once"),
])
def test_tune_refuses_bad_lists_before_work(tmp_path, capsys, args, message):
    err = one_line_error(capsys, "tune", "--model", "gmm", "--target", "psnr:30", "--steps", "20", "--no-progress",
                         "--out", str(tmp_path / "t"), *args)
    assert message in err and not (tmp_path / "t").exists()


def test_tune_without_a_candidate_that_meets_the_target_says_so_and_fails(tmp_path, capsys):
    out = tmp_path / "t"
    err = one_line_error(capsys, "tune", "--model", "gmm", "--target", "psnr:500", "--steps", "12", "--methods",
                         "sequential", "--no-progress", "--out", str(out), code=1)
    assert "No candidate meets psnr:500" in err and "no best.json was written" in err
    assert (out / "tune.json").is_file() and not (out / "best.json").exists()
    assert "No candidate meets" in (out / "tune.md").read_text()


@pytest.mark.parametrize("args, message", [
    (["--caches", ""], "--caches needs at least one value"),
    (["--methods", ""], "--methods needs at least one value"),
    (["--cores", "4,4"], "--cores lists 4 more than once"),
    (["--methods", "sequential,chords,chords"], "--methods lists chords more than once"),
    (["--steps", "1001"], "steps=1001"),
    (["--repeats", "0"], "--repeats must be an integer >= 1"),
])
def test_bench_refuses_bad_lists(tmp_path, capsys, args, message):
    err = one_line_error(capsys, "bench", "--model", "digits", "--batch", "2", "--no-progress",
                         "--out", str(tmp_path / "b"), *args)
    assert message in err and not (tmp_path / "b").exists()


# -- sizes --------------------------------------------------------------------------------------------------------

def test_sizes_too_large_for_memory_get_a_clean_line(tmp_path, tiny_sd, capsys):
    err = one_line_error(capsys, "sample", "--model", str(tiny_sd), "--prompt", "a cat", "--height", "200000",
                         "--width", "200000", "--steps", "2", "--cores", "1", "--no-progress",
                         "--out", str(tmp_path / "o"))
    assert "needs 596.0 GiB for its latents alone" in err and not (tmp_path / "o").exists()
    assert "--seed must be an integer in 0.." in one_line_error(
        capsys, "sample", "--model", "digits", "--seed", str(2**64), "--out", str(tmp_path / "o"))


# -- ranks --------------------------------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_when_rank_0_is_killed_the_survivor_exits_with_hastens_code_and_leaves_no_out(tmp_path):
    """Two nodes launched separately (one torchrun each); rank 0's process is killed mid-run."""
    port = _free_port()
    job = ["-m", "hasten", "sample", "--model", "digits", "--method", "chords", "--cores", "2", "--steps", "400",
           "--solver", "ddpm", "--batch", "4", "--stop", "none", "--executor", "distributed", "--timeout", "5",
           "--no-progress"]
    nodes = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node_rank", str(r),
                               "--nproc_per_node", "1", "--master_addr", "127.0.0.1", "--master_port", str(port),
                               "--rdzv-conf", "timeout=60", *job, "--out", str(tmp_path / f"out{r}")],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV) for r in (0, 1)]
    try:
        worker = None
        deadline = time.monotonic() + 90
        while worker is None and time.monotonic() < deadline:  # rank 0's worker, once it is sampling
            time.sleep(0.5)
            for pid in os.listdir("/proc"):
                try:
                    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
                    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                except (OSError, ValueError):
                    continue
                if b"RANK=0" in environ and f"{port}".encode() in b"".join(environ) and b"hasten" in cmdline \
                        and b"torch.distributed.run" not in cmdline:
                    worker = int(pid)
        assert worker is not None, "rank 0 never started"
        time.sleep(6)  # past the rendezvous and the model load
        os.kill(worker, 9)
        start = time.monotonic()
        err = nodes[1].communicate(timeout=120)[1]
        nodes[0].communicate(timeout=60)
    finally:
        for p in nodes:
            if p.poll() is None:
                p.kill()
    assert time.monotonic() - start < 60
    assert "hasten: error: distributed run failed" in err or "hasten: interrupted" in err, err[-2000:]
    assert "exitcode  : -6" not in err and "SIGABRT" not in err  # hasten's own exit code, not an abort
    assert not (tmp_path / "out0").exists() and not (tmp_path / "out1").exists()


def test_a_stalled_rank_on_another_node_leaves_when_the_first_launch_ends(tmp_path):
    """Rank 0 fails while rank 1 sleeps outside any collective; once node 0's launch (and its rendezvous store)
    is gone, the watchdog ends rank 1, so node 1's torchrun exits within about --timeout, not after the sleep."""
    port = _free_port()
    worker = str(Path(__file__).with_name("stall_worker.py"))
    nodes = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node_rank", str(r),
                               "--nproc_per_node", "1", "--master_addr", "127.0.0.1", "--master_port", str(port),
                               "--rdzv-conf", "timeout=60", worker, "4"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV) for r in (0, 1)]
    try:
        out0 = nodes[0].communicate(timeout=120)
        ended = time.monotonic()
        err1 = nodes[1].communicate(timeout=120)[1]
        waited = time.monotonic() - ended
    finally:
        for p in nodes:
            if p.poll() is None:
                p.kill()
    assert nodes[0].returncode != 0 and "rank 0 fails" in out0[0], out0
    assert nodes[1].returncode != 0 and "rendezvous store has been unreachable" in err1, err1[-2000:]
    assert waited < 30, waited
