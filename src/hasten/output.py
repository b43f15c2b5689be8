"""The ``--out`` folder of a command: checked before any work, complete or untouched after it.

* Checked first: ``--out`` must not be empty, not be a file, and be writable
  (or creatable), before any model is loaded.
* Streamed files (a hit's image, written the moment the hit lands) go straight
  into the folder. Final files (results, latents, plots) are written under a
  temporary name and renamed into place only when the run succeeds.
* A run that fails, is interrupted or receives SIGTERM removes every file it
  wrote, puts back an earlier run's files it had set aside, and removes the
  folders it created (parents included) if it left them empty: the folder
  ends up either complete or as it was.
* A successful run replaces the previous run's files: the files listed in the
  folder's manifest (``.hasten-files.json``) that this run did not write are
  removed, so a re-used ``--out`` never mixes two runs. Files hasten did not
  write are never touched.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from types import TracebackType

from hasten.errors import HastenError

MANIFEST = ".hasten-files.json"


def check_out(path: str | Path, flag: str = "--out") -> Path:
    """Refuse an ``--out`` that is empty, a file, or cannot be written; return it as a Path.

    Writability is tried, not guessed: a probe folder (or file, in an existing
    folder) is made and removed again, so /proc, /sys, a read-only mount, a
    dangling link or a name too long are refused here, before any work.
    """
    if str(path).strip() == "":
        raise HastenError(f"{flag} must name a folder, got an empty string")
    out = Path(path).expanduser()
    try:
        return _check_writable(out, flag)
    except OSError as err:  # a name too long, a loop of links, ...
        raise HastenError(f"{flag} {str(out)[:80]}: cannot write there ({err.strerror or err})") from None


def _check_writable(out: Path, flag: str) -> Path:
    if out.is_symlink() and not out.exists():
        raise HastenError(f"{flag} {out} is a symbolic link to nothing ({os.readlink(out)}); remove it or give a folder")
    if out.exists() and not out.is_dir():
        raise HastenError(f"{flag} {out} is a file, not a folder")
    existing = out
    while not existing.exists() and not existing.is_symlink():
        existing = existing.parent
    if not existing.is_dir():
        raise HastenError(f"{flag} {out}: {existing} is a file, so the folder cannot be created")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise HastenError(f"{flag} {out}: no permission to write in {existing}")
    if out.is_dir():
        fd, probe = tempfile.mkstemp(prefix=".hasten-probe-", dir=out)
        os.close(fd)
        os.unlink(probe)
    else:
        _check_names(out)
        os.rmdir(tempfile.mkdtemp(prefix=".hasten-probe-", dir=existing))
    return out


def _check_names(path: Path) -> None:
    """Refuse a path part longer than the file system takes (before anything is loaded)."""
    for part in path.parts:
        if len(os.fsencode(part)) > 255:
            raise OSError(36, f"the name {part[:20]}... is longer than 255 bytes")


class OutputFolder:
    """A command's output folder; use as a context manager around the work that writes into it."""

    def __init__(self, path: str | Path, flag: str = "--out"):
        self.root = check_out(path, flag)
        self.created: list[Path] = []  # folders this run made (deepest last), removed again if it fails
        self.streamed: list[Path] = []
        self.previous: dict[Path, Path] = {}  # a streamed path -> where the earlier run's file waits
        self.finals: dict[Path, Path] = {}  # final path -> its temporary path

    def __enter__(self) -> "OutputFolder":
        return self

    def _make(self) -> None:
        """Create the folder (and its missing parents) when the first file is about to land, not before:
        a run killed before it wrote anything leaves nothing behind."""
        if self.root.is_dir():
            return
        missing = []
        folder = self.root
        while not folder.exists():
            missing.append(folder)
            folder = folder.parent
        self.root.mkdir(parents=True, exist_ok=True)
        self.created = list(reversed(missing))

    def stream(self, name: str) -> Path:
        """Where a file written while the run goes on (a hit's image) belongs; removed if the run fails.

        An earlier run's file of that name is set aside first and put back if this run fails.
        """
        self._make()
        path = self.root / name
        if path.exists() and path not in self.previous:
            kept = self.root / f".{path.name}.previous"
            path.replace(kept)
            self.previous[path] = kept
        self.streamed.append(path)
        return path

    def final(self, name: str) -> Path:
        """A temporary path for a final file; renamed to ``name`` when the run succeeds."""
        self._make()
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
        except (OSError, ValueError, TypeError):
            return []

    def commit(self) -> None:
        self._make()
        for path, tmp in self.finals.items():
            if tmp.exists():
                tmp.replace(path)
        for kept in self.previous.values():
            kept.unlink(missing_ok=True)
        written = {p.name for p in self.streamed} | {p.name for p, tmp in self.finals.items() if p.exists()}
        for name in self._previous():
            if isinstance(name, str) and name not in written and "/" not in name and name != MANIFEST:
                (self.root / name).unlink(missing_ok=True)
        (self.root / MANIFEST).write_text(json.dumps(sorted(written), indent=1) + "\n")

    def abort(self) -> None:
        for path in [*self.streamed, *self.finals.values()]:
            path.unlink(missing_ok=True)
        for path, kept in self.previous.items():  # the earlier run's files, as they were
            if kept.exists():
                kept.replace(path)
        for folder in reversed(self.created):  # deepest first; only if this run left them empty
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()

    def __exit__(self, kind: type | None, error: BaseException | None, trace: TracebackType | None) -> None:
        if kind is None:
            self.commit()
        else:
            self.abort()
