"""hasten serve's flags are checked before the model loads or a port is bound."""

import sys

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

from hasten.cli import main  # noqa: E402


@pytest.mark.parametrize("argv, words", [
    (["--steps", "0"], "steps"),
    (["--cores", "60", "--steps", "50"], "cores"),
    (["--stop", "sometimes"], "stop"),
    (["--cache", "magic"], "cache"),
    (["--queue", "-1"], "--queue"),
    (["--max-batch", "0"], "--max-batch"),
    (["--request-timeout", "0"], "--request-timeout"),
    (["--timeout", "nan"], "--timeout"),
    (["--methods", "chords,magic"], "--methods"),
    (["--method", "srds", "--methods", "chords"], "--methods"),
    (["--size", "16x16"], "--size"),  # embedded models have their own size
    (["--backend", "gloo"], "--backend"),
    (["--model", "gmm"], "not images"),
    (["--model", "/no/such/folder"], "no such folder"),
])
def test_bad_flags_fail_with_one_line_before_serving(argv, words, capsys):
    args = ["serve", "--port", "0"] + (argv if "--model" in argv else ["--model", "digits", *argv])
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("hasten: error:") and words in err and "Traceback" not in err


def test_serve_is_listed_with_its_flags(capsys):
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    out = capsys.readouterr().out
    for flag in ("--api-key", "--queue", "--max-batch", "--preview", "--executor", "--request-timeout"):
        assert flag in out


def test_ray_without_the_extra_is_one_line_naming_it(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray fails, as where hasten[ray] is not installed
    assert main(["serve", "--ray", "--replicas", "2", "--model", "digits", "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hasten: error:") and "hasten[ray]" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("argv, words", [
    (["--replicas", "2"], "--replicas applies with --ray only"),
    (["--ray", "--replicas", "0"], "--replicas"),
    (["--ray", "--replicas", "2", "--max-replicas", "3"], "--max-replicas"),
    (["--ray", "--min-replicas", "3", "--max-replicas", "2"], "--max-replicas must be >= --min-replicas"),
    (["--ray", "--target-ongoing-requests", "2"], "--target-ongoing-requests applies"),
    (["--ray", "--replica-gpus", "-1"], "--replica-gpus"),
])
def test_ray_flags_are_checked_naming_the_flag(argv, words, capsys):
    assert main(["serve", "--model", "digits", "--port", "0", *argv]) == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err
