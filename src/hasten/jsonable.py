"""JSON for reports and config files: numbers JSON cannot hold (inf, nan) written as strings."""

from __future__ import annotations

import math
from typing import Any


def json_safe(obj: Any) -> Any:
    """Replace inf/nan floats (not valid JSON) with strings, recursively."""
    if isinstance(obj, float) and (math.isinf(obj) or math.isnan(obj)):
        return str(obj)
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if type(obj).__module__.startswith("PIL."):  # an input image: the path it was read from (hasten.integrations.images)
        return getattr(obj, "filename", None) or f"image {obj.size[0]}x{obj.size[1]}"
    return obj
