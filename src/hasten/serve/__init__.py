"""``hasten serve``: an HTTP service whose requests become runs and whose hits become streamed images.

Layout: :mod:`~hasten.serve.config` (a server's description: one ServeConfig of values; the flags live in
:mod:`hasten.cli.serve`), :mod:`~hasten.serve.front` (one process's service: queue, runs worker, metrics, app),
:mod:`~hasten.serve.server` (uvicorn in front of it: start, drain, stop), :mod:`~hasten.serve.ray` and
:mod:`~hasten.serve.scaling` (replicas of it on Ray Serve), :mod:`~hasten.serve.app` (routes),
:mod:`~hasten.serve.request` (a body checked field by field),
:mod:`~hasten.serve.runs` (a request becomes a run: the one place that knows run fields),
:mod:`~hasten.serve.scheduler` (bounded FIFO, batches), :mod:`~hasten.serve.runner` (a batch run, its events),
:mod:`~hasten.serve.events` (OpenAI's shapes, SSE), :mod:`~hasten.serve.previews` (preview modes, PNG),
:mod:`~hasten.serve.distributed` (rank 0 and the others), :mod:`~hasten.serve.metrics` (Prometheus),
``static/`` (the page). Needs the ``serve`` extra: ``pip install hasten[serve]``; replicas need ``hasten[ray]``.
"""
