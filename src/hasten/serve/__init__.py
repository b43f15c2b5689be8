"""``hasten serve``: an HTTP service whose requests become runs and whose hits become streamed images.

Layout: :mod:`~hasten.serve.cli` (the command's flags), :mod:`~hasten.serve.server` (start, drain, stop),
:mod:`~hasten.serve.app` (routes), :mod:`~hasten.serve.request` (a body checked field by field),
:mod:`~hasten.serve.runs` (a request becomes a run: the one place that knows run fields),
:mod:`~hasten.serve.scheduler` (bounded FIFO, batches), :mod:`~hasten.serve.runner` (a batch run, its events),
:mod:`~hasten.serve.events` (OpenAI's shapes, SSE), :mod:`~hasten.serve.previews` (preview modes, PNG),
:mod:`~hasten.serve.distributed` (rank 0 and the others), :mod:`~hasten.serve.metrics` (Prometheus),
``static/`` (the page). Needs the ``serve`` extra: ``pip install hasten[serve]``.
"""

from hasten.serve.cli import add_serve_parser, run_serve

__all__ = ["add_serve_parser", "run_serve"]
