"""What each command does once its flags are parsed: ``sample``, ``bench``, ``tune``, ``make-tiny``.

Each builds its run description first (:func:`hasten.cli.options.run_spec`),
so every check runs before any model is loaded or process group joined.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import warnings
from contextlib import nullcontext
from pathlib import Path

import torch

from hasten.cli.inputs import apply_lora, check_opened, with_inputs
from hasten.cli.options import run_spec, sampling_of
from hasten.errors import HastenError
from hasten.output import OutputFolder, check_out
from hasten.spec import RunSpec, Sampling


def rank_of(spec: RunSpec) -> int:
    """This process's rank once placed (0 outside a distributed run)."""
    if spec.placement.executor != "distributed":
        return 0
    import torch.distributed as dist

    return dist.get_rank()


def quiet_pipeline_loading(spec: RunSpec | None) -> None:
    """transformers' advice ("requires torchvision ... falling back") is noise on every pipeline run."""
    from hasten.models import is_embedded

    if spec is None or isinstance(spec.model, str) and not is_embedded(spec.model):
        try:
            from transformers.utils import logging as transformers_logging

            transformers_logging.set_verbosity_error()
        except ImportError:  # transformers is optional
            pass


def sample(args: argparse.Namespace) -> dict | None:
    """Run ``hasten sample``; returns the summary on rank 0 and None on other ranks."""
    from safetensors.torch import save_file

    from hasten.metrics import psnr, rmse
    from hasten.integrations.images import is_video_pipeline
    from hasten.mp4 import clips, require_video, save_clips
    from hasten.report import save_image_grid, write_json
    from hasten.session import Session, place

    spec = with_inputs(run_spec(args, 4, sampling_of(args), args.config), args)
    check_out(args.out)
    place(spec.placement)
    rank = rank_of(spec)
    out = OutputFolder(args.out) if rank == 0 else None  # only rank 0 writes
    quiet_pipeline_loading(spec)
    session = Session.open(spec)
    check_opened(getattr(session.model, "pipe", None), args)
    apply_lora(getattr(session.model, "pipe", None), args)
    if is_video_pipeline(getattr(session.model, "pipe", None)):
        require_video()  # before any sampling: the MP4s need PyAV
    s = session.prepare(spec.sampling, seed=spec.seed, batch=spec.batch, call=spec.call, record=spec.to_dict())
    reference = session.prepare(Sampling("sequential", steps=s.step.grid.steps), x=s.x, step=s.step,
                                denoiser=s.executor.denoiser)
    with out or nullcontext():
        ref = reference.sample()
        ref_images = s.model.decode(ref.x)
        batch = s.x.shape[0]
        video = clips(ref_images, batch) is not None  # a video model: MP4s besides the PNGs
        hits = []

        def on_hit(hit) -> None:
            images = s.model.decode(hit.x)
            if images is not None and out is not None:  # written into --out the moment the hit lands
                save_image_grid(images, out.stream(f"hit_core{hit.core}_round{hit.round}.png"))
                if video:
                    save_clips(images, batch, out.stream(f"hit_core{hit.core}_round{hit.round}.mp4"), args.fps)
            hits.append({"core": hit.core, "round": hit.round, "nfe": hit.nfe, "wall_s": hit.wall_s,
                         "rmse": rmse(hit.x, ref.x), "residual": hit.residual})

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = s.sample(on_hit, rank == 0 and not args.no_progress)
        if out is None:
            return None
        for w in caught:
            print(f"hasten: warning: {w.message}", file=sys.stderr)
        images = s.model.decode(result.x)
        summary = {
            **result.summary(), "model": s.model.name, "lora": args.lora,
            "cores": result.params.get("cores") if result.method == "chords" else None,
            "width": s.method.max_width(result.steps), "init": result.params.get("init"),
            "seed": spec.seed, "batch": s.x.shape[0], "rmse": rmse(result.x, ref.x),
            "psnr": psnr(images, ref_images, 1.0) if images is not None else psnr(result.x, ref.x),
            "sequential_wall_s": ref.wall_s, "hits": hits,
            "warnings": [str(w.message) for w in caught], "executor": spec.placement.executor,
            "world_size": getattr(s.executor, "ranks", getattr(s.executor, "world", 1)),
            "context_parallel": spec.placement.context_parallel, "device": str(s.x.device),
            "dtype": str(getattr(s.executor.denoiser, "dtype", torch.float32)).removeprefix("torch."),
        }
        save_file({"latents": result.x.cpu().contiguous(), "sequential": ref.x.cpu().contiguous()},
                  str(out / "latents.safetensors"))
        if images is not None:
            save_image_grid(images, out / "samples.png")
        if video:
            save_clips(images, batch, out / "samples.mp4", args.fps)
        write_json(summary, out / "result.json")
    return summary


def print_sample(summary: dict) -> None:
    from hasten.report import markdown_table

    keys = ["method", "model", "steps", "cores", "width", "stop", "rounds", "speedup", "nfe", "wall_s", "rmse", "psnr"]
    print(markdown_table([summary], [(k, "requests/round (max)" if k == "width" else k) for k in keys]))
    if summary["hits"]:
        print()
        print(markdown_table(summary["hits"], [("core", "core"), ("round", "round"), ("nfe", "NFE"),
                                               ("wall_s", "wall s"), ("rmse", "RMSE vs sequential"),
                                               ("residual", "residual")]))


def bench(args: argparse.Namespace) -> int:
    """Run ``hasten bench``; only rank 0 writes and prints."""
    from hasten.bench import BenchConfig, run_bench
    from hasten.report import json_safe, require_plots
    from hasten.session import Session, place

    run = run_spec(args, 64, {"method": "chords", "steps": None, "stop": args.stop if args.stop is not None
                              else "first"})
    run = with_inputs(run, args)
    cfg = BenchConfig(run=run, methods=args.methods, cores=args.cores, steps=args.steps, inits=args.init,
                      caches=args.caches, progress=not args.no_progress, emulate_latency=args.emulate_latency,
                      emulate_capacity=args.emulate_capacity, to_end=not args.until_stop, repeats=args.repeats)
    cfg.validate()  # names, options and numbers: before any model is loaded
    check_out(args.out)
    require_plots()  # before any work: the report's plots need matplotlib
    place(run.placement)
    quiet_pipeline_loading(run)
    session = Session.open(run)
    check_opened(getattr(session.model, "pipe", None), args)
    apply_lora(getattr(session.model, "pipe", None), args)
    cfg.run = RunSpec(session.model, run.sampling, session.placement, run.call, run.seed, run.batch)
    cfg.validate()  # again with the model (pipeline-only options such as diffusers hooks)
    if rank_of(run) != 0:
        cfg.progress = False
        run_bench(cfg, None, log=lambda _: None, session=session)
        return 0
    with OutputFolder(args.out) as out:
        report = run_bench(cfg, out, log=(lambda _: None) if args.json else print, session=session)
    if args.json:
        print(json.dumps(json_safe(report)))
    return 0


def tune(args: argparse.Namespace) -> int:
    """Run ``hasten tune``: checks first (target, numbers, candidates, plotting), then the candidates.

    Exits 1 when no candidate meets the target (the measurements are written, no best.json).
    """
    from hasten.report import json_safe, markdown_table, require_plots
    from hasten.tune import Target, candidates, shown_columns, tune as run_tune, winner_line, write_report

    target = Target.parse(args.target)  # before any work
    run = run_spec(args, 4, {"method": "sequential", "steps": args.steps})
    candidates(run.steps, run.sampling.solver, args.cores, args.widths, methods=args.methods)  # validates the lists
    check_out(args.out)
    require_plots()
    quiet_pipeline_loading(run)
    with OutputFolder(args.out) as out:
        report = run_tune(run, target, args.devices, chords_cores=args.cores, widths=args.widths,
                          methods=args.methods, threads=args.threads, comm_ms=args.comm_ms, repeats=args.repeats,
                          progress=not args.no_progress, log=(lambda _: None) if args.json else print,
                          latency_table=args.latency_table)
        command = "hasten " + " ".join(sys.argv[1:]) if sys.argv[1:2] == ["tune"] else "hasten tune"
        write_report(report, out, command)
    if args.json:
        print(json.dumps(json_safe(report.to_dict())))
    else:
        print(markdown_table(report.rows, shown_columns(report.rows)))
        s = report.settings
        print(f"\n{s['run']} of {s['candidates']} candidates run ({s['pruned']} pruned); predicted for "
              f"{s['devices']} device(s), latency at {s['threads']} thread(s)")
        from hasten.tune.report import layout_section

        print(layout_section(report), end="")
    if report.best is None:
        print(f"hasten: {winner_line(report)}", file=sys.stderr)
        return 1
    if not args.json:
        print(f"winner: {report.best['tune']['label']} -> {args.out}/best.json "
              f"(hasten sample --config {args.out}/best.json)")
    return 0


def make_tiny(args: argparse.Namespace) -> int:
    """Save a tiny pipeline; an earlier pipeline in the folder is replaced whole, anything else is refused."""
    from hasten.testing.pipelines import save_tiny_pipeline

    if args.out is None and args.lora is None:
        raise HastenError("make-tiny: give --out FOLDER (the pipeline), --lora FILE (a LoRA for it), or both")
    if args.lora is not None:
        from hasten.cli.inputs import make_tiny_lora

        print(make_tiny_lora(args.kind, args.lora))
        if args.out is None:
            return 0
    out = check_out(args.out)
    quiet_pipeline_loading(None)
    if out.is_dir() and any(out.iterdir()) and not (out / "model_index.json").is_file():
        raise HastenError(f"--out {out} holds files that are not a saved pipeline; give a new or empty folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        save_tiny_pipeline(args.kind, staging / "pipe")
        if out.exists():  # the earlier pipeline goes whole, so no old component stays mixed in
            shutil.rmtree(out)
        (staging / "pipe").rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    print(out)
    return 0


def demo(args: argparse.Namespace) -> int:
    """Run ``hasten demo`` (:mod:`hasten.demo`): checks first, then the measurements."""
    from hasten.checks import check_int
    from hasten.demo import run_demo
    from hasten.report import require_plots

    check_int("--batch", args.batch, 1)
    check_int("--repeats", args.repeats, 1)
    check_int("--devices", args.devices, 1, allow_none=True)
    check_out(args.out)
    require_plots()
    with OutputFolder(args.out) as out:
        run_demo(out, args.batch, args.repeats, args.devices, progress=not args.no_progress)
    return 0
