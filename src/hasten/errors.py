"""Errors hasten raises on purpose; the CLI prints them without a traceback."""

from __future__ import annotations


class HastenError(ValueError):
    """Invalid input or configuration, detected before any work starts."""


class NonFiniteOutputError(HastenError, FloatingPointError):
    """The model returned NaN or Inf; the message names the grid step and round."""
