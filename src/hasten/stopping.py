"""When to stop a method that streams hits (CHORDS cores landing)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from hasten.errors import HastenError


def relative_residual(new: torch.Tensor, old: torch.Tensor) -> float:
    """Largest per-sample ``||new - old|| / ||new||`` over the batch.

    Relative, so the tolerance does not depend on the latent's size or scale.
    """
    diff = (new - old).flatten(1).norm(dim=1)
    ref = new.flatten(1).norm(dim=1).clamp_min(1e-12)
    return float((diff / ref).max())


@dataclass(frozen=True)
class Stop:
    """A stopping rule.

    * ``first``: after the first hit (CHORDS: the fastest core).
    * ``core:K``: after core K lands (1 = slowest core, the sequential result).
    * ``residual:TOL``: when the relative residual between consecutive hits is <= TOL.
    * ``none``: run to the end.
    """

    kind: str = "none"
    core: int | None = None
    tol: float | None = None

    @classmethod
    def parse(cls, spec: "str | Stop | None") -> "Stop":
        if spec is None:
            return cls()
        if isinstance(spec, Stop):
            return spec
        text = str(spec).strip()
        if text in ("first", "none"):
            return cls(text)
        name, _, value = text.partition(":")
        if name == "core":
            try:
                core = int(value)
            except ValueError:
                raise HastenError(f"stop 'core:K' needs an integer core, got {text!r}") from None
            if core < 1:
                raise HastenError(f"stop core must be >= 1, got {core}")
            return cls("core", core=core)
        if name == "residual":
            try:
                tol = float(value)
            except ValueError:
                raise HastenError(f"stop 'residual:TOL' needs a number, got {text!r}") from None
            if not tol > 0 or tol != tol or tol == float("inf"):
                raise HastenError(f"stop residual tolerance must be a finite number > 0, got {value}")
            return cls("residual", tol=tol)
        raise HastenError(f"stop must be one of first, core:K, residual:TOL, none; got {text!r}")

    def check_cores(self, cores: int) -> None:
        """Refuse ``core:K`` for a K the method does not have."""
        if self.kind == "core" and self.core > cores:
            raise HastenError(f"stop core:{self.core} asks for a core the method does not have (cores 1..{cores})")

    def reached(self, core: int, residual: float | None) -> bool:
        if self.kind == "first":
            return True
        if self.kind == "core":
            return core == self.core
        if self.kind == "residual":
            return residual is not None and residual <= self.tol
        return False

    def __str__(self) -> str:
        if self.kind == "core":
            return f"core:{self.core}"
        if self.kind == "residual":
            return f"residual:{self.tol:g}"
        return self.kind
