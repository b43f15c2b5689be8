"""One table from the runs of benchmarks/gpu.sh: python benchmarks/gpu_table.py OUT > OUT/summary.md."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from hasten.report import markdown_table

COLUMNS = [("run", "run"), ("method", "method"), ("cores", "K"), ("cache", "cache"), ("rounds", "rounds"),
           ("speedup", "round speedup"), ("nfe", "NFE"), ("wall_s", "wall s"), ("wall_speedup", "wall speedup"),
           ("peak_gib", "peak GiB"), ("recompiles", "graphs compiled"), ("rmse", "latent RMSE")]


def main(out: Path) -> str:
    rows, devices, commands = [], set(), []
    for path in sorted(out.glob("*/results.json")):
        report = json.loads(path.read_text())
        devices.add(report.get("device_name", "?"))
        commands.append(report["command"])
        for row in report["rows"]:
            rows.append({"run": path.parent.name, **row})
    text = (f"# GPU benchmark: {', '.join(sorted(devices))}\n\n{markdown_table(rows, COLUMNS)}\n\nCommands:\n\n"
            + "\n".join(f"    {c}" for c in commands) + "\n")
    (out / "summary.md").write_text(text)
    return text


if __name__ == "__main__":
    print(main(Path(sys.argv[1] if len(sys.argv) > 1 else "report-gpu")))
