"""The ``hasten serve`` command: its flags, read into one :class:`~hasten.serve.config.ServeConfig`.

The serve layer takes values only (a ServeConfig, and for ``--ray`` a
:class:`~hasten.serve.scaling.Scaling`); this module owns the flags, builds
those values from them and rewrites an error's keys into the flags a person
typed (``queue must`` -> ``--queue must``).
"""

from __future__ import annotations

import argparse
import os
import re

from hasten.cli.options import (add_method_options, add_model_options, add_placement_options, add_solver_option,
                                add_stop_option, flag_names, sampling_of)
from hasten.errors import HastenError
from hasten.serve.config import DEFAULT_MODEL, ServeConfig
from hasten.serve.scaling import Scaling

#: the environment variable that may hold the API key (instead of --api-key, which other users can read in ps)
API_KEY_ENV = "HASTEN_API_KEY"


def add_serve_parser(sub, formatter=argparse.ArgumentDefaultsHelpFormatter) -> argparse.ArgumentParser:
    """Add ``serve`` to hasten's subcommands ``sub``: the shared model, method and placement options, then its own."""
    p = sub.add_parser("serve", help="serve a model over HTTP (OpenAI images API, streamed previews, a web page)",
                       formatter_class=formatter,
                       description="Load the model once and serve it: POST /v1/images/generations (OpenAI's images "
                                   "API; stream: true streams each hit as it lands), GET /v1/models, /health, "
                                   "/metrics and a page at /. Needs the serve extra: pip install hasten[serve]. "
                                   "The method flags are a request's defaults. On many GPUs: torchrun "
                                   "--nproc_per_node N -m hasten serve --executor distributed ...; many copies "
                                   "behind one address: --ray --replicas N (pip install hasten[ray]).")
    add_model_options(p, default=DEFAULT_MODEL)
    add_method_options(p)
    add_solver_option(p)
    add_stop_option(p, default="none")  # every core lands: the last preview is the sequential result
    add_placement_options(p, max_batch=False, compile=False, executor_help=(
        "batched: runs here; distributed: every rank of a torchrun launch runs each request (SPMD), rank 0 "
        "answers; a lost rank fails the in-flight requests within --timeout and the server exits 3"))
    p.add_argument("--guidance-scale", type=float, help="default guidance scale (models that take one)")
    p.add_argument("--size", metavar="WxH", help="pipelines: the image size of a request that gives none (default: "
                   "the pipeline's own)")
    p.add_argument("--frames", type=int, help="video pipelines: frames of every clip (default: the pipeline's own)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (loopback unless told otherwise)")
    p.add_argument("--port", type=int, default=8000, help="port to bind")
    p.add_argument("--api-key", help=f"require Authorization: Bearer KEY on /v1/* (or set {API_KEY_ENV}, which "
                   "other users cannot read in ps)")
    p.add_argument("--methods", type=lambda t: [v.strip() for v in t.split(",") if v.strip()],
                   help="methods a request may ask for (default: all)")
    p.add_argument("--preview", default="full", choices=["full", "approx", "none"],
                   help="partial images: full decode, approx (a linear latent-to-RGB projection fitted at start), "
                        "or none")
    p.add_argument("--queue", type=int, default=16, help="requests that may wait; beyond them 429 with Retry-After")
    p.add_argument("--max-batch", type=int, default=8, help="most samples in one run when compatible queued "
                   "requests (same method, steps, size, ...) are batched; 1 runs each alone")
    p.add_argument("--max-n", type=int, default=4, help="most images one request may ask for")
    p.add_argument("--max-size", type=int, default=1024, help="largest image side a request may ask for")
    p.add_argument("--max-steps", type=int, help="most steps a request may ask for (default: the scheduler's)")
    p.add_argument("--max-cores", type=int, default=16, help="largest per-round budget a request may ask for")
    p.add_argument("--max-prompt", type=int, default=1000, help="longest prompt, in characters")
    p.add_argument("--max-seed", type=int, default=2**32 - 1, help="largest seed")
    p.add_argument("--request-timeout", type=float, default=300.0,
                   help="seconds a request may take from arrival; then it fails (504) and its run stops")
    p.add_argument("--start-timeout", type=float, default=600.0, help="seconds the other ranks wait for rank 0 "
                   "to start serving (loading a model takes each rank its own time)")
    p.add_argument("--lora", dest="loras", action="append", metavar="NAME=PATH[:SCALE]",
                   help="preload a LoRA adapter (repeatable); a request picks one by NAME under hasten.lora")
    _add_ray_options(p)
    return p


def _add_ray_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("replicas on Ray Serve (pip install hasten[ray]; RAY_ADDRESS names a cluster, else a "
                             "local Ray starts)")
    g.add_argument("--ray", action="store_true", help="serve through Ray Serve's proxy from replicas of this "
                   "server, each one loaded model on one device; the other flags configure every replica")
    g.add_argument("--replicas", type=int, help="fixed number of replicas (default: 1, or autoscaling when "
                   "--min-replicas / --max-replicas is given)")
    g.add_argument("--min-replicas", type=int, help="autoscaling: fewest replicas")
    g.add_argument("--max-replicas", type=int, help="autoscaling: most replicas")
    g.add_argument("--target-ongoing-requests", type=float, help="autoscaling: requests in flight per replica "
                   "that Ray scales towards (default: --max-batch)")
    g.add_argument("--replica-cpus", type=float, help="CPUs Ray reserves for each replica (default: 1)")
    g.add_argument("--replica-gpus", type=float, help="GPUs Ray reserves for each replica (default: 1 with a "
                   "cuda --device, else 0)")


def config_of(args: argparse.Namespace) -> ServeConfig:
    """The flags as one ServeConfig (validated; an error names the flag)."""
    flat = {k: v for k, v in sampling_of(args).items() if v is not None and v != {}}
    for key in ServeConfig.PLACEMENT + ServeConfig.OWN + ("size", "frames"):
        value = getattr(args, key, None)
        if value is not None and key not in flat:
            flat[key] = value
    flat["api_key"] = args.api_key or os.environ.get(API_KEY_ENV) or None
    config = ServeConfig.from_dict(flat)
    from hasten.integrations.lora import check_lora_file

    for name, path, _ in config.loras:
        check_lora_file(path, f"--lora {name}=")  # before the model loads
    return config


def scaling_of(args: argparse.Namespace, config: ServeConfig) -> Scaling:
    """The ``--ray`` flags as a Scaling (refused without ``--ray``)."""
    given = {k: getattr(args, k) for k in Scaling.KEYS if getattr(args, k, None) is not None}
    if not args.ray:
        if given:
            raise HastenError(f"{next(iter(given))} applies with --ray only")
        return None
    return Scaling.for_config(config, **given)


def serve_flags(text: str) -> str:
    """An error in the words of the serve command line: the server's own keys and the shared ones as flags."""
    text = text.replace("loras: ", "--lora: ")
    for key in ServeConfig.OWN + ServeConfig.PLACEMENT + Scaling.KEYS + ("size", "frames"):
        text = re.sub(rf"(^|: |; |, |with |/ |>= ){re.escape(key)}(?=( must| appl|, | /|: | \())",
                      rf"\g<1>--{key.replace('_', '-')}", text)
    return flag_names(text)


def run_serve(args: argparse.Namespace) -> int:
    """Run the server (imports the serve extra, and Ray for ``--ray``, only now)."""
    try:
        config = config_of(args)
        scaling = scaling_of(args, config)
    except HastenError as err:
        raise HastenError(serve_flags(str(err))) from None
    try:
        from hasten.serve.server import serve
    except ImportError as err:
        raise HastenError(f"hasten serve needs the serve extra ({err.name} is missing): "
                          "pip install 'hasten[serve]'") from None
    try:
        if scaling is not None:
            from hasten.serve.ray import run_on_ray

            return run_on_ray(config, scaling)
        return serve(config)
    except HastenError as err:
        raise HastenError(serve_flags(str(err))) from None
