"""The options the commands share, declared once, and the run description they build.

Each group is a function that adds its flags to a command's parser:
:func:`add_model_options` (``--model``, ``--device``, ``--dtype``, ...),
:func:`add_call_options` (a pipeline's prompt and size), :func:`add_run_options`
(seed, batch, solver, stop, progress), :func:`add_placement_options`
(executor, backend, timeout, context parallelism, rows per forward, compile) and
:func:`add_method_options` (one method, its options and a cache). A command
adds the groups it takes and then only its own flags; :func:`run_spec` turns
the parsed flags into the one :class:`~hasten.spec.RunSpec`, and
:func:`flag_names` rewrites a validation error's keys into the flags a
person typed.
"""

from __future__ import annotations

import argparse
import re

from hasten.errors import HastenError
from hasten.methods import BUDGET_OPTION, DECLARED, METHODS, OPTIONS
from hasten.models import MODELS
from hasten.spec import RunSpec
from hasten.steps import SOLVERS

#: the pipeline call keys and their flags
CALL_FLAGS = {"prompt": "--prompt", "negative_prompt": "--negative-prompt", "guidance_scale": "--guidance-scale",
              "height": "--height", "width": "--width", "num_frames": "--frames"}
#: method options that only --cores sets on the command line (their own names appear in --method specs)
BUDGET_ONLY = ("cores", "max_per_round")
#: the method-option flags: every option any method takes, but the budgets
METHOD_FLAGS = sorted({k for opts in OPTIONS.values() for k in opts} - set(BUDGET_ONLY))

#: the cache spec grammar, as sample's --cache and bench's --caches take it
CACHE_GRAMMAR = ("A cache is none, reuse or abcache[:K] (Adams-Bashforth extrapolation, AB-Cache Eq. 3.6; K = order "
                 "1..4, default 2), each with :key=value options: interval=T (compute every T-th round after warm-up, "
                 "default 3) or tol=TOL (adaptive: call the model when the summed estimated error since the last "
                 "call would exceed TOL, clean-sample RMS, e.g. 0.02; docs/BENCHMARKS.md 'Adaptive AB-Cache'), "
                 "warmup=W, last=L, history=computed|all, form=paper|eps|x0|index (default eps on VP grids, paper on "
                 "flow grids); e.g. abcache:2:interval=3.")


def _flag(key: str) -> dict:
    """The argparse settings of a method option's flag, from the methods' declarations of it.

    An option several methods declare gets one flag whose help says what it means in each.
    """
    meanings: dict[str, list[str]] = {}
    readers = set()
    metavar = None
    for name, declared in DECLARED.items():
        if key in declared:
            meanings.setdefault(declared[key].help, []).append(name)
            readers.add(declared[key].parse or OPTIONS[name][key])
            metavar = metavar or declared[key].metavar
    if len(readers) != 1:
        raise HastenError(f"methods read option {key} in different ways; declare one reader")  # a bug, not input
    reader = readers.pop()
    help_text = "; ".join(f"{', '.join(names)}: {meaning}" for meaning, names in meanings.items())
    return {"type": _argparse_reader(reader), "help": help_text, **({"metavar": metavar} if metavar else {})}


def _argparse_reader(reader):
    """A declared reader as argparse takes it: a ValueError becomes argparse's own one-line error."""
    if reader in (int, float, str):
        return reader

    def read(text: str):
        try:
            return reader(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    read.__name__ = getattr(reader, "__name__", "value")
    return read


def int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected comma-separated integers, got nothing")
    return values


def str_list(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def add_model_options(p: argparse.ArgumentParser, default: str | None = "digits") -> None:
    """``--model``, ``--device``, ``--dtype``, ``--local-files-only``."""
    p.add_argument("--model", default=default,
                   help=f"embedded model ({', '.join(MODELS)}; options as name:key=value, e.g. "
                        "gmm-flow:shape=4096x64), flux-mini (a FluxPipeline trained here, shipped in the package), "
                        "a diffusers pipeline folder saved with save_pretrained, a "
                        "Hugging Face model id (e.g. black-forest-labs/FLUX.1-dev; downloaded unless "
                        "--local-files-only or HF_HUB_OFFLINE=1), or random:flux-dev | random:sd3.5-medium | "
                        "random:wan2.1-1.3b (the real-size network with random weights, for speed tests; "
                        "append :tiny for a small one)" + ("" if default else " (default: the --config file's "
                                                           "model, else digits)"))
    p.add_argument("--device", help="cpu, cuda, cuda:N or mps (default: cuda when available, else cpu; under "
                   "torchrun each rank takes cuda:LOCAL_RANK)")
    p.add_argument("--dtype", help="network dtype: float32, bfloat16 (bf16) or float16 (fp16); steps stay "
                   "float32 (default: float32 on cpu, the checkpoint's own dtype on a GPU)")
    p.add_argument("--local-files-only", action="store_true",
                   help="never download: a model id must already be in the local Hugging Face cache")


def add_call_options(p: argparse.ArgumentParser) -> None:
    """A pipeline's call: prompt, negative prompt, guidance, size, frames."""
    p.add_argument("--prompt", help="prompt, for text-conditioned pipelines")
    p.add_argument("--negative-prompt", help="negative prompt (classifier-free / true CFG)")
    p.add_argument("--guidance-scale", type=float, help="guidance scale, for pipelines (default: the pipeline's)")
    p.add_argument("--height", type=int, help="image / video height, for pipelines (default: the pipeline's)")
    p.add_argument("--width", type=int, help="image / video width, for pipelines (default: the pipeline's)")
    p.add_argument("--frames", type=int, help="number of video frames, for video pipelines")


def add_run_options(p: argparse.ArgumentParser, batch_default: int, stop: bool = True) -> None:
    """``--seed``, ``--batch``, ``--solver``, ``--stop`` (where the command takes one), ``--no-progress``."""
    p.add_argument("--seed", type=int, default=0, help="seed of the initial noise (torch.Generator), 0..2**63-1")
    p.add_argument("--batch", type=int, help=f"number of samples drawn together (default: {batch_default})")
    add_solver_option(p)
    if stop:
        add_stop_option(p)
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def add_solver_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--solver", choices=list(SOLVERS),
                   help="step; default ddim for VP models, euler for flow models; ddpm (VP) and "
                        "euler-stochastic (flow) draw every step's noise once before sampling, so parallel "
                        "methods converge to the sequential run of the same draws")


def add_stop_option(p: argparse.ArgumentParser, default: str | None = None) -> None:
    p.add_argument("--stop", default=default,
                   help="when a streaming method stops: first (fastest core), core:K (after core K "
                        "lands; 1 = slowest = sequential result), residual:TOL (relative change between "
                        "consecutive hits <= TOL), none (run to the end)"
                        + ("" if default is None else f" (default: {default})"))


def add_placement_options(p: argparse.ArgumentParser, timeout: float = 30.0, executor: bool = True,
                          compile: bool = True, executor_help: str | None = None, max_batch: bool = True) -> None:
    """``--max-batch``, ``--compile``, ``--executor``, ``--backend``, ``--timeout``, where the command takes them."""
    if max_batch:
        p.add_argument("--max-batch", type=int, help="most network rows in one forward (a round larger than this "
                       "runs in chunks; with classifier-free guidance each sample is two rows)")
    if compile:
        p.add_argument("--compile", nargs="?", const="inductor", metavar="BACKEND",
                       help="torch.compile the network (backend, default inductor); every forward is padded to one "
                            "size (padding is not counted as NFE) so one compiled graph serves the run")
    if not executor:
        p.set_defaults(executor="batched", backend=None, timeout=timeout, context_parallel=None)
        return
    p.add_argument("--executor", choices=["batched", "distributed"], default="batched",
                   help=executor_help or "batched: one forward per round here; distributed: spread each round over "
                   "the ranks of a torchrun launch (gloo on CPU, NCCL on CUDA); only rank 0 writes and prints")
    p.add_argument("--backend", choices=["gloo", "nccl"], help="torch.distributed backend (default: automatic)")
    p.add_argument("--timeout", type=float, default=timeout,
                   help="seconds any rank waits for the others before failing (distributed executor); torchrun's "
                        "own rendezvous of the nodes takes --rdzv-conf timeout=SECONDS instead")
    p.add_argument("--context-parallel", metavar="LAYOUT",
                   help="distributed executor on a pipeline: groups of C ranks share each forward through diffusers' "
                        "context parallelism (ulysses=C, ring=C or ulysses=2:ring=2); the W ranks form W / C time "
                        "groups over which each round is split")


def add_report_options(p: argparse.ArgumentParser, *, repeats: int, repeats_help: str, out: str,
                       report: str) -> None:
    """``--repeats``, ``--out`` and ``--json`` of a measuring command (bench, tune) writing ``report`` into ``--out``."""
    p.add_argument("--repeats", type=int, default=repeats, help=repeats_help)
    p.add_argument("--out", default=out, help="output folder (files of an earlier run there are replaced)")
    p.add_argument("--json", action="store_true", help=f"print {report} to stdout instead of the table")


def add_method_options(p: argparse.ArgumentParser) -> None:
    """One method (``--method`` SPEC, ``--cores``, ``--steps`` and every method option's flag) and ``--cache``."""
    p.add_argument("--method", help=f"method: {', '.join(METHODS)} (default: chords), optionally with options in the "
                   "words of bench's --methods, e.g. paradigms:window=8:tol=0.05 (the flags below set the same "
                   "options)")
    p.add_argument("--cores", type=int, help="the per-round budget, which each method names its own way: " + ", ".join(
        f"{name}: {option}" for name, option in BUDGET_OPTION.items()) + " (chords default: length of --init, else "
        "4, capped at steps - 1 with a notice)")
    p.add_argument("--steps", type=int, help="sampling steps N (default: 50)")
    for key in METHOD_FLAGS:
        p.add_argument(f"--{key.replace('_', '-')}", dest=key, **_flag(key))
    p.add_argument("--cache", metavar="SPEC", help="answer some evaluations from cached outputs; works with every "
                   f"method (default: none). {CACHE_GRAMMAR}")


def call_of(args: argparse.Namespace) -> dict:
    """The pipeline call the flags give (None where not given)."""
    return {key: getattr(args, flag.removeprefix("--").replace("-", "_"), None) for key, flag in CALL_FLAGS.items()}


def method_of(args: argparse.Namespace) -> tuple[str | None, dict]:
    """``--method`` and the method-option flags: (spec, options); a flag repeating the spec's option is refused."""
    from hasten.methods import parse_method_spec

    options = {key: getattr(args, key) for key in METHOD_FLAGS if getattr(args, key, None) is not None}
    if args.method is None:
        return None, options
    if args.method.strip():
        _, in_spec = parse_method_spec(args.method)
        for key, value in options.items():
            if key in in_spec and in_spec[key] != value:
                raise HastenError(f"--method {args.method} sets {key}={in_spec[key]} and --{key.replace('_', '-')} "
                                  f"{value}; give it once")
    return args.method, options


def run_spec(args: argparse.Namespace, batch_default: int, sampling: dict | None = None,
             config: str | None = None) -> RunSpec:
    """The run description of a command's flags, validated before any work.

    The shared flags (model, call, seed, batch, solver, placement) come from
    ``args``; ``sampling`` holds the command's own sampling keys (None: not
    given). Under ``config`` (``--config FILE``) the file fills what the flags leave open.
    """
    given = {"solver": args.solver, "executor": args.executor, "device": args.device, "dtype": args.dtype,
             "max_batch": args.max_batch, "compile": getattr(args, "compile", None), "backend": args.backend,
             "timeout": args.timeout, "context_parallel": getattr(args, "context_parallel", None), "call": call_of(args), "seed": args.seed, "batch": args.batch,
             "local_files_only": args.local_files_only or None, **(sampling or {})}
    given = {k: v for k, v in given.items() if v is not None and v != {}}
    if config is None:
        return RunSpec.from_dict({"model": "digits" if args.model is None else args.model, "batch": batch_default,
                                  **given})
    from hasten.config import load_config, merge_config

    file = load_config(config)
    if "batch" not in given and file.get("batch") is None:
        given["batch"] = batch_default
    return merge_config(config, model=(file.get("model") or "digits") if args.model is None else args.model, **given)


def sampling_of(args: argparse.Namespace) -> dict:
    """The sampling keys of one method's flags (``hasten sample``, ``hasten serve``)."""
    spec, options = method_of(args)
    return {"method": spec, "options": options, "cores": args.cores, "steps": args.steps, "stop": args.stop,
            "cache": args.cache}


def flag_names(text: str) -> str:
    """A validation error in the words of the command line: ``batch must`` -> ``--batch must``, ``prompt apply`` ..."""
    keys = {**{k: f"--{k.replace('_', '-')}" for k in RunSpec.KEYS if k not in ("call", "options")},
            **CALL_FLAGS, **{k: f"--{k.replace('_', '-')}" for k in METHOD_FLAGS}}
    keys["local_files_only"] = "--local-files-only"
    for key, flag in keys.items():
        text = re.sub(rf"(^|: |; |, ){re.escape(key)}(?=( must| appl|, ))", rf"\g<1>{flag}", text)
    return text
