"""diffusers pipelines: adapters by family, scheduler plans, pipeline models, cache hooks.

The surface that wraps a pipeline, ``hasten.accelerate``, lives in :mod:`hasten.accelerated`.
"""
