"""``hasten bench --race``: hasten's caches and CHORDS against diffusers' own cache hooks, side by side, one process.

For one model, its prompts and one seed, the race runs uncached sequential
sampling (the reference) and then each entrant (:mod:`hasten.bench.entrants`)
through the same :class:`~hasten.session.Session`. A diffusers entrant runs
the same sequential sampling with its hook enabled on the transformer for
the row alone (``enable_cache`` before, ``disable_cache`` after: the leak
check counts the hooks left, and the reference is sampled again at the end
and must come out the same). Each row holds:

* ``nfe``: network evaluations per sample; the engine's own counter
  (``Result.nfe``) for hasten rows, transformer calls counted with a forward
  hook for diffusers rows (a hook's call still counts: it skips inside);
* ``blocks_frac``: the fraction of the transformer blocks' work that ran,
  counted with forward hooks (:mod:`hasten.bench.counting`), against the reference;
* ``wall_s``: the median of ``repeats`` timed runs after a warm-up and one
  untimed run, summed over the prompts; the timed runs go round-robin over the
  entrants, so a change in a shared machine's load falls on every row alike; ``speedup_wall``: the reference's over it (same process);
* ``psnr`` / ``ssim``: decoded images against the reference's (same seed, same
  prompt; :mod:`hasten.metrics`), averaged over the prompts; ``adherence``:
  the model's score of the images against their prompts where a scorer is
  given (``shapes``: :func:`hasten.models.shapes.adherence`), else None.

Output: ``race.json`` (``rows``, ``skipped``, the command), ``race.md`` and
``race.png``, speedup against SSIM with each family's Pareto front.
"""

from __future__ import annotations

import ast
import contextlib
import io
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch

from hasten.bench.counting import WorkCounter, diffusers_hooks_left
from hasten.bench.entrants import Entrant, hook_config, parse_entrants
from hasten.bench.timing import device_name, median_of, warm_up
from hasten.errors import HastenError
from hasten.integrations.hooks import diffusers_cache
from hasten.metrics import psnr, ssim
from hasten.models import MODEL_SCORERS, SCORERS, adherence
from hasten.report import markdown_table, write_json
from hasten.session import Session
from hasten.spec import RunSpec, Sampling

COLUMNS = [("name", "entrant"), ("nfe", "NFE"), ("rounds", "rounds"), ("blocks_frac", "blocks run"),
           ("wall_s", "wall s"), ("speedup_wall", "wall speedup"), ("psnr", "PSNR dB"), ("ssim", "SSIM"),
           ("adherence", "adherence")]
#: the transformers diffusers 0.42's SeaCache has a raw-vision adapter for (elsewhere it runs fail-open)
SEACACHE_ADAPTED = ("Cosmos3OmniTransformer", "WanTransformer3DModel")


@dataclass
class RaceConfig:
    """What the race runs: the shared run (model, call, seed, batch, steps), the entrants, the prompts."""

    run: RunSpec
    entrants: Sequence[str] | None = None  # None: :func:`~hasten.bench.entrants.default_entrants`
    prompts: Sequence[str] | None = None   # None: the run's own prompt
    repeats: int = 3
    scorer: str | None = None
    progress: bool = True
    command: str = ""
    parsed: list[Entrant] = field(default_factory=list, init=False)

    def validate(self) -> None:
        if self.run.placement.executor != "batched":
            raise HastenError(f"--race runs on one device (executor batched), not {self.run.placement.executor}")
        prompts = self.prompts or ([self.run.call["prompt"]] if self.scorer and (self.run.call or {}).get("prompt")
                                   else None)
        self.parsed = check_race(self.entrants, prompts, self.scorer, self.repeats, self.run.steps)


def check_race(entrants: Sequence[str] | None, prompts: Sequence[str] | None, scorer: str | None, repeats: int,
               steps: int | None) -> list[Entrant]:
    """The race's own options checked (no model needed); returns the parsed entrants, the reference first."""
    from hasten.checks import check_int

    check_int("--repeats", repeats, 1)
    if steps is None:
        raise HastenError("--race needs one --steps N")
    if scorer is not None and scorer not in SCORERS:
        raise HastenError(f"--race-score must be one of {', '.join(SCORERS)}, got {scorer!r}")
    if prompts is not None and (not prompts or any(not p.strip() for p in prompts)):
        raise HastenError("--race-prompts needs one or more non-empty prompts, separated by ';'")
    if scorer == "shapes":
        from hasten.models.shapes import parse_caption

        for prompt in prompts or ():
            parse_caption(prompt, "--race-prompts")
    return parse_entrants(entrants, steps)


def _calibrate_magcache(network, run, entrant: Entrant, steps: int, counter) -> list[float]:
    """MagCache's calibration as its docs give it: one ``calibrate=True`` run, its printed ratios read back."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), diffusers_cache(network, run.executor.denoiser,
                                                               hook_config(entrant, steps, calibrate=True)):
        run.sample()
    lines = [line for line in printed.getvalue().splitlines() if line.startswith("[")]
    if not lines:
        raise HastenError("MagCache calibration printed no ratios; is the transformer one MagCache supports?")
    return [float(r) for r in ast.literal_eval(lines[-1])]


def run_race(cfg: RaceConfig, out: Path | None, log: Callable[[str], None] = print,
             session: Session | None = None) -> dict:
    """Run the race and write ``race.json``, ``race.md`` and ``race.png`` into ``out`` (None writes nothing)."""
    cfg.validate()
    spec, steps = cfg.run, cfg.run.steps
    session = session or Session.open(spec)
    model, network = session.model, session.network
    scorer = cfg.scorer or MODEL_SCORERS.get(model.name)  # a model with a caption grammar is scored by default
    if network is None:
        raise HastenError(f"--race counts the network's work with hooks; {model.name} exposes no network")
    is_pipeline = hasattr(network, "enable_cache")
    base_call = dict(spec.call or {})
    prompts = list(cfg.prompts) if cfg.prompts else [base_call.get("prompt")]
    guidance_distilled = bool(getattr(getattr(network, "config", None), "guidance_embeds", False))
    rows, skipped, refs, calibrations = [], [], {}, {}
    counter = WorkCounter(network)
    from tqdm.auto import tqdm

    bar = tqdm(total=len(cfg.parsed) * len(prompts) * (1 + cfg.repeats), desc="race", unit="run",
               disable=not cfg.progress)
    calls = [{**base_call, **({"prompt": prompt} if prompt is not None else {})} or None for prompt in prompts]
    with counter:
        jobs: list[tuple[Entrant, list[tuple[int, Callable]]]] = []
        for entrant in cfg.parsed:  # prepared, warmed up and run once untimed (a hook diffusers refuses is skipped)
            if entrant.kind == "diffusers" and not is_pipeline:
                skipped.append({"name": entrant.name, "reason": f"{type(network).__name__} has no diffusers hooks"})
                continue
            try:
                runs = [(p, _prepare_one(cfg, session, network, counter, entrant, call, p, calibrations,
                                         guidance_distilled)) for p, call in enumerate(calls)]
            except HastenError as err:
                if entrant.kind != "diffusers":
                    raise
                skipped.append({"name": entrant.name, "reason": str(err)})
                continue
            jobs.append((entrant, runs))
            bar.update(len(calls))
        # timed: round-robin over the entrants, so a change in the machine's load falls on every row alike
        attempts = {(j, p): [] for j, (_, runs) in enumerate(jobs) for p, _ in runs}
        for _ in range(cfg.repeats):
            for j, (_, runs) in enumerate(jobs):
                for p, attempt in runs:
                    attempts[j, p].append(attempt())
                    bar.update(1)
        for j, (entrant, runs) in enumerate(jobs):
            per_prompt = [_measure(scorer, entrant, attempts[j, p], calls[p], p, refs) for p, _ in runs]
            rows.append(_combine(entrant, per_prompt, rows[0] if rows else None, scorer))
            if entrant.hook == "seacache" and type(network).__name__ not in SEACACHE_ADAPTED:
                rows[-1]["note"] = (f"fail-open: diffusers' SeaCache adapts {', '.join(SEACACHE_ADAPTED)} only, "
                                    f"not {type(network).__name__} (nothing skipped, as counted)")
        # the leak check: the reference again, after every hook came off, must sample the same
        after = []
        for p, call in enumerate(calls):
            s = session.prepare(Sampling("sequential", steps=steps), seed=spec.seed, batch=spec.batch, call=call)
            after.append(float((s.sample().x - refs[p][0]).abs().max()))
    bar.close()
    report = {"command": cfg.command, "model": getattr(model, "name", str(spec.model)), "steps": steps,
              "seed": spec.seed, "batch": spec.batch, "prompts": prompts, "repeats": cfg.repeats,
              "scorer": scorer, "device": device_name(refs[0][0].device), "torch_threads": torch.get_num_threads(),
              "date": time.strftime("%Y-%m-%d"), "rows": rows, "skipped": skipped,
              "magcache_ratios": calibrations.get(0), "reference_after_max_abs_diff": max(after),
              "block_layers": len(counter.layers)}
    table = markdown_table(rows, COLUMNS)
    if out is not None:
        write_json(report, out / "race.json")
        notes = "".join(f"\n- skipped {s['name']}: {s['reason']}" for s in skipped) + "".join(
            f"\n- {r['name']}: {r['note']}" for r in rows if r.get("note"))
        (out / "race.md").write_text(
            f"# hasten race: {report['model']}, {steps} steps, seed {spec.seed}, batch {spec.batch}, "
            f"{len(prompts)} prompt(s), {report['device']}\n\nCommand: `{cfg.command}`\n\n{table}\n{notes}\n")
        from hasten.bench.race_plot import plot_race

        plot_race(rows, out / "race.png", f"{report['model']}, {steps} steps ({report['device']})")
    log(table)
    return report


def _prepare_one(cfg: RaceConfig, session: Session, network, counter: WorkCounter, entrant: Entrant, call,
                 p: int, calibrations: dict, guidance_distilled: bool) -> Callable:
    """One entrant on one prompt, prepared, warmed up and run once untimed; returns its timed attempt.

    An attempt enables the entrant's hook (a fresh one: no state carried between attempts), samples, times
    it, and takes the hook off; it returns (result, wall, counts, hooks left on the network, the run).
    """
    spec, steps = cfg.run, cfg.run.steps
    sampling = entrant.sampling if entrant.kind == "hasten" else Sampling("sequential", steps=steps)
    s = session.prepare(sampling, seed=spec.seed, batch=spec.batch, call=call)
    warm_up(s)
    config = None
    if entrant.kind == "diffusers":
        ratios = None
        if entrant.hook == "magcache":
            if p not in calibrations:
                calibrations[p] = _calibrate_magcache(network, s, entrant, steps, counter)
            ratios = calibrations[p]
        config = hook_config(entrant, steps, mag_ratios=ratios, timestep=lambda: counter.timestep or 1000.0,
                             guidance_distilled=guidance_distilled)

    def attempt():
        counter.reset()
        hook = diffusers_cache(network, s.executor.denoiser, config) if config is not None else contextlib.nullcontext()
        with hook:
            started = time.perf_counter()
            result = s.sample()
            if result.x.device.type == "cuda":
                torch.cuda.synchronize(result.x.device)
            wall = time.perf_counter() - started
        return result, wall, counter.snapshot(), diffusers_hooks_left(network), s

    attempt()  # untimed: the hook's first use, and a refusal before any timing
    return attempt


def _measure(scorer: str | None, entrant: Entrant, attempts: list, call, p: int, refs: dict) -> dict:
    """An entrant's timed attempts on one prompt: the median wall's attempt, its counts and its quality."""
    walls = [a[1] for a in attempts]
    result, wall, counts, left, s = median_of(len(attempts), iter(attempts).__next__, lambda a: a[1])[0]
    left = max(a[3] for a in attempts)
    if left:
        raise HastenError(f"{entrant.name} left {left} diffusers hook(s) on the network after its row")
    images = s.model.decode(result.x)  # the model bound to this call decodes it
    if p not in refs:  # the reference is measured first
        refs[p] = (result.x, images, counts)
    ref_x, ref_images, ref_counts = refs[p]
    batch = result.x.shape[0]
    return {"nfe": result.nfe if entrant.kind == "hasten" else counts["rows"] / batch,
            "rounds": result.rounds if entrant.kind == "hasten" else None,
            "calls": counts["calls"], "rows": counts["rows"], "work": counts["work"],
            "blocks_frac": counts["work"] / ref_counts["work"], "wall_s": wall, "wall_runs_s": walls,
            "psnr": psnr(images, ref_images, 1.0), "ssim": ssim(images, ref_images),
            "latent_max_abs_diff": float((result.x - ref_x).abs().max()),
            "adherence": adherence(scorer, images, (call or {}).get("prompt") or ""), "hooks_left": left}


def _combine(entrant: Entrant, per_prompt: list[dict], reference: dict | None, scorer: str | None) -> dict:
    """One row from an entrant's runs over the prompts: counts and walls summed, quality averaged."""
    def mean(key):
        values = [r[key] for r in per_prompt]
        return None if any(v is None for v in values) else sum(values) / len(values)

    wall = sum(r["wall_s"] for r in per_prompt)
    row = {"name": entrant.name, "kind": entrant.kind, "settings": entrant.settings,
           "nfe": mean("nfe"), "rounds": mean("rounds"), "calls": sum(r["calls"] for r in per_prompt),
           "rows": sum(r["rows"] for r in per_prompt), "blocks_frac": mean("blocks_frac"), "wall_s": wall,
           "speedup_wall": (reference["wall_s"] if reference else wall) / wall, "psnr": mean("psnr"),
           "ssim": mean("ssim"), "adherence": mean("adherence") if scorer else None,
           "latent_max_abs_diff": max(r["latent_max_abs_diff"] for r in per_prompt),
           "hooks_left": max(r["hooks_left"] for r in per_prompt),
           "wall_runs_s": [r["wall_runs_s"] for r in per_prompt]}
    return row
