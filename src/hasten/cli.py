"""Command line: ``hasten sample`` and ``hasten bench``."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import warnings
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Iterator

import torch

from hasten.errors import HastenError
from hasten.methods import METHODS
from hasten.models import MODELS


def _int_list(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _init(text: str):
    return text if text in ("paper", "uniform") else _int_list(text)


def _str_list(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


@contextmanager
def staged_output(out: Path) -> Iterator[Path]:
    """A temporary folder beside ``out``; its files move into ``out`` only on success."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    out.mkdir(parents=True, exist_ok=True)
    for item in tmp.iterdir():
        target = out / item.name
        if target.is_dir():
            shutil.rmtree(target)
        shutil.move(str(item), str(target))
    tmp.rmdir()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hasten", description="Training-free acceleration of diffusion sampling.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--model", default="digits",
                       help=f"embedded model ({', '.join(MODELS)}) or the folder of a diffusers pipeline saved with "
                            "save_pretrained (loaded locally, never downloaded)")
        p.add_argument("--prompt", help="prompt, for text-conditioned pipelines")
        p.add_argument("--negative-prompt", help="negative prompt (classifier-free / true CFG)")
        p.add_argument("--guidance-scale", type=float, help="guidance scale, for pipelines (default: the pipeline's)")
        p.add_argument("--height", type=int, help="image / video height, for pipelines (default: the pipeline's)")
        p.add_argument("--width", type=int, help="image / video width, for pipelines (default: the pipeline's)")
        p.add_argument("--frames", type=int, help="number of video frames, for video pipelines")
        p.add_argument("--seed", type=int, default=0, help="seed of the initial noise (torch.Generator)")
        p.add_argument("--batch", type=int, help="number of samples drawn together")
        p.add_argument("--solver", choices=["ddim", "ddpm", "euler"],
                       help="step; default ddim for VP models, euler for flow models; ddpm draws every step's "
                            "noise once before sampling, so parallel methods converge to the sequential DDPM run")
        p.add_argument("--stop", help="when a streaming method stops: first (fastest core), core:K (after core K "
                       "lands; 1 = slowest = sequential result), residual:TOL (relative change between "
                       "consecutive hits <= TOL), none (run to the end)")
        p.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    s = sub.add_parser("sample", help="sample with one method and save the result",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                       description="Sample with one method; quality is measured against sequential sampling "
                                   "of the same seed. Writes result.json, latents.safetensors and, for image "
                                   "models, samples.png and one PNG per hit as it lands.")
    common(s)
    s.add_argument("--method", default="chords", help=f"method: {', '.join(METHODS)}")
    s.add_argument("--cores", type=int, help="CHORDS cores K (default: length of --init, else 4)")
    s.add_argument("--steps", type=int, default=50, help="sampling steps N")
    s.add_argument("--init", type=_init, help="CHORDS initialisation: paper, uniform, or grid indices like 0,8,16,32")
    s.add_argument("--speedup", type=float, help="CHORDS target speedup s > 1 for the automatic init sequence")
    s.add_argument("--window", type=int, help="ParaDiGMS / ParaSolver / ParaSolver-Turbo window size p "
                   "(default: --cores for paradigms and parasolver, 3 x rho for parasolver-turbo)")
    s.add_argument("--tol", type=float, help="tolerance: per point in units of the step's noise scale (paradigms: "
                   "DDPM posterior std, default 0.1; parasolver(-turbo): sigma, default 0.5 with ddpm, else 0.03); srds: relative "
                   "change of the final sample between iterations (default 1e-3)")
    s.add_argument("--rho", type=int, help="ParaSolver-Turbo: model calls per iteration (nonlinear equations; "
                   "default --cores, else 8)")
    s.add_argument("--precondition", type=int, help="ParaSolver(-Turbo): sequential preconditioning steps M (default 1)")
    s.add_argument("--subintervals", type=int, help="ParaSolver(-Turbo): number of sub-intervals (default: steps)")
    s.add_argument("--blocks", type=int, help="SRDS: number of blocks (default round(sqrt(steps)))")
    s.add_argument("--max-iters", type=int, help="iteration cap of paradigms, srds, parasolver(-turbo); on reaching "
                   "it the method warns how far from converged it was and returns its current result")
    s.add_argument("--cache", default="none", choices=["none", "reuse", "abcache"],
                   help="answer some evaluations from cached outputs: reuse (last output) or abcache "
                        "(Adams-Bashforth extrapolation, AB-Cache Eq. 3.6); works with every method")
    s.add_argument("--cache-order", type=int, default=2, help="AB-Cache order k in 1..4 (1 = reuse)")
    s.add_argument("--cache-interval", type=int, default=3, help="compute every T-th round after warm-up")
    s.add_argument("--cache-warmup", type=int, help="rounds always computed first (default: the order)")
    s.add_argument("--cache-last", type=int, default=1, help="final grid steps always computed")
    s.add_argument("--cache-history", choices=["computed", "all"], default="computed",
                   help="extrapolate from computed outputs only, or from predictions too")
    s.add_argument("--executor", choices=["batched", "distributed"], default="batched",
                   help="batched: one forward per round here; distributed: spread each round over the ranks of a "
                        "torchrun launch (gloo on CPU, NCCL on CUDA); only rank 0 writes and prints")
    s.add_argument("--backend", choices=["gloo", "nccl"], help="torch.distributed backend (default: automatic)")
    s.add_argument("--timeout", type=float, default=30.0,
                   help="seconds any rank waits for the others before failing (distributed executor)")
    s.add_argument("--out", type=Path, default=Path("out"), help="output folder")
    s.add_argument("--json", action="store_true", help="print one JSON object instead of a table")

    t = sub.add_parser("make-tiny", help="save a tiny random diffusers pipeline (for tests and docs)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                       description="Build a tiny pipeline from configs with random weights (no download) and "
                                   "save it with save_pretrained, for `hasten sample/bench --model PATH`.")
    t.add_argument("--kind", choices=["ddim", "ddpm", "sd", "sdxl", "sd3", "flux", "wan", "cogvideox", "hunyuanvideo"], default="sd", help="pipeline family")
    t.add_argument("--out", type=Path, required=True, help="folder to save into")

    b = sub.add_parser("bench", help="run methods side by side and write a report",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                       description="Run sequential and parallel methods on the same seed and write results.md, "
                                   "results.json, convergence.png, scaling.png and one image grid per run. "
                                   "Lists run as a grid: --init paper,uniform gives the initialisation "
                                   "ablation (CHORDS Table 3), --steps 50,75,100 the steps ablation (Table 4).")
    common(b)
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
                   help="comma-separated caches run with every method: none, reuse, abcache:K, each with "
                        "optional :interval=T:warmup=W:last=L:history=computed|all (e.g. abcache:2:interval=3). "
                        "A method entry like sequential:steps=25 runs on fewer steps (the '50%% steps' baseline). With a "
                        "pipeline folder, diffusers' own hooks run with sequential sampling: "
                        "diffusers:firstblock[:threshold=0.2], diffusers:taylorseer, diffusers:magcache[:...]")
    b.add_argument("--executor", choices=["batched", "distributed"], default="batched",
                   help="distributed: run inside torchrun; the sequential reference runs on each process alone "
                        "(the one-device baseline), the other methods spread each round over the ranks")
    b.add_argument("--backend", choices=["gloo", "nccl"], help="torch.distributed backend (default: automatic)")
    b.add_argument("--timeout", type=float, default=60.0, help="seconds any rank waits for the others")
    b.add_argument("--out", type=Path, default=Path("report"), help="report folder")
    b.add_argument("--json", action="store_true", help="print results.json to stdout instead of the table")
    return parser


def _sample(args: argparse.Namespace) -> dict | None:
    """Run ``hasten sample``; returns the summary on rank 0 and None on other ranks."""
    from safetensors.torch import save_file

    from hasten.api import prepare
    from hasten.engine import run
    from hasten.methods import Sequential
    from hasten.metrics import psnr, rmse
    from hasten.report import save_image_grid, write_json

    stop = args.stop or ("first" if args.method == "chords" else "none")
    rank = 0
    if args.executor == "distributed":
        import torch.distributed as dist

        from hasten.executors.distributed import init_distributed

        init_distributed(args.backend, args.timeout)
        rank = dist.get_rank()
        torch.set_num_threads(max(1, torch.get_num_threads() // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", 1)))))
    cache = None
    if args.cache != "none":
        from hasten.caches import CacheConfig

        cache = CacheConfig(order=1 if args.cache == "reuse" else args.cache_order, interval=args.cache_interval,
                            warmup=args.cache_warmup, last=args.cache_last, history=args.cache_history)
    s = prepare(_model(args, args.batch or 4), args.method, args.steps, args.seed, args.batch or 4, stop, args.solver, args.cores,
                cache, args.executor, init=args.init, speedup=args.speedup, window=args.window, tol=args.tol, rho=args.rho,
                precondition=args.precondition, subintervals=args.subintervals, blocks=args.blocks,
                max_iters=args.max_iters)
    ref = run(Sequential(), s.x, s.step, s.executor)
    ref_images = s.model.decode(ref.x)
    hits = []
    with (staged_output(args.out) if rank == 0 else nullcontext(None)) as tmp:  # only rank 0 writes
        def on_hit(hit) -> None:
            images = s.model.decode(hit.x)
            if images is not None and tmp is not None:  # saved at once, while sampling runs
                save_image_grid(images, tmp / f"hit_core{hit.core}_round{hit.round}.png")
            hits.append({"core": hit.core, "round": hit.round, "nfe": hit.nfe, "wall_s": hit.wall_s,
                         "rmse": rmse(hit.x, ref.x), "residual": hit.residual})

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = run(s.method, s.x, s.step, s.executor, s.stop, on_hit, rank == 0 and not args.no_progress, s.cache)
        if tmp is None:
            return None
        for w in caught:
            print(f"hasten: warning: {w.message}", file=sys.stderr)
        images = s.model.decode(result.x)
        summary = {
            "method": result.method, "model": s.model.name, "steps": result.steps,
            "cores": result.params.get("cores", 1), "init": result.params.get("init"), "params": result.params,
            "stop": result.stopped_by, "seed": args.seed, "batch": s.x.shape[0],
            "rounds": result.rounds, "all_rounds": result.all_rounds, "nfe": result.nfe, "requests": result.requests,
            "speedup": result.speedup, "cache": result.cache,
            "rmse": rmse(result.x, ref.x),
            "psnr": psnr(images, ref_images, 1.0) if images is not None else psnr(result.x, ref.x),
            "wall_s": result.wall_s, "sequential_wall_s": ref.wall_s, "hits": hits,
            "warnings": [str(w.message) for w in caught], "executor": args.executor,
            "world_size": getattr(s.executor, "world", 1),
        }
        save_file({"latents": result.x.contiguous(), "sequential": ref.x.contiguous()}, str(tmp / "latents.safetensors"))
        if images is not None:
            save_image_grid(images, tmp / "samples.png")
        write_json(summary, tmp / "result.json")
    return summary


def _model(args: argparse.Namespace, batch: int):
    """The --model argument: an embedded model's name, or a saved pipeline with this call's prompt."""
    if not Path(args.model).is_dir():
        if args.prompt or args.negative_prompt or any(v is not None for v in (args.guidance_scale, args.height,
                                                                               args.width, args.frames)):
            raise HastenError("--prompt, --negative-prompt, --guidance-scale, --height, --width and --frames apply "
                              "to pipeline folders only")
        return args.model
    from hasten.integrations.model import PipelineModel, load_pipeline

    pipe = load_pipeline(args.model)
    call = {"prompt": args.prompt, "negative_prompt": args.negative_prompt, "guidance_scale": args.guidance_scale,
            "height": args.height, "width": args.width, "num_frames": args.frames}
    if type(pipe).__name__ == "FluxPipeline" and args.negative_prompt:
        call["true_cfg_scale"] = args.guidance_scale or 4.0
        call["guidance_scale"] = None
    return PipelineModel(pipe, call, batch=batch, seed=args.seed)


def _print_sample(summary: dict) -> None:
    from hasten.report import markdown_table

    keys = ["method", "model", "steps", "cores", "stop", "rounds", "speedup", "nfe", "wall_s", "rmse", "psnr"]
    print(markdown_table([summary], [(k, k) for k in keys]))
    if summary["hits"]:
        print()
        print(markdown_table(summary["hits"], [("core", "core"), ("round", "round"), ("nfe", "NFE"),
                                               ("wall_s", "wall s"), ("rmse", "RMSE vs sequential"),
                                               ("residual", "residual")]))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "make-tiny":
            from hasten.integrations.tiny import save_tiny_pipeline

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
        from hasten.bench import BenchConfig, run_bench

        cfg = BenchConfig(
            model=_model(args, args.batch or 64), methods=args.methods, cores=args.cores, steps=args.steps, inits=args.init,
            caches=args.caches, executor=args.executor,
            stop=args.stop or "first", seed=args.seed, batch=args.batch or 64, solver=args.solver,
            progress=not args.no_progress,
        )
        cfg.validate()
        if args.executor == "distributed":
            import torch.distributed as dist

            from hasten.executors.distributed import init_distributed

            init_distributed(args.backend, args.timeout)
            if dist.get_rank() != 0:
                cfg.progress = False
                run_bench(cfg, None, log=lambda _: None)
                return 0
        with staged_output(args.out) as tmp:
            report = run_bench(cfg, tmp, log=(lambda _: None) if args.json else print)
        if args.json:
            from hasten.report import json_safe

            print(json.dumps(json_safe(report)))
        return 0
    except HastenError as err:
        print(f"hasten: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("hasten: interrupted", file=sys.stderr)
        return 130
    except RuntimeError as err:  # a collective that timed out or lost a peer (DistBackendError included)
        if getattr(args, "executor", "batched") != "distributed":
            raise
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"hasten: error: distributed run failed (a rank died, hung past --timeout, or could not "
              f"connect): {first_line}", file=sys.stderr)
        return 3
    finally:
        _shutdown_distributed()


def _shutdown_distributed() -> None:
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
