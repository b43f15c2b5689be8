"""The race's Pareto plot: wall speedup against SSIM, one marker per family, each side's Pareto front drawn.

SSIM is drawn as ``1 - SSIM`` on a log axis, reversed (better to the right), so that entrants all within
a hair of 1 (a tiny random network) stay apart; ``FLOOR`` stands for an exact 1."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence


#: 1 - SSIM drawn for an SSIM of exactly 1
FLOOR = 1e-7


def family(row: dict) -> str:
    """``hasten:abcache:2:interval=3`` -> ``hasten abcache:2``; ``diffusers:magcache:...`` -> ``diffusers magcache``."""
    kind, _, rest = row["name"].partition(":")
    parts = rest.split(":")
    if kind == "hasten" and parts[0] == "abcache" and len(parts) > 1:
        return f"hasten abcache:{parts[1]}" + (" tol" if "tol=" in rest else "")
    if kind == "hasten" and parts[0].startswith("chords"):
        return "hasten chords" + (" + cache" if "+" in rest else "")
    return f"{kind} {parts[0].split('+')[0]}"


def pareto_front(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other beats on both axes (higher SSIM and higher speedup), by SSIM."""
    front = [p for p in points if not any(q[0] >= p[0] and q[1] >= p[1] and q != p for q in points)]
    return sorted(front)


def plot_race(rows: Sequence[dict], path: Path, title: str) -> None:
    from hasten.report import _matplotlib

    plt = _matplotlib()
    fig, ax = plt.subplots(figsize=(8.5, 5.2))
    families: dict[str, list[tuple[float, float]]] = {}
    for row in rows:
        if row["ssim"] is not None:
            families.setdefault(family(row), []).append((row["ssim"], row["speedup_wall"]))
    markers = {"hasten": "o", "diffusers": "^"}
    colours = plt.get_cmap("tab20").colors

    def gap(ssim_value: float) -> float:
        return max(1 - ssim_value, FLOOR)

    for i, (name, points) in enumerate(sorted(families.items())):
        xs, ys = zip(*points)
        ax.scatter([gap(x) for x in xs], ys, marker=markers.get(name.split()[0], "s"), s=36, label=name,
                   alpha=0.85, color=colours[i % len(colours)])
    for side, style in (("hasten", "-"), ("diffusers", "--")):
        points = [p for name, pts in families.items() if name.startswith(side) for p in pts]
        front = pareto_front(points)
        if len(front) > 1:
            xs, ys = zip(*front)
            ax.plot([gap(x) for x in xs], ys, style, color="black" if side == "hasten" else "grey", lw=1,
                    label=f"{side} Pareto front")
    ax.axvline(0.05, color="red", lw=0.6, ls=":", label="SSIM 0.95")
    ax.set_xscale("log")
    ax.invert_xaxis()
    ax.set_xlabel(f"1 - SSIM against uncached sequential, same seed (log; {FLOOR:g} = exactly 1)")
    ax.set_ylabel("wall speedup over uncached sequential")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best", ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
