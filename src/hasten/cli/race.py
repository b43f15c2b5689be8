"""``hasten bench --race``: the race's flags and its command (:mod:`hasten.bench.race`)."""

from __future__ import annotations

import argparse
import json
import shlex
import sys

from hasten.cli.options import run_spec, str_list
from hasten.errors import HastenError
from hasten.output import OutputFolder, check_out

#: bench flags the race replaces with its own entrants (a value other than the default is refused)
_BENCH_ONLY = {"methods": "--methods", "cores": "--cores", "caches": "--caches", "init": "--init",
               "until_stop": "--until-stop", "emulate_latency": "--emulate-latency"}
_RACE_FLAGS = {"race_entrants": "--race-entrants", "race_prompts": "--race-prompts", "race_score": "--race-score"}


def add_race_options(parser: argparse.ArgumentParser) -> None:
    """The race's flags on ``hasten bench``."""
    g = parser.add_argument_group("race (--race)")
    g.add_argument("--race", action="store_true",
                   help="race hasten's caches and CHORDS against diffusers' own cache hooks (FirstBlockCache, "
                        "TaylorSeer, MagCache calibrated first, FasterCache, PAB, SeaCache) on one device: one "
                        "--steps N, writes race.json, race.md and race.png (speedup against SSIM)")
    g.add_argument("--race-entrants", type=str_list, help="comma-separated entrants (default: the full field): "
                   "hasten:sequential, hasten:CACHE (e.g. hasten:abcache:2:interval=3, hasten:abcache:2:tol=0.05), "
                   "hasten:chords:K[+CACHE], diffusers:HOOK[:key=value...] with HOOK one of firstblock, taylorseer, "
                   "magcache, fastercache, pab, seacache and the hook config's own fields")
    g.add_argument("--race-prompts", type=lambda s: [p.strip() for p in s.split(";")],
                   help="';'-separated prompts, each run with every entrant (default: --prompt)")
    g.add_argument("--race-score", help="adherence scorer of the images against their prompts: shapes (the "
                   "captioned shapes flux-mini is trained on)")
    parser.set_defaults(_race_defaults={key: parser.get_default(key) for key in _BENCH_ONLY})


def check_race_flags(args: argparse.Namespace) -> None:
    """Refuse race flags without --race, bench-grid flags with it, and more than one --steps."""
    if not args.race:
        given = [flag for key, flag in _RACE_FLAGS.items() if getattr(args, key) is not None]
        if given:
            raise HastenError(f"{', '.join(given)} appl{'ies' if len(given) == 1 else 'y'} to --race only")
        return
    defaults = args._race_defaults
    clash = [flag for key, flag in _BENCH_ONLY.items() if getattr(args, key) != defaults[key]]
    if clash:
        raise HastenError(f"--race runs its own entrants; {', '.join(clash)} belong to the bench grid "
                          "(give --race-entrants instead)")
    if len(args.steps) != 1:
        raise HastenError(f"--race takes one --steps N, got {','.join(map(str, args.steps))}")
    if args.executor not in (None, "batched"):
        raise HastenError(f"--race runs on one device (--executor batched), not --executor {args.executor}")


def race(args: argparse.Namespace) -> int:
    """Run the race: every flag checked (entrants parsed) before the model is opened."""
    from hasten.bench.grid import parse_steps
    from hasten.bench.race import RaceConfig, check_race, run_race
    from hasten.cli.commands import quiet_pipeline_loading
    from hasten.report import json_safe, require_plots

    check_race_flags(args)
    solver, steps = parse_steps(args.steps[0], args.solver)
    check_race(args.race_entrants, args.race_prompts, args.race_score, args.repeats, steps)  # before the model
    run = run_spec(args, 64, {"method": "sequential", "steps": steps, **({"solver": solver} if solver else {})})
    command = "hasten " + shlex.join(sys.argv[1:]) if sys.argv[1:2] == ["bench"] else "hasten bench --race"
    cfg = RaceConfig(run, entrants=args.race_entrants, prompts=args.race_prompts, repeats=args.repeats,
                     scorer=args.race_score, progress=not args.no_progress, command=command)
    cfg.validate()
    check_out(args.out)
    require_plots()
    quiet_pipeline_loading(run)
    with OutputFolder(args.out) as out:
        report = run_race(cfg, out, log=(lambda _: None) if args.json else print)
    if args.json:
        print(json.dumps(json_safe(report)))
    return 0
