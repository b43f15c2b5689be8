"""The ``--out`` folder of a command: checked before any work, complete or untouched after it.

* Checked first: ``--out`` must not be empty, not be a file, and be writable
  (or creatable), before any model is loaded.
* Streamed files (a hit's image, written the moment the hit lands) go straight
  into the folder. Final files (results, latents, plots) are written under a
  temporary name and renamed into place only when the run succeeds.
* A run that fails, is interrupted or receives SIGTERM removes every file it
  wrote (and the folder, if it created it and left it empty).
* A successful run replaces the previous run's files: the files listed in the
  folder's manifest (``.hasten-files.json``) that this run did not write are
  removed, so a re-used ``--out`` never mixes two runs. Files hasten did not
  write are never touched.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import TracebackType

from hasten.errors import HastenError

MANIFEST = ".hasten-files.json"


def check_out(path: str | Path, flag: str = "--out") -> Path:
    """Refuse an ``--out`` that is empty, a file, or not writable; return it as a Path."""
    if str(path).strip() == "":
        raise HastenError(f"{flag} must name a folder, got an empty string")
    out = Path(path).expanduser()
    if out.exists() and not out.is_dir():
        raise HastenError(f"{flag} {out} is a file, not a folder")
    existing = out
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise HastenError(f"{flag} {out}: {existing} is a file, so the folder cannot be created")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise HastenError(f"{flag} {out}: no permission to write in {existing}")
    return out


class OutputFolder:
    """A command's output folder; use as a context manager around the work that writes into it."""

    def __init__(self, path: str | Path, flag: str = "--out"):
        self.root = check_out(path, flag)
        self.created = not self.root.exists()
        self.streamed: list[Path] = []
        self.finals: dict[Path, Path] = {}  # final path -> its temporary path

    def __enter__(self) -> "OutputFolder":
        self.root.mkdir(parents=True, exist_ok=True)
        return self

    def stream(self, name: str) -> Path:
        """Where a file written while the run goes on (a hit's image) belongs; removed if the run fails."""
        path = self.root / name
        self.streamed.append(path)
        return path

    def final(self, name: str) -> Path:
        """A temporary path for a final file; renamed to ``name`` when the run succeeds."""
        path = self.root / name
        tmp = self.root / f".{path.stem}.partial{path.suffix}"  # the suffix kept: writers infer the format
        self.finals[path] = tmp
        return tmp

    def __truediv__(self, name: str) -> Path:
        """``out / "results.json"``: a final file (see :meth:`final`), so writers take a folder or this alike."""
        return self.final(name)

    def _previous(self) -> list[str]:
        try:
            return list(json.loads((self.root / MANIFEST).read_text()))
        except (OSError, ValueError):
            return []

    def commit(self) -> None:
        for path, tmp in self.finals.items():
            if tmp.exists():
                tmp.replace(path)
        written = {p.name for p in self.streamed} | {p.name for p, tmp in self.finals.items() if p.exists()}
        for name in self._previous():
            if name not in written and "/" not in name and name != MANIFEST:
                (self.root / name).unlink(missing_ok=True)
        (self.root / MANIFEST).write_text(json.dumps(sorted(written), indent=1) + "\n")

    def abort(self) -> None:
        for path in [*self.streamed, *self.finals.values()]:
            path.unlink(missing_ok=True)
        if self.created and self.root.is_dir() and not any(self.root.iterdir()):
            self.root.rmdir()

    def __exit__(self, kind: type | None, error: BaseException | None, trace: TracebackType | None) -> None:
        if kind is None:
            self.commit()
        else:
            self.abort()
