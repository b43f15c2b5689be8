"""The ``hasten serve`` command's flags (added to hasten's parser by :func:`add_serve_parser`)."""

from __future__ import annotations

import argparse

DEFAULT_MODEL = "digits-cond"


def add_serve_parser(sub, formatter=argparse.ArgumentDefaultsHelpFormatter) -> argparse.ArgumentParser:
    """Add ``serve`` to hasten's subcommands ``sub``: the shared model, method and placement options, then its own."""
    from hasten.cli.options import (add_method_options, add_model_options, add_placement_options, add_solver_option,
                                    add_stop_option)

    p = sub.add_parser("serve", help="serve a model over HTTP (OpenAI images API, streamed previews, a web page)",
                       formatter_class=formatter,
                       description="Load the model once and serve it: POST /v1/images/generations (OpenAI's images "
                                   "API; stream: true streams each hit as it lands), GET /v1/models, /health, "
                                   "/metrics and a page at /. Needs the serve extra: pip install hasten[serve]. "
                                   "The method flags are a request's defaults. On many GPUs: torchrun "
                                   "--nproc_per_node N -m hasten serve --executor distributed ...")
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
    p.add_argument("--api-key", help="require Authorization: Bearer KEY on /v1/* (or set HASTEN_API_KEY, which "
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
    p.add_argument("--lora", action="append", metavar="NAME=PATH[:SCALE]", default=[],
                   help="preload a LoRA adapter (repeatable); a request picks one by NAME under hasten.lora")
    return p


def run_serve(args: argparse.Namespace) -> int:
    """Run the server (imports the serve extra only now)."""
    from hasten.errors import HastenError

    try:
        from hasten.serve.server import serve
    except ImportError as err:
        raise HastenError(f"hasten serve needs the serve extra ({err.name} is missing): "
                          "pip install 'hasten[serve]'") from None
    from hasten.integrations.lora import check_lora_file, parse_named_lora
    from hasten.serve.model import ServedModel

    loras = [parse_named_lora(text) for text in args.lora]
    for name, path, _ in loras:
        check_lora_file(path, f"--lora {name}=")  # before the model loads
    if len({name for name, _, _ in loras}) != len(loras):
        raise HastenError("--lora: each adapter needs its own NAME")
    ServedModel.default_loras = tuple(loras)  # the served model preloads them (hasten.serve.model)
    return serve(args)
