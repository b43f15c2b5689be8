"""Caches answer some model evaluations by extrapolation instead of the model."""

from hasten.caches.abcache import ABCache, CacheConfig, make_cache, parse_cache_spec

__all__ = ["ABCache", "CacheConfig", "make_cache", "parse_cache_spec"]
