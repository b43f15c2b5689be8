"""The configurations ``hasten tune`` tries, in pruning chains ordered from most to least accurate."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from hasten.errors import HastenError
from hasten.spec import Sampling


@dataclass
class Candidate:
    """One configuration to try; ``chain`` names its pruning chain (most accurate member first)."""

    method: str
    steps: int
    chain: str
    cores: int | None = None
    options: dict = field(default_factory=dict)
    cache: str | None = None
    stop: str | None = None

    @property
    def label(self) -> str:
        parts = [self.method]
        if self.cores is not None:
            parts.append(f"K={self.cores}")
        parts += [f"{k}={v}" for k, v in self.options.items()]
        parts.append(f"N={self.steps}")
        if self.cache:
            parts.append(f"+ {self.cache}")
        return " ".join(parts)

    def sampling(self, solver: str | None) -> Sampling:
        """This candidate's run description (what is computed)."""
        return Sampling(self.method, self.cores, self.options, self.steps, solver, self.stop, self.cache)

    def config(self, solver: str | None, model: str | None = None) -> dict:
        """This candidate as a config file's content (:mod:`hasten.config`): its sampling, and the model tuned on."""
        return {"model": model, **self.sampling(solver).to_dict()}


#: the candidate families ``--methods`` chooses from
FAMILIES = ("sequential", "abcache", "chords", "chords+abcache", "paradigms", "parasolver-turbo")


#: the CHORDS core counts and the window / rho widths tried when none are given (those the steps can take)
DEFAULT_CORES, DEFAULT_WIDTHS = (2, 3, 4, 6, 8), (4, 8)


def candidates(steps: int, solver: str | None = None, chords_cores: Sequence[int] | None = None,
               widths: Sequence[int] | None = None, intervals: Sequence[int] = (2, 3, 4),
               methods: Sequence[str] | None = None) -> list[Candidate]:
    """The candidate list (a few dozen), in chains ordered from most to least accurate.

    ``methods`` restricts the families: ``sequential`` (fewer steps), ``abcache``
    (sequential + AB-Cache), ``chords``, ``chords+abcache``, ``paradigms``,
    ``parasolver-turbo``. ``chords_cores`` / ``widths`` given are checked
    against the steps (an entry they cannot take is an error); left out, the
    defaults the steps can take are tried. Tolerances are the method's default x 1/3, 1, 3.
    Chains: fewer steps (descending), cache intervals (ascending), each
    method-and-width's tolerances (ascending). CHORDS core counts are not a
    chain: the fastest core's quality is not monotone in K (on digits it rises).
    """
    if chords_cores is None:
        chords_cores = [k for k in DEFAULT_CORES if k < steps]
    if widths is None:
        widths = [w for w in DEFAULT_WIDTHS if w <= steps]
    chosen = FAMILIES if methods is None else tuple(methods)
    unknown = [m for m in chosen if m not in FAMILIES]
    if unknown:
        raise HastenError(f"--methods: unknown {', '.join(unknown)}; valid: {', '.join(FAMILIES)}")
    for flag, values, low, high in (("--methods", chosen, None, None), ("--cores", chords_cores, 2, steps - 1),
                                    ("--widths", widths, 2, steps)):
        if not values and flag == "--methods":
            raise HastenError(f"{flag} needs at least one value")
        twice = sorted({v for v in values if list(values).count(v) > 1}, key=str)
        if twice:
            raise HastenError(f"{flag} lists {', '.join(map(str, twice))} more than once")
        bad = [v for v in values if low is not None and not (isinstance(v, int) and low <= v <= high)]
        if bad:
            raise HastenError(f"{flag} {', '.join(map(str, bad))}: each must be in {low}..{high} for {steps} steps")
    out: list[Candidate] = []
    if "sequential" in chosen:
        for m in sorted({round(steps * f) for f in (0.75, 0.5, 0.25) if 2 <= round(steps * f) < steps}, reverse=True):
            out.append(Candidate("sequential", m, "sequential-steps"))
    cache_specs = [f"abcache:2:interval={t}" for t in intervals if t < steps // 2]
    if "abcache" in chosen:
        out += [Candidate("sequential", steps, "abcache", cache=c) for c in cache_specs]
        out += [Candidate("sequential", steps, "abcache-tol", cache=f"abcache:2:tol={t}") for t in (0.02, 0.05, 0.1)]
    valid_cores = list(chords_cores)
    if "chords" in chosen:
        out += [Candidate("chords", steps, f"chords-{k}", cores=k, stop="first") for k in valid_cores]
    if "chords+abcache" in chosen and cache_specs:
        out += [Candidate("chords", steps, f"chords-{k}+abcache", cores=k, cache=cache_specs[0], stop="first")
                for k in valid_cores]
    for name, default in (("paradigms", 0.1), ("parasolver-turbo", 0.5 if solver in ("ddpm", "euler-stochastic") else 0.03)):
        if name not in chosen:
            continue
        for w in widths:
            for scale in (1 / 3, 1, 3):
                tol = float(f"{default * scale:.3g}")
                out.append(Candidate(name, steps, f"{name}-{w}", cores=w, options={"tol": tol}))
    if not out:
        raise HastenError(f"--methods {','.join(chosen)} give no candidate on {steps} steps (fewer steps and caches "
                          "need at least 4 steps); add families or steps")
    return out
