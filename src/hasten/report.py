"""Reports for people (markdown tables, plots, image grids) and programs (JSON)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Sequence

import torch

from hasten.errors import HastenError
from hasten.jsonable import json_safe  # noqa: F401 - reports write JSON through it; imported from here too


def _matplotlib():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover - depends on the install
        raise HastenError("plots and image grids need matplotlib: pip install 'hasten[bench]'") from None
    return plt


def require_plots() -> None:
    """Refuse early, before any work, when the plotting library of the reports is missing."""
    _matplotlib()


def fmt(value: Any, digits: int = 4) -> str:
    """A table cell: floats to ``digits`` significant digits, None as '-'."""
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isinf(value):
            return "inf"
        if math.isnan(value):
            return "nan"
        return f"{value:.{digits}g}"
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)


def markdown_table(rows: Sequence[dict], columns: Sequence[tuple[str, str]]) -> str:
    """Rows of dicts as a markdown table; ``columns`` are (key, header) pairs."""
    head = "| " + " | ".join(h for _, h in columns) + " |"
    rule = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(fmt(r.get(k)) for k, _ in columns) + " |" for r in rows]
    return "\n".join([head, rule, *body])


def write_json(obj: Any, path: Path) -> None:
    path.write_text(json.dumps(json_safe(obj), indent=2) + "\n")


def save_image_grid(images: torch.Tensor, path: Path, ncol: int = 8) -> None:
    """Save images (B, C, H, W) in [0, 1] as one PNG grid (Pillow: no plotting library needed)."""
    from PIL import Image

    b, c, h, w = images.shape
    ncol = min(ncol, b)
    nrow = math.ceil(b / ncol)
    canvas = torch.ones(c, nrow * (h + 1) + 1, ncol * (w + 1) + 1)
    for n in range(b):
        r, q = divmod(n, ncol)
        canvas[:, 1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + q * (w + 1) : 1 + q * (w + 1) + w] = images[n].float().cpu()
    pixels = (canvas.clamp(0, 1) * 255).round().to(torch.uint8)
    array = pixels[0].numpy() if c == 1 else pixels[:3].permute(1, 2, 0).numpy()
    Image.fromarray(array).save(path, format="PNG")


def save_hit_grid(rows: Sequence[tuple[str, torch.Tensor]], path: Path, ncol: int = 8, title: str = "") -> None:
    """One labelled row of images per hit: ``rows`` are (label, images (B, 1, H, W))."""
    plt = _matplotlib()
    ncol = min(ncol, rows[0][1].shape[0])
    fig, axes = plt.subplots(len(rows), ncol, figsize=(ncol * 0.9 + 1.6, len(rows) * 0.95 + 0.4), squeeze=False)
    for r, (label, images) in enumerate(rows):
        for q in range(ncol):
            ax = axes[r][q]
            ax.imshow(images[q, 0].numpy(), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r][0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_convergence(curves: dict[str, list[tuple[int, float]]], path: Path, title: str) -> None:
    """Distance between each hit and the final output against rounds (CHORDS Fig. 5)."""
    plt = _matplotlib()
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, points in curves.items():
        pts = [(r, d) for r, d in points if d > 0]
        if pts:
            ax.plot(*zip(*pts), marker="o", label=label)
    ax.set_yscale("log")
    ax.set_xlabel("round (sequential model calls)")
    ax.set_ylabel("RMSE to final output")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_scaling(series: dict[str, list[tuple[int, float, float]]], path: Path, title: str) -> None:
    """Speedup and RMSE against the number of cores (CHORDS Fig. 4); points are (cores, speedup, rmse)."""
    plt = _matplotlib()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.6))
    for label, points in series.items():
        points = sorted(points)
        cores = [p[0] for p in points]
        ax1.plot(cores, [p[1] for p in points], marker="o", label=label)
        ax2.plot(cores, [p[2] for p in points], marker="o", label=label)
    ax1.set_xlabel("cores")
    ax1.set_ylabel("speedup (rounds)")
    ax2.set_xlabel("cores")
    ax2.set_ylabel("latent RMSE vs sequential")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    _save(plt, fig, path, title)


def _save(plt, fig, path: Path, title: str) -> None:
    """Title a multi-panel figure, write it and free it."""
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def cache_family(row: dict) -> str:
    """The series a bench row belongs to on the calls-vs-quality plot: its cache without the knob swept.

    ``abcache:2 T=3 W=2 form=eps`` -> ``abcache:2 fixed W=2 form=eps``; ``... tol=0.05 ...`` -> ``... adaptive ...``;
    a cache-less run (the reference or ``steps=M``) -> ``fewer steps``; other methods are prefixed by name.
    """
    label = str(row.get("cache") or "none")
    if label == "none":
        family = "fewer steps"
    elif label.startswith("diffusers:"):
        family = label.split(":")[0] + ":" + label.split(":")[1]
    else:
        family = re.sub(r" T=\d+", " fixed", re.sub(r" tol=\S+", " adaptive", label))
    return family if row.get("method") == "sequential" else f"{row.get('method')} {family}"


def plot_quality_vs_calls(rows: Sequence[dict], path: Path, title: str) -> None:
    """PSNR and latent RMSE against model calls per sample, one line per cache family (issue 11's Pareto plot)."""
    plt = _matplotlib()
    series: dict[str, list[tuple[int, float, float]]] = {}
    for row in rows:
        series.setdefault(cache_family(row), []).append((row["nfe"], row["psnr"], row["rmse"]))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for label, points in sorted(series.items()):
        points = sorted(points)
        adaptive = "adaptive" in label
        style = dict(marker="*" if adaptive else "o", linewidth=2.2 if adaptive else 1.2, label=label)
        finite = [(n, p) for n, p, _ in points if p is not None and math.isfinite(p)]
        if finite:
            ax1.plot(*zip(*finite), **style)
        positive = [(n, r) for n, _, r in points if r is not None and r > 0]
        if positive:
            ax2.plot(*zip(*positive), **style)
    ax1.set_ylabel("PSNR vs sequential (dB)")
    ax2.set_ylabel("latent RMSE vs sequential")
    ax2.set_yscale("log")
    for ax in (ax1, ax2):
        ax.set_xlabel("model calls per sample (NFE)")
        ax.grid(alpha=0.3)
    ax1.legend(fontsize=7)
    _save(plt, fig, path, title)


def plot_tune_front(rows: Sequence[dict], path: Path, title: str) -> None:
    """``hasten tune``'s candidates: predicted wall time against PSNR, the Pareto front (faster and at least
    as good) highlighted."""
    plt = _matplotlib()
    finite = [r["psnr"] for r in rows if math.isfinite(r["psnr"])]
    cap = (max(finite) if finite else 0.0) + 5
    pts = [(r["predicted_s"], min(r["psnr"], cap), r) for r in rows]
    front, best = [], -math.inf
    for t, q, r in sorted(pts, key=lambda p: (p[0], -p[1])):
        if q > best:
            front.append((t, q, r))
            best = q
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.scatter([p[0] for p in pts], [p[1] for p in pts], c=["tab:blue" if p[2]["meets"] else "tab:gray" for p in pts],
               s=18, label="candidates (grey: misses the target)")
    ax.plot([p[0] for p in front], [p[1] for p in front], "o-", color="tab:red", label="Pareto front")
    for t, q, r in front:
        ax.annotate(r["label"], (t, q), fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("predicted wall time (s)")
    ax.set_ylabel(f"PSNR vs sequential (dB; exact capped at {cap:.0f})")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
