"""Command line: ``hasten sample``, ``hasten bench``, ``hasten tune``, ``hasten serve`` and ``hasten make-tiny``."""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
import signal

import torch

from hasten.errors import HastenError
from hasten.methods import BUDGET_OPTION, METHODS
from hasten.models import MODELS
from hasten.output import OutputFolder, check_out
from hasten.serve.cli import add_serve_parser, run_serve
from hasten.steps import SOLVERS


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected comma-separated integers, got nothing")
    return values


def _init(text: str):
    if text.strip() in ("paper", "uniform"):
        return text.strip()
    if not text.strip():
        raise argparse.ArgumentTypeError("needs paper, uniform or comma-separated grid indices like 0,8,16,32")
    return _int_list(text)


def _str_list(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a default only where there is one and the help text does not already say it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default in (None, False, argparse.SUPPRESS) or "default" in text:
            return text
        return super()._get_help_string(action)


#: the cache spec grammar, as sample's --cache and bench's --caches take it
CACHE_GRAMMAR = ("A cache is none, reuse or abcache[:K] (Adams-Bashforth extrapolation, AB-Cache Eq. 3.6; K = order "
                 "1..4, default 2), each with :key=value options: interval=T (compute every T-th round after warm-up, "
                 "default 3) or tol=TOL (adaptive: call the model when the summed estimated error since the last "
                 "call would exceed TOL, clean-sample RMS, e.g. 0.02; docs/BENCHMARKS.md 'Adaptive AB-Cache'), "
                 "warmup=W, last=L, history=computed|all, form=paper|eps|x0|index (default eps on VP grids, paper on "
                 "flow grids); e.g. abcache:2:interval=3.")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hasten", description="Training-free acceleration of diffusion sampling.",
        formatter_class=_Help,
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser, batch_default: int) -> None:
        p.add_argument("--model", default="digits",
                       help=f"embedded model ({', '.join(MODELS)}; options as name:key=value, e.g. "
                            "gmm-flow:shape=4096x64), a diffusers pipeline folder saved with save_pretrained, a "
                            "Hugging Face model id (e.g. black-forest-labs/FLUX.1-dev; downloaded unless "
                            "--local-files-only or HF_HUB_OFFLINE=1), or random:flux-dev | random:sd3.5-medium | "
                            "random:wan2.1-1.3b (the real-size network with random weights, for speed tests; "
                            "append :tiny for a small one)")
        p.add_argument("--device", help="cpu, cuda, cuda:N or mps (default: cuda when available, else cpu; under "
                       "torchrun each rank takes cuda:LOCAL_RANK)")
        p.add_argument("--dtype", help="network dtype: float32, bfloat16 (bf16) or float16 (fp16); steps stay "
                       "float32 (default: float32 on cpu, the checkpoint's own dtype on a GPU)")
        p.add_argument("--local-files-only", action="store_true",
                       help="never download: a model id must already be in the local Hugging Face cache")
        p.add_argument("--max-batch", type=int, help="most network rows in one forward (a round larger than this "
                       "runs in chunks; with classifier-free guidance each sample is two rows)")
        p.add_argument("--compile", nargs="?", const="inductor", metavar="BACKEND",
                       help="torch.compile the network (backend, default inductor); every forward is padded to one "
                            "size (padding is not counted as NFE) so one compiled graph serves the run")
        p.add_argument("--prompt", help="prompt, for text-conditioned pipelines")
        p.add_argument("--negative-prompt", help="negative prompt (classifier-free / true CFG)")
        p.add_argument("--guidance-scale", type=float, help="guidance scale, for pipelines (default: the pipeline's)")
        p.add_argument("--height", type=int, help="image / video height, for pipelines (default: the pipeline's)")
        p.add_argument("--width", type=int, help="image / video width, for pipelines (default: the pipeline's)")
        p.add_argument("--frames", type=int, help="number of video frames, for video pipelines")
        p.add_argument("--seed", type=int, default=0, help="seed of the initial noise (torch.Generator)")
        p.add_argument("--batch", type=int, help=f"number of samples drawn together (default: {batch_default})")
        p.add_argument("--solver", choices=list(SOLVERS),
                       help="step; default ddim for VP models, euler for flow models; ddpm (VP) and "
                            "euler-stochastic (flow) draw every step's noise once before sampling, so parallel "
                            "methods converge to the sequential run of the same draws")
        p.add_argument("--stop", help="when a streaming method stops: first (fastest core), core:K (after core K "
                       "lands; 1 = slowest = sequential result), residual:TOL (relative change between "
                       "consecutive hits <= TOL), none (run to the end)")
        p.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    s = sub.add_parser("sample", help="sample with one method and save the result",
                       formatter_class=_Help,
                       description="Sample with one method; quality is measured against sequential sampling "
                                   "of the same seed. Writes result.json, latents.safetensors and, for image "
                                   "models, samples.png and one PNG per hit as it lands.")
    common(s, 4)
    s.add_argument("--config", help="a config file written by hasten tune (best.json): method, steps, solver, "
                   "cores, method options, cache and stop from the file; flags given here override it (a --method "
                   "other than the file's drops the file's cores and options)")
    s.add_argument("--method", help=f"method: {', '.join(METHODS)} (default: chords), optionally with options in the "
                   "words of bench's --methods, e.g. paradigms:window=8:tol=0.05 (the flags below set the same "
                   "options)")
    s.add_argument("--cores", type=int, help="the per-round budget, which each method names its own way: " + ", ".join(
        f"{name}: {option}" for name, option in BUDGET_OPTION.items()) + " (chords default: length of --init, else "
        "4, capped at steps - 1 with a notice)")
    s.add_argument("--steps", type=int, help="sampling steps N (default: 50)")
    s.add_argument("--init", type=_init, help="CHORDS initialisation: paper, uniform, or grid indices like 0,8,16,32")
    s.add_argument("--speedup", type=float, help="CHORDS target speedup s > 1 for the automatic init sequence")
    s.add_argument("--window", type=int, help="ParaDiGMS / ParaSolver / ParaSolver-Turbo window size p "
                   "(default: --cores for paradigms and parasolver; parasolver-turbo: the paper's p, 100 with ddpm "
                   "and 50 otherwise, capped at the steps)")
    s.add_argument("--tol", type=float, help="tolerance: per point in units of the step's noise scale (paradigms: "
                   "DDPM posterior std, default 0.1; parasolver(-turbo): sigma, default 0.5 with ddpm, else 0.03); srds: relative "
                   "change of the final sample between iterations (default 1e-3)")
    s.add_argument("--rho", type=int, help="ParaSolver-Turbo: model calls per iteration (nonlinear equations; "
                   "default --cores, else 8)")
    s.add_argument("--precondition", type=int, help="ParaSolver(-Turbo): sequential preconditioning steps M "
                   "(default: 1 for parasolver, the paper's 0 for parasolver-turbo)")
    s.add_argument("--subintervals", type=int, help="ParaSolver(-Turbo): number of sub-intervals (default: steps)")
    s.add_argument("--blocks", type=int, help="SRDS: number of blocks (default round(sqrt(steps)))")
    s.add_argument("--max-iters", type=int, help="iteration cap of paradigms, srds, parasolver(-turbo); on reaching "
                   "it the method warns how far from converged it was and returns its current result")
    s.add_argument("--cache", metavar="SPEC", help="answer some evaluations from cached outputs; works with every "
                   f"method (default: none). {CACHE_GRAMMAR}")
    s.add_argument("--executor", choices=["batched", "distributed"], default="batched",
                   help="batched: one forward per round here; distributed: spread each round over the ranks of a "
                        "torchrun launch (gloo on CPU, NCCL on CUDA); only rank 0 writes and prints")
    s.add_argument("--backend", choices=["gloo", "nccl"], help="torch.distributed backend (default: automatic)")
    s.add_argument("--timeout", type=float, default=30.0,
                   help="seconds any rank waits for the others before failing (distributed executor); torchrun's "
                        "own rendezvous of the nodes takes --rdzv-conf timeout=SECONDS instead")
    s.add_argument("--out", default="out", help="output folder (files of an earlier run there are replaced)")
    s.add_argument("--json", action="store_true", help="print one JSON object instead of a table")

    t = sub.add_parser("make-tiny", help="save a tiny random diffusers pipeline (for tests and docs)",
                       formatter_class=_Help,
                       description="Build a tiny pipeline from configs with random weights (no download) and "
                                   "save it with save_pretrained, for `hasten sample/bench --model PATH`.")
    t.add_argument("--kind", choices=["ddim", "ddpm", "sd", "sdxl", "sd3", "flux", "wan", "cogvideox", "hunyuanvideo"], default="sd", help="pipeline family")
    t.add_argument("--out", required=True, help="folder to save into")

    u = sub.add_parser("tune", help="find the fastest configuration that meets a quality target on D devices",
                       formatter_class=_Help,
                       description="Measure this device's forward latency against rows per forward, sample a "
                                   "sequential reference, run candidate configurations (methods x cores x "
                                   "tolerances x caches, pruned once a chain misses the target), predict each "
                                   "one's wall time on --devices devices from its rounds, rows per round and the "
                                   "latency curve, and print them ranked. Writes tune.json, tune.md, pareto.png and "
                                   "best.json, the winner, for `hasten sample --config` and "
                                   "hasten.accelerate(pipe, config=...).")
    common(u, 4)
    u.add_argument("--target", required=True, help="quality target against sequential sampling of the same seed: "
                   "psnr:DB (at least DB dB, e.g. psnr:35) or rmse:X (latent RMSE at most X, e.g. rmse:0.02)")
    u.add_argument("--devices", type=int, default=1, help="devices D the prediction is for (the distributed executor "
                   "splits each round's rows over D ranks)")
    u.add_argument("--steps", type=int, default=50, help="sampling steps N of the reference")
    u.add_argument("--cores", type=_int_list, default=[2, 3, 4, 6, 8], help="CHORDS core counts to try")
    u.add_argument("--widths", type=_int_list, default=[4, 8],
                   help="ParaDiGMS windows and ParaSolver-Turbo rho values to try")
    u.add_argument("--methods", type=_str_list,
                   help="candidate families (default: all): sequential (fewer steps), abcache (sequential + "
                        "AB-Cache), chords, chords+abcache, paradigms, parasolver-turbo")
    u.add_argument("--threads", type=int, help="torch threads of the latency curve (default: what each distributed "
                   "worker gets: OMP_NUM_THREADS or 1, divided by --devices; this process's count for one device)")
    u.add_argument("--comm-ms", type=float, help="communication per round in ms for D > 1 (default: the all-gather "
                   "measured over D gloo processes on this CPU)")
    u.add_argument("--repeats", type=int, default=5, help="timings per latency point (the median is used)")
    u.add_argument("--out", default="tune", help="output folder (files of an earlier run there are replaced)")
    u.add_argument("--json", action="store_true", help="print tune.json to stdout instead of the table")
    u.set_defaults(executor="batched", backend=None)

    b = sub.add_parser("bench", help="run methods side by side and write a report",
                       formatter_class=_Help,
                       description="Run sequential and parallel methods on the same seed and write results.md, "
                                   "results.json, convergence.png, scaling.png and one image grid per run. "
                                   "Lists run as a grid: --init paper,uniform gives the initialisation "
                                   "ablation (CHORDS Table 3), --steps 50,75,100 the steps ablation (Table 4).")
    common(b, 64)
    b.add_argument("--methods", type=_str_list, default=["sequential", "chords"],
                   help=f"comma-separated methods ({', '.join(METHODS)}), each optionally with options "
                        "as name:key=value:key=value, e.g. parasolver-turbo:window=24:rho=8")
    b.add_argument("--cores", type=_int_list, default=[4, 6, 8],
                   help="comma-separated per-round budgets: CHORDS cores, ParaDiGMS/ParaSolver window, SRDS "
                        "cap, ParaSolver-Turbo rho (unless the method's own options set it)")
    b.add_argument("--steps", type=_str_list, default=["50"],
                   help="comma-separated step counts N, each optionally with its solver, e.g. ddpm:1000,50,25")
    b.add_argument("--init", type=_str_list, default=["paper"], help="comma-separated: paper, uniform")
    b.add_argument("--caches", type=_str_list, default=["none"],
                   help=f"comma-separated caches run with every method. {CACHE_GRAMMAR} A method entry like "
                        "sequential:steps=25 runs on fewer steps (the '50%%' steps baseline); :cache=none (or reuse) "
                        "pins its cache. With a pipeline folder, diffusers' own hooks run with sequential sampling: "
                        "diffusers:firstblock[:threshold=0.2], diffusers:taylorseer, diffusers:magcache[:...]")
    b.add_argument("--executor", choices=["batched", "distributed"], default="batched",
                   help="distributed: run inside torchrun; the sequential reference runs on each process alone "
                        "(the one-device baseline), the other methods spread each round over the ranks")
    b.add_argument("--backend", choices=["gloo", "nccl"], help="torch.distributed backend (default: automatic)")
    b.add_argument("--timeout", type=float, default=60.0, help="seconds any rank waits for the others")
    b.add_argument("--until-stop", action="store_true",
                   help="stop each CHORDS run at the stop rule instead of running it to the end (faster; the "
                        "convergence plot then has fewer hits)")
    b.add_argument("--emulate-latency", type=float, metavar="SECONDS",
                   help="emulated devices: every forward of R network rows takes SECONDS x ceil(R / "
                        "--emulate-capacity), the model computing the numbers inside that time and sleeping the "
                        "rest (no CPU), so many ranks on few cores behave like many devices")
    b.add_argument("--emulate-capacity", type=int, default=1,
                   help="rows one emulated device runs in one latency (1: a saturated device)")
    b.add_argument("--out", default="report", help="report folder (files of an earlier run there are replaced)")
    b.add_argument("--json", action="store_true", help="print results.json to stdout instead of the table")
    add_serve_parser(sub)
    return parser


def _check_common(args: argparse.Namespace) -> None:
    """Checks every command shares, before any model is loaded or process group joined."""
    if args.batch is not None and args.batch < 1:
        raise HastenError(f"--batch must be an integer >= 1, got {args.batch}")
    if args.stop is not None and not args.stop.strip():
        raise HastenError("--stop must be one of first, core:K, residual:TOL, none; got an empty string")
    for flag, value in (("--height", args.height), ("--width", args.width), ("--frames", args.frames)):
        if value is not None and value < 1:
            raise HastenError(f"{flag} must be a positive integer, got {value}")
    check_out(args.out)


#: method options that only --cores sets on the command line (their own names appear in --method specs)
BUDGET_ONLY = ("cores", "max_per_round")


def _method(args: argparse.Namespace) -> tuple[str, dict]:
    """``--method`` (a name or a spec with options) and the method-option flags, as (name, options)."""
    from hasten.methods import OPTIONS, parse_method_spec

    name, options = parse_method_spec(args.method)
    for key in sorted({k for opts in OPTIONS.values() for k in opts} - set(BUDGET_ONLY)):
        flag = getattr(args, key, None)
        if flag is None:
            continue
        if key in options and options[key] != flag:
            raise HastenError(f"--method {args.method} sets {key}={options[key]} and --{key.replace('_', '-')} "
                              f"{flag}; give it once")
        options[key] = flag
    return name, options


def _apply_config(args: argparse.Namespace) -> None:
    """Fill what ``--config FILE`` sets and the command line does not; then the defaults."""
    if args.config is not None:
        from hasten.tune import merge_config

        merged = merge_config(args.config, args.method, args.cores, steps=args.steps, solver=args.solver,
                              stop=args.stop, cache=args.cache)
        for key in ("method", "cores", "steps", "solver", "stop", "cache"):
            setattr(args, key, merged[key])
        for key, value in merged["options"].items():  # the flags given on the command line win
            if getattr(args, key, None) is None:
                setattr(args, key, value)
    args.method = args.method or "chords"
    args.steps = args.steps if args.steps is not None else 50


def _sample(args: argparse.Namespace) -> dict | None:
    """Run ``hasten sample``; returns the summary on rank 0 and None on other ranks."""
    from contextlib import nullcontext

    from safetensors.torch import save_file

    from hasten.assembly import default_stop, prepare
    from hasten.caches import parse_cache_spec
    from hasten.engine import run
    from hasten.methods import Sequential
    from hasten.metrics import psnr, rmse
    from hasten.report import save_image_grid, write_json

    _apply_config(args)
    _check_common(args)
    method, options = _method(args)
    stop = args.stop if args.stop is not None else default_stop(method)
    cache = parse_cache_spec(args.cache or "none")
    batch = args.batch or 4
    device = _place(args)
    rank = 0
    if args.executor == "distributed":
        import torch.distributed as dist

        rank = dist.get_rank()
    out = OutputFolder(args.out) if rank == 0 else None  # only rank 0 writes
    s = prepare(_model(args, batch, device), method, args.steps, args.seed, batch, stop,
                args.solver, args.cores, cache, args.executor, max_batch=args.max_batch, compile=args.compile,
                **options)
    with out or nullcontext():
        ref = run(Sequential(), s.x, s.step, s.executor)
        ref_images = s.model.decode(ref.x)
        hits = []

        def on_hit(hit) -> None:
            images = s.model.decode(hit.x)
            if images is not None and out is not None:  # written into --out the moment the hit lands
                save_image_grid(images, out.stream(f"hit_core{hit.core}_round{hit.round}.png"))
            hits.append({"core": hit.core, "round": hit.round, "nfe": hit.nfe, "wall_s": hit.wall_s,
                         "rmse": rmse(hit.x, ref.x), "residual": hit.residual})

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = run(s.method, s.x, s.step, s.executor, s.stop, on_hit, rank == 0 and not args.no_progress,
                         s.cache)
        if out is None:
            return None
        for w in caught:
            print(f"hasten: warning: {w.message}", file=sys.stderr)
        images = s.model.decode(result.x)
        summary = {
            **result.summary(), "model": s.model.name,
            "cores": result.params.get("cores") if result.method == "chords" else None,
            "width": s.method.max_width(result.steps), "init": result.params.get("init"),
            "seed": args.seed, "batch": s.x.shape[0], "rmse": rmse(result.x, ref.x),
            "psnr": psnr(images, ref_images, 1.0) if images is not None else psnr(result.x, ref.x),
            "sequential_wall_s": ref.wall_s, "hits": hits,
            "warnings": [str(w.message) for w in caught], "executor": args.executor,
            "world_size": getattr(s.executor, "world", 1), "device": str(s.x.device),
            "dtype": str(getattr(s.executor.denoiser, "dtype", torch.float32)).removeprefix("torch."),
        }
        save_file({"latents": result.x.cpu().contiguous(), "sequential": ref.x.cpu().contiguous()},
                  str(out / "latents.safetensors"))
        if images is not None:
            save_image_grid(images, out / "samples.png")
        write_json(summary, out / "result.json")
    return summary


def _place(args: argparse.Namespace) -> torch.device:
    """This process's device (and, under torchrun, its process group): checked before any model is loaded."""
    from hasten.assembly import join
    from hasten.devices import parse_dtype

    parse_dtype(args.dtype)
    if args.executor == "distributed":
        device = join(args.executor, args.device, backend=args.backend, timeout_s=args.timeout)
        torch.set_num_threads(max(1, torch.get_num_threads() // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", 1)))))
        return device
    if args.backend is not None:
        raise HastenError("--backend applies to --executor distributed only")
    return join(args.executor, args.device)


def _model(args: argparse.Namespace, batch: int, device: torch.device):
    """The --model argument, built on ``device``: an embedded model, or a pipeline with this call's prompt."""
    from hasten.integrations.model import open_model
    from hasten.models import is_embedded

    call = {"prompt": args.prompt, "negative_prompt": args.negative_prompt, "guidance_scale": args.guidance_scale,
            "height": args.height, "width": args.width, "num_frames": args.frames}
    names = {"prompt": "--prompt", "negative_prompt": "--negative-prompt", "guidance_scale": "--guidance-scale",
             "height": "--height", "width": "--width", "num_frames": "--frames"}
    if not is_embedded(args.model):
        try:  # transformers' advice ("requires torchvision ... falling back") is noise on every pipeline run
            from transformers.utils import logging as transformers_logging

            transformers_logging.set_verbosity_error()
        except ImportError:  # transformers is optional
            pass
    try:
        return open_model(args.model, device, args.dtype, batch, args.seed, call, args.local_files_only)
    except HastenError as err:  # name the flags, not the call's keywords
        text = str(err)
        for key, flag in names.items():
            text = text.replace(f"{key},", f"{flag},").replace(f"{key} apply", f"{flag} apply")
        raise HastenError(text.replace("local_files_only applies", "--local-files-only applies")) from None


def _print_sample(summary: dict) -> None:
    from hasten.report import markdown_table

    keys = ["method", "model", "steps", "cores", "width", "stop", "rounds", "speedup", "nfe", "wall_s", "rmse", "psnr"]
    print(markdown_table([summary], [(k, "requests/round (max)" if k == "width" else k) for k in keys]))
    if summary["hits"]:
        print()
        print(markdown_table(summary["hits"], [("core", "core"), ("round", "round"), ("nfe", "NFE"),
                                               ("wall_s", "wall s"), ("rmse", "RMSE vs sequential"),
                                               ("residual", "residual")]))


def _quiet(no_progress: bool) -> None:
    """Silence what is noise on a command line: loading bars (with --no-progress); see also _model."""
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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        _quiet(getattr(args, "no_progress", False))
        if args.command == "make-tiny":
            from hasten.testing.pipelines import save_tiny_pipeline

            check_out(args.out)
            print(save_tiny_pipeline(args.kind, args.out))
            return 0
        if args.command == "sample":
            summary = _sample(args)
            if summary is None:
                return 0
            if args.json:
                from hasten.report import json_safe

                print(json.dumps(json_safe(summary)))
            else:
                _print_sample(summary)
            return 0
        if args.command == "tune":
            return _tune(args)
        if args.command == "serve":
            return run_serve(args)
        return _bench(args)
    except HastenError as err:
        print(f"hasten: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("hasten: interrupted", file=sys.stderr)
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
        return 3
    finally:
        signal.signal(signal.SIGTERM, previous)
        _shutdown_distributed()


def _bench(args: argparse.Namespace) -> int:
    """Run ``hasten bench``; only rank 0 writes and prints."""
    from hasten.bench import BenchConfig, run_bench
    from hasten.report import require_plots

    _check_common(args)
    require_plots()  # before any work: the report's plots need matplotlib
    cfg = BenchConfig(
        model=args.model, methods=args.methods, cores=args.cores, steps=args.steps, inits=args.init,
        caches=args.caches, executor=args.executor,
        stop=args.stop if args.stop is not None else "first", seed=args.seed,
        batch=args.batch if args.batch is not None else 64, solver=args.solver,
        progress=not args.no_progress, max_batch=args.max_batch, compile=args.compile,
        emulate_latency=args.emulate_latency, emulate_capacity=args.emulate_capacity, to_end=not args.until_stop,
    )
    cfg.validate()  # names, options and numbers: before any model is loaded
    device = _place(args)
    rank = 0
    if args.executor == "distributed":
        import torch.distributed as dist

        rank = dist.get_rank()
    out = OutputFolder(args.out) if rank == 0 else None
    cfg.model = _model(args, cfg.batch, device)
    cfg.validate()  # again with the model (pipeline-only options such as diffusers hooks)
    if out is None:
        cfg.progress = False
        run_bench(cfg, None, log=lambda _: None)
        return 0
    with out:
        report = run_bench(cfg, out, log=(lambda _: None) if args.json else print)
    if args.json:
        from hasten.report import json_safe

        print(json.dumps(json_safe(report)))
    return 0


def _tune(args: argparse.Namespace) -> int:
    """Run ``hasten tune``: checks first (target, numbers, plotting), then the candidates."""
    from hasten.report import json_safe, markdown_table, require_plots
    from hasten.tune import COLUMNS, Target, candidates, tune, write_report

    target = Target.parse(args.target)  # before any work
    _check_common(args)
    if args.stop is not None or args.compile is not None:
        raise HastenError("hasten tune chooses each candidate's stop rule and does not compile; drop "
                          + ("--stop" if args.stop is not None else "--compile"))
    for flag, value in (("--devices", args.devices), ("--steps", args.steps), ("--repeats", args.repeats),
                        ("--threads", args.threads)):
        if value is not None and value < 1:
            raise HastenError(f"{flag} must be an integer >= 1, got {value}")
    if args.comm_ms is not None and args.comm_ms < 0:
        raise HastenError(f"--comm-ms must be >= 0, got {args.comm_ms}")
    candidates(args.steps, args.solver, args.cores, args.widths, methods=args.methods)  # validates --methods
    require_plots()
    batch = args.batch or 4
    device = _place(args)
    model = _model(args, batch, device)
    from hasten.models import is_embedded

    with OutputFolder(args.out) as out:
        report = tune(model, target, args.devices, args.steps, batch, args.seed, args.solver, args.cores,
                      args.widths, args.methods, args.threads, args.comm_ms, args.repeats, args.max_batch,
                      progress=not args.no_progress, log=(lambda _: None) if args.json else print,
                      spec=args.model if is_embedded(args.model) else None)
        command = "hasten " + " ".join(sys.argv[1:]) if sys.argv[1:2] == ["tune"] else "hasten tune"
        write_report(report, out, command)
    if args.json:
        print(json.dumps(json_safe(report.to_dict())))
        return 0
    print(markdown_table(report.rows, COLUMNS))
    s = report.settings
    print(f"\n{s['run']} of {s['candidates']} candidates run ({s['pruned']} pruned); predicted for {s['devices']} "
          f"device(s), latency at {s['threads']} thread(s)")
    print(f"winner: {report.best['tune']['label']} -> {args.out}/best.json "
          f"(hasten sample --config {args.out}/best.json)")
    return 0


def _shutdown_distributed() -> None:
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
