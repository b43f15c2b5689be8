"""hasten serve's flags are checked before the model loads or a port is bound."""

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
