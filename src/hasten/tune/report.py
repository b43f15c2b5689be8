"""What ``hasten tune`` writes: ``tune.json``, ``best.json``, ``tune.md`` and ``pareto.png``."""

from __future__ import annotations

from pathlib import Path

from hasten.config import save_config
from hasten.tune.search import TuneReport


COLUMNS = [("rank", "#"), ("label", "configuration"), ("predicted_s", "predicted wall s"),
           ("predicted_speedup", "pred. speedup"), ("measured_s", "measured s (here, D=1)"), ("rounds", "rounds"),
           ("nfe", "NFE"), ("psnr", "PSNR dB"), ("ssim", "SSIM"), ("ms_ssim", "MS-SSIM"), ("adherence", "adherence"),
           ("rmse", "RMSE"), ("meets", "meets target")]
#: shown only where some row measured them (images; 161 pixels a side for MS-SSIM; a model with a caption score)
OPTIONAL_COLUMNS = ("ssim", "ms_ssim", "adherence")


def write_report(report: TuneReport, out, command: str = "") -> None:
    """``tune.json`` (every row and the curves), ``best.json`` (the winner's config), ``tune.md`` and ``pareto.png``.

    Without a winner (no candidate meets the target) there is no ``best.json``,
    and ``tune.md`` says so.
    ``out``: a folder path, or a :class:`hasten.output.OutputFolder` (files land when it commits).
    """
    from hasten.output import OutputFolder
    from hasten.report import markdown_table, plot_tune_front, write_json

    out = out if isinstance(out, OutputFolder) else Path(out)
    write_json({"command": command, **report.to_dict()}, out / "tune.json")
    if report.best is not None:
        save_config(report.best, out / "best.json")
    s = report.settings
    title = (f"hasten tune: {s['model']}, {s['devices']} device(s), target {s['target']}, "
             f"{s['solver']}-{s['steps']}, batch {s['batch']}")
    table = markdown_table(report.rows, shown_columns(report.rows))
    (out / "tune.md").write_text(f"# {title}\n\nCommand: `{command}`\n\n{table}\n\n"
                                 f"{winner_line(report)}\n{layout_section(report)}")
    plot_tune_front(report.rows, out / "pareto.png", title)


def shown_columns(rows: list[dict]) -> list[tuple[str, str]]:
    """COLUMNS less the optional ones no row measured."""
    return [c for c in COLUMNS if c[0] not in OPTIONAL_COLUMNS or any(r.get(c[0]) is not None for r in rows)]


LAYOUT_COLUMNS = [("layout", "T x C"), ("context_parallel", "--context-parallel"), ("predicted_s", "predicted wall s"),
                  ("source", "forward latency from")]


def layout_section(report: TuneReport) -> str:
    """The ranked (T, C) layouts of a tune on several devices, as markdown ('' for one device)."""
    from hasten.report import markdown_table

    layouts = report.settings.get("layouts")
    if not layouts:
        return ""
    return (f"\n## Layouts on {report.settings['devices']} devices, for `{layouts['for']}`\n\n"
            f"{markdown_table(layouts['rows'], LAYOUT_COLUMNS)}\n")


def winner_line(report: TuneReport) -> str:
    """One line on the outcome: the winner, or that no candidate met the target and which came closest."""
    if report.best is not None:
        return f"Winner: `{report.best['tune']['label']}` (best.json)"
    closest = next(row for row in report.rows if not row["reference"]) if len(report.rows) > 1 else report.rows[0]
    return (f"No candidate meets {report.settings['target']} (only the sequential reference does): the closest, "
            f"`{closest['label']}`, reaches "
            f"{closest['psnr']:.1f} dB PSNR, "
            + ("" if closest.get("ssim") is None else f"SSIM {closest['ssim']:.3f}, ")
            + f"RMSE {closest['rmse']:.3g}; no best.json was written. Loosen the target, "
            "or give more steps or other --methods.")
