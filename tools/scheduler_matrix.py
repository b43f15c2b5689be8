"""Every family x every scheduler diffusers ships for it: does hasten reproduce the pipeline, or refuse?

For each tiny pipeline (diffusers' dummy-component pattern, random weights,
offline) and each scheduler, sequential hasten sampling is compared with the
pipeline's own loop on the same seed:

* ``reproduces``: hasten runs the pipeline's scheduler (multistep ones included); max |difference| of the final latents.
* ``counterpart``: hasten runs the scheduler's first-order counterpart (with a logged notice); the
  difference is measured against the pipeline run with that counterpart.
* ``refused``: hasten refuses before sampling; the reason is its message (and, where the pipeline's
  own loop cannot run the scheduler either, its error).
* ``silent``: the pipeline's own loop raises for this scheduler, yet hasten sampled it. Never allowed.

Every cell first runs ``pipe()`` itself with the scheduler as given, so a scheduler the pipeline
refuses (or crashes on) is found whatever hasten does with it.

Usage: ``python tools/scheduler_matrix.py [--out docs/SCHEDULERS.md] [--json FILE]``.
The tests (tests/test_schedulers.py) run the same cells and assert the expected outcome of each.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import torch

import hasten
from hasten.errors import HastenError
from hasten.integrations.schedulers import first_order_scheduler
from hasten.testing.pipelines import TINY_CALLS, tiny_pipeline

STEPS = 7  # divides neither 1000 nor 100: exercises DDIM's landing on t - T // N
VP_FAMILIES = ("ddim", "ddpm", "sd", "sdxl", "cogvideox")
FLOW_FAMILIES = ("flux", "sd3", "wan", "hunyuanvideo")
#: flow-matching schedulers diffusers ships (the flow pipelines' compatibles list names only the first)
FLOW_SCHEDULERS = (
    ("FlowMatchEulerDiscreteScheduler", {}),
    ("FlowMatchEulerDiscreteScheduler", {"stochastic_sampling": True}),
    ("FlowMatchHeunDiscreteScheduler", {}),
    ("FlowMatchLCMScheduler", {}),
    ("UniPCMultistepScheduler", {"use_flow_sigmas": True, "prediction_type": "flow_prediction", "flow_shift": 3.0}),
    ("DPMSolverMultistepScheduler", {"use_flow_sigmas": True, "prediction_type": "flow_prediction",
                                     "flow_shift": 3.0}),
    ("DPMSolverMultistepScheduler", {"use_flow_sigmas": True, "prediction_type": "flow_prediction",
                                     "flow_shift": 3.0, "algorithm_type": "sde-dpmsolver++"}),
    ("UniPCMultistepScheduler", {"use_flow_sigmas": True, "prediction_type": "flow_prediction", "flow_shift": 3.0,
                                 "solver_type": "bh1"}),
)
#: options of reproduced VP schedulers worth a cell of their own
VP_VARIANTS = (
    ("DDIMScheduler", {"timestep_spacing": "linspace"}),
    ("DDIMScheduler", {"timestep_spacing": "trailing"}),
    ("DDIMScheduler", {"clip_sample": True}),
    ("DDIMScheduler", {"thresholding": True}),
    ("DDPMScheduler", {"clip_sample": True}),
    ("DDPMScheduler", {"variance_type": "fixed_large"}),
    ("EulerDiscreteScheduler", {"use_karras_sigmas": True}),
    ("EulerDiscreteScheduler", {"timestep_spacing": "trailing"}),
    ("EulerDiscreteScheduler", {"interpolation_type": "log_linear"}),
    ("DPMSolverMultistepScheduler", {"thresholding": True}),
    ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
    ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}),
    ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "use_karras_sigmas": True}),
    ("UniPCMultistepScheduler", {"solver_type": "bh1"}),
    ("UniPCMultistepScheduler", {"solver_type": "bh1", "final_sigmas_type": "sigma_min"}),
    ("UniPCMultistepScheduler", {"solver_type": "bh1", "use_karras_sigmas": True}),
    ("UniPCMultistepScheduler", {"use_karras_sigmas": True}),
    ("UniPCMultistepScheduler", {"use_karras_sigmas": True, "final_sigmas_type": "sigma_min"}),
)
#: options of one family's own schedulers (CogVideoX's default clip_sample=True, which neither step applies)
FAMILY_VARIANTS = {"cogvideox": (("CogVideoXDDIMScheduler", {"clip_sample": True}),
                                 ("CogVideoXDPMScheduler", {"clip_sample": True}))}
OPTIONAL = {"DPMSolverSDEScheduler": "torchsde"}  # schedulers whose step needs a package hasten does not install


def cases(kind: str) -> list[tuple[str, dict]]:
    """(scheduler class name, config overrides) for a family: its compatibles, then variants."""
    if kind == "wan":  # the flow pipeline that takes any scheduler: also the VP ones users swap in (issue 18)
        swapped = sorted({c.__name__ for c in _pipe("sd").scheduler.compatibles} | {"CogVideoXDDIMScheduler",
                                                                                   "CogVideoXDPMScheduler"})
        return list(FLOW_SCHEDULERS) + [(name, {}) for name in swapped]
    if kind in FLOW_FAMILIES:
        return list(FLOW_SCHEDULERS)
    pipe = _pipe(kind)
    names = sorted({type(pipe.scheduler).__name__, *(c.__name__ for c in pipe.scheduler.compatibles)})
    if kind == "cogvideox":  # CogVideoX's own second scheduler, not in the compatibles list
        names.append("CogVideoXDPMScheduler")
    return [(name, {}) for name in names] + list(VP_VARIANTS) + list(FAMILY_VARIANTS.get(kind, ()))


def label(name: str, options: dict) -> str:
    extra = ", ".join(f"{k}={v}" for k, v in options.items() if k not in ("use_flow_sigmas", "prediction_type",
                                                                          "flow_shift"))
    if options.get("use_flow_sigmas"):  # beside the same class on a VP config (Wan's swapped-in schedulers)
        extra = ", ".join(filter(None, ["flow sigmas", extra]))
    return name.removesuffix("Scheduler") + (f" ({extra})" if extra else "")


_PIPES: dict = {}


def _pipe(kind: str):
    if kind not in _PIPES:
        _PIPES[kind] = tiny_pipeline(kind)
        _PIPES[kind].default_scheduler = _PIPES[kind].scheduler
    return _PIPES[kind]


def _final(output) -> torch.Tensor:
    value = output.frames if hasattr(output, "frames") else output.images
    return torch.as_tensor(value).float()


def _call(kind: str) -> dict:
    call = {"num_inference_steps": STEPS, **TINY_CALLS[kind]}
    call["output_type"] = "np" if kind in ("ddim", "ddpm") else "latent"
    return call


def _run_pipeline(pipe, scheduler, kind: str, seed: int):
    """``pipe()`` with ``scheduler`` on the cell's call: its final latents, or its error as one line."""
    base = pipe.scheduler
    pipe.scheduler = scheduler
    try:
        torch.manual_seed(seed)
        return _final(pipe(generator=torch.Generator().manual_seed(seed), **_call(kind)))
    except Exception as err:  # noqa: BLE001 - the pipeline's own loop cannot run this scheduler
        return f"{type(err).__name__}: {err}".splitlines()[0]
    finally:
        pipe.scheduler = base


def check(kind: str, name: str, options: dict) -> dict:
    """One cell: the outcome, the max difference (or the refusal's message) and the scheduler sampled."""
    import diffusers

    pipe = _pipe(kind)
    base = pipe.default_scheduler
    cls = getattr(diffusers, name)
    config = dict(base.config)
    if kind in FLOW_FAMILIES and name != "FlowMatchEulerDiscreteScheduler":
        config = {"num_train_timesteps": 1000}
    scheduler = cls.from_config(config, **options)  # keyword overrides: a config's _use_default_values ignores dict ones
    if kind == "ddim":  # DDIMPipeline.__init__ turns any scheduler into a DDIMScheduler
        scheduler = diffusers.DDIMScheduler.from_config(scheduler.config)
    cell = {"family": kind, "scheduler": label(name, options)}
    seed = 3
    own = _run_pipeline(pipe, type(scheduler).from_config(scheduler.config), kind, seed)
    pipe.scheduler = scheduler
    try:
        torch.manual_seed(seed)
        ours = hasten.accelerate(pipe)(generator=torch.Generator().manual_seed(seed), **_call(kind))
    except HastenError as err:
        return {**cell, "outcome": "refused", "detail": str(err),
                **({"pipeline": own} if isinstance(own, str) else {})}
    finally:
        pipe.scheduler = base
    if isinstance(own, str):
        return {**cell, "outcome": "silent", "detail": f"the pipeline itself fails ({own}) but hasten sampled it",
                "sampled": ours.hasten["scheduler"]}
    sampled, _, replaced = first_order_scheduler(type(scheduler).from_config(scheduler.config))
    theirs = _run_pipeline(pipe, sampled, kind, seed) if replaced else own
    if isinstance(theirs, str):
        return {**cell, "outcome": "pipeline fails", "detail": theirs, "sampled": ours.hasten["scheduler"]}
    if not torch.isfinite(theirs).all():
        return {**cell, "outcome": "silent", "detail": "the pipeline itself returns NaN or Inf but hasten sampled it",
                "sampled": ours.hasten["scheduler"]}
    a = _final(ours)
    diff = float((a - theirs).abs().max())
    return {**cell, "outcome": "counterpart" if replaced else "reproduces", "max_diff": diff,
            "scale": float(theirs.abs().max()), "sampled": ours.hasten["scheduler"]}


def matrix(kinds=VP_FAMILIES + FLOW_FAMILIES) -> list[dict]:
    rows = []
    for kind in kinds:
        for name, options in cases(kind):
            if name in OPTIONAL:
                try:
                    __import__(OPTIONAL[name])
                except ImportError:
                    rows.append({"family": kind, "scheduler": label(name, options), "outcome": "skipped",
                                 "detail": f"needs {OPTIONAL[name]}, not installed"})
                    continue
            rows.append(check(kind, name, options))
            print(f"{kind:13s} {rows[-1]['scheduler']:55s} {rows[-1]['outcome']}", file=sys.stderr)
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| family | scheduler | outcome |", "|---|---|---|"]
    for r in rows:
        if r["outcome"] in ("reproduces", "counterpart"):
            what = (f"reproduces (max diff {r['max_diff']:.1e} on a scale of {r['scale']:.2g})"
                    if r["outcome"] == "reproduces" else
                    f"counterpart {r['sampled'].split(' ')[0]}, notice logged; reproduces the pipeline run with it "
                    f"(max diff {r['max_diff']:.1e})")
        else:
            what = f"{r['outcome']}: {r['detail']}" + (f" (the pipeline itself: {r['pipeline']})" if "pipeline" in r
                                                        else "")
            what = what.replace("|", "/")
        lines.append(f"| {r['family']} | {r['scheduler']} | {what} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write the markdown table here (between the matrix markers)")
    parser.add_argument("--json", type=Path, help="write the rows as JSON here")
    args = parser.parse_args(argv)
    logging.getLogger("hasten").setLevel(logging.ERROR)
    start = time.time()
    rows = matrix()
    table = markdown(rows)
    print(table)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    if args.out:
        text = args.out.read_text() if args.out.exists() else ""
        begin, end = "<!-- scheduler-matrix:begin -->", "<!-- scheduler-matrix:end -->"
        block = f"{begin}\n{table}\n{end}"
        text = text[:text.index(begin)] + block + text[text.index(end) + len(end):] if begin in text else text + block
        args.out.write_text(text)
    print(f"{len(rows)} cells in {time.time() - start:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
