"""Caches answer some model evaluations by extrapolation instead of the model."""

from hasten.caches.abcache import ABCache, CacheConfig, make_cache, parse_cache_spec
from hasten.caches.base import Cache

__all__ = ["ABCache", "Cache", "CacheConfig", "make_cache", "parse_cache_spec"]
