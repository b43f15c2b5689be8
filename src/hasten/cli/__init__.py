"""Command line: ``hasten sample``, ``bench``, ``tune``, ``demo``, ``serve`` and ``make-tiny``.

The options the commands share are declared once (:mod:`hasten.cli.options`);
each command's parser adds the groups it takes and then its own flags. What
a command does lives in :mod:`hasten.cli.commands`.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys

import torch

from hasten.cli.inputs import add_input_options
from hasten.cli.options import (BUDGET_ONLY, CACHE_GRAMMAR, add_call_options, add_method_options, add_model_options,
                                add_placement_options, add_report_options, add_run_options, flag_names, int_list,
                                str_list)
from hasten.errors import HastenError
from hasten.methods import METHODS

__all__ = ["BUDGET_ONLY", "build_parser", "main"]


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a default only where there is one and the help text does not already say it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default in (None, False, argparse.SUPPRESS) or "default" in text:
            return text
        return super()._get_help_string(action)


def _sample_parser(sub) -> None:
    s = sub.add_parser("sample", help="sample with one method and save the result", formatter_class=_Help,
                       description="Sample with one method; quality is measured against sequential sampling "
                                   "of the same seed. Writes result.json, latents.safetensors and, for image "
                                   "models, samples.png and one PNG per hit as it lands.")
    add_model_options(s, default=None)
    add_call_options(s)
    add_input_options(s)
    add_run_options(s, 4)
    add_method_options(s)
    add_placement_options(s)
    s.add_argument("--config", help="a config file written by hasten tune (best.json): method, steps, solver, "
                   "cores, method options, cache, stop and model from the file; flags given here override it (a "
                   "--method other than the file's drops the file's cores and options)")
    s.add_argument("--out", default="out", help="output folder (files of an earlier run there are replaced)")
    s.add_argument("--json", action="store_true", help="print one JSON object instead of a table")


def _bench_parser(sub) -> None:
    b = sub.add_parser("bench", help="run methods side by side and write a report", formatter_class=_Help,
                       description="Run sequential and parallel methods on the same seed and write results.md, "
                                   "results.json, convergence.png, scaling.png and one image grid per run. "
                                   "Lists run as a grid: --init paper,uniform gives the initialisation "
                                   "ablation (CHORDS Table 3), --steps 50,75,100 the steps ablation (Table 4).")
    add_model_options(b)
    add_call_options(b)
    add_input_options(b)
    add_run_options(b, 64)
    add_placement_options(b, timeout=60.0, executor_help=(
        "distributed: run inside torchrun; the sequential reference runs on each process alone (the one-device "
        "baseline), the other methods spread each round over the ranks"))
    b.add_argument("--methods", type=str_list, default=["sequential", "chords"],
                   help=f"comma-separated methods ({', '.join(METHODS)}), each optionally with options "
                        "as name:key=value:key=value, e.g. parasolver-turbo:window=24:rho=8")
    b.add_argument("--cores", type=int_list, default=[4, 6, 8],
                   help="comma-separated per-round budgets: CHORDS cores, ParaDiGMS/ParaSolver window, SRDS "
                        "cap, ParaSolver-Turbo rho (unless the method's own options set it)")
    b.add_argument("--steps", type=str_list, default=["50"],
                   help="comma-separated step counts N, each optionally with its solver, e.g. ddpm:1000,50,25")
    b.add_argument("--init", type=str_list, default=["paper"], help="comma-separated: paper, uniform")
    b.add_argument("--caches", type=str_list, default=["none"],
                   help=f"comma-separated caches run with every method. {CACHE_GRAMMAR} A method entry like "
                        "sequential:steps=25 runs on fewer steps (the '50%%' steps baseline); :cache=none (or reuse) "
                        "pins its cache. With a pipeline folder, diffusers' own hooks run with sequential sampling: "
                        "diffusers:firstblock[:threshold=0.2], diffusers:taylorseer, diffusers:magcache[:...]")
    b.add_argument("--until-stop", action="store_true",
                   help="stop each CHORDS run at the stop rule instead of running it to the end (faster; the "
                        "convergence plot then has fewer hits)")
    b.add_argument("--emulate-latency", type=float, metavar="SECONDS",
                   help="emulated devices: every forward of R network rows takes SECONDS x ceil(R / "
                        "--emulate-capacity), the model computing the numbers inside that time and sleeping the "
                        "rest (no CPU), so many ranks on few cores behave like many devices")
    b.add_argument("--emulate-capacity", type=int, default=1,
                   help="rows one emulated device runs in one latency (1: a saturated device)")
    add_report_options(b, repeats=1, out="report", report="results.json",
                       repeats_help="timed runs of each configuration after its warm-up; the table shows the median "
                                    "wall time (rounds and NFE are the same in every run)")
    from hasten.cli.race import add_race_options

    add_race_options(b)


def _tune_parser(sub) -> None:
    u = sub.add_parser("tune", help="find the fastest configuration that meets a quality target on D devices",
                       formatter_class=_Help,
                       description="Measure this device's forward latency against rows per forward, sample a "
                                   "sequential reference, run candidate configurations (methods x cores x "
                                   "tolerances x caches, pruned once a chain misses the target), predict each "
                                   "one's wall time on --devices devices from its rounds, rows per round and the "
                                   "latency curve, and print them ranked. Writes tune.json, tune.md, pareto.png and "
                                   "best.json, the winner, for `hasten sample --config` and "
                                   "hasten.accelerate(pipe, config=...). Exits 1, without best.json, when no "
                                   "candidate meets the target.")
    add_model_options(u)
    add_call_options(u)
    add_run_options(u, 4, stop=False)  # tune chooses each candidate's stop rule
    add_placement_options(u, executor=False, compile=False)
    from hasten.tune.target import TARGET_FORMS

    u.add_argument("--target", required=True, help=f"quality target against sequential sampling of the same seed: "
                   f"{TARGET_FORMS}")
    u.add_argument("--devices", type=int, default=1, help="devices D the prediction is for (the distributed executor "
                   "splits each round's rows over D ranks)")
    u.add_argument("--steps", type=int, default=50, help="sampling steps N of the reference")
    u.add_argument("--cores", type=int_list, help="CHORDS core counts to try (default: 2,3,4,6,8, those below "
                   "--steps)")
    u.add_argument("--widths", type=int_list,
                   help="ParaDiGMS windows and ParaSolver-Turbo rho values to try (default: 4,8, those up to --steps)")
    u.add_argument("--methods", type=str_list,
                   help="candidate families (default: all): sequential (fewer steps), abcache (sequential + "
                        "AB-Cache), chords, chords+abcache, paradigms, parasolver-turbo")
    u.add_argument("--threads", type=int, help="torch threads of the latency curve (default: what each distributed "
                   "worker gets: OMP_NUM_THREADS or 1, divided by --devices; this process's count for one device)")
    u.add_argument("--comm-ms", type=float, help="communication per round in ms for D > 1 (default: the all-gather "
                   "measured over D gloo processes on this CPU)")
    u.add_argument("--latency-table", metavar="FILE", help="JSON of forward seconds against rows at each context "
                   "degree (and optionally the all-gather) for devices that cannot be measured here; ranks the "
                   "--devices layouts (T time groups x C context ranks) from it instead of measuring "
                   "(format: hasten.tune.layouts)")
    add_report_options(u, repeats=5, out="tune", report="tune.json",
                       repeats_help="timings per latency point (the median is used)")


def _make_tiny_parser(sub) -> None:
    t = sub.add_parser("make-tiny", help="save a tiny random diffusers pipeline (for tests and docs)",
                       formatter_class=_Help,
                       description="Build a tiny pipeline from configs with random weights (no download) and "
                                   "save it with save_pretrained, for `hasten sample/bench --model PATH`. An "
                                   "earlier pipeline in --out is replaced whole.")
    from hasten.testing.pipelines import KINDS

    t.add_argument("--kind", choices=list(KINDS), default="sd", help="pipeline family (and image-input workflow)")
    t.add_argument("--out", help="folder to save the pipeline into")
    t.add_argument("--lora", metavar="FILE", help="also (or only) write a small random LoRA (.safetensors) for the "
                   "tiny pipeline of --kind, for `hasten sample --lora` and `hasten serve --lora`")


def _demo_parser(sub) -> None:
    d = sub.add_parser("demo", help="what hasten gives on this machine: AB-Cache on one device, CHORDS on every "
                       "device under torchrun, round speedups labelled as what K devices would give",
                       formatter_class=_Help,
                       description="Benchmark the embedded digits model: sequential, AB-Cache and CHORDS K=4,6,8 "
                                   "on one device, then CHORDS with one core per device in a real torchrun launch "
                                   "(GPUs with NCCL, else CPU cores with gloo). Every configuration is timed after "
                                   "a warm-up and repeated (median). Writes demo.md, demo.json and the bench "
                                   "reports (results.*, convergence.png, scaling.png, pareto.png, hits_*.png).")
    d.add_argument("--batch", type=int, default=16, help="samples drawn together")
    d.add_argument("--repeats", type=int, default=3, help="timed runs per configuration (the median is shown)")
    d.add_argument("--devices", type=int, help="processes of the torchrun launch (default: the GPUs, else the CPU "
                   "cores, at most 8; 1 skips it)")
    d.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    d.add_argument("--out", default="report", help="output folder (files of an earlier run there are replaced)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hasten", description="Training-free acceleration of diffusion sampling.",
                                     formatter_class=_Help)
    sub = parser.add_subparsers(dest="command", required=True)
    _sample_parser(sub)
    _make_tiny_parser(sub)
    _tune_parser(sub)
    _bench_parser(sub)
    _demo_parser(sub)
    from hasten.cli.serve import add_serve_parser

    add_serve_parser(sub, _Help)
    return parser


def _quiet(no_progress: bool) -> None:
    """Silence what is noise on a command line: loading bars (with --no-progress)."""
    if no_progress:
        from diffusers.utils import logging as diffusers_logging

        diffusers_logging.disable_progress_bar()
        try:
            from transformers.utils import logging as transformers_logging

            transformers_logging.disable_progress_bar()
        except ImportError:  # transformers is optional
            pass


def _terminate(signum, frame) -> None:
    """SIGTERM (torchrun stopping a job, a scheduler's kill) unwinds like Ctrl-C, so --out is cleaned."""
    raise KeyboardInterrupt


def _dispatch(args: argparse.Namespace) -> int:
    from hasten.cli import commands

    if args.command == "make-tiny":
        return commands.make_tiny(args)
    if args.command == "sample":
        summary = commands.sample(args)
        if summary is None:
            return 0
        if args.json:
            from hasten.report import json_safe

            print(json.dumps(json_safe(summary)))
        else:
            commands.print_sample(summary)
        return 0
    if args.command == "tune":
        return commands.tune(args)
    if args.command == "demo":
        return commands.demo(args)
    if args.command == "serve":
        from hasten.cli.serve import run_serve

        return run_serve(args)
    if args.race or any(getattr(args, k) is not None for k in ("race_entrants", "race_prompts", "race_score")):
        from hasten.cli.race import race

        return race(args)
    return commands.bench(args)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        _quiet(getattr(args, "no_progress", False))
        return _dispatch(args)
    except HastenError as err:
        print(f"hasten: error: {flag_names(str(err))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("hasten: interrupted", file=sys.stderr)
        _leave_broken_group(130)  # under torchrun: the launcher stops every rank when one fails
        return 130
    except torch.OutOfMemoryError as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else "out of memory"
        print(f"hasten: error: out of memory ({first_line}); lower --batch or --cores, or bound each forward "
              "with --max-batch", file=sys.stderr)
        return 2
    except RuntimeError as err:  # a collective that timed out or lost a peer (DistBackendError included)
        if getattr(args, "executor", "batched") != "distributed":
            raise
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"hasten: error: distributed run failed (a rank died, hung past --timeout, or could not "
              f"connect): {first_line}", file=sys.stderr)
        _leave_broken_group(3)
        return 3
    finally:
        signal.signal(signal.SIGTERM, previous)
        _shutdown_distributed()


def _leave_broken_group(code: int) -> None:
    """Exit at once with ``code`` after a peer was lost: tearing down a process group whose peer died can
    abort the process (SIGABRT in gloo's destructor) instead of returning hasten's exit code. --out was
    cleaned while the error unwound."""
    import os

    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _shutdown_distributed() -> None:
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
