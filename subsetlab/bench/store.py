"""The results store: one JSON object per line, append-only.

Each record describes one finished (or failed) run::

    {"key": "...", "suite": "...", "spec": {...}, "status": "ok" | "failed",
     "error": null | {"type", "message", "traceback", "step"},
     "result": RunResult.to_dict() | null, "env": {...}, "started": ISO time, "finished": ISO time}

Only one process (the suite's parent) writes. Each record is written with a single ``write``
of the whole line, then flushed and ``fsync``-ed, so a killed process leaves at most one partial
last line; readers skip it with a :class:`ResultsWarning`, and the next append starts on a fresh
line. A key may appear more than once (a failed run retried); the last record wins.

A line that is not a record is skipped with a :class:`ResultsWarning` (the ``subsetlab``
command shows each bad line once per command) and stays in the file until :func:`repair`
(``subsetlab repair RESULTS``) rewrites the file without it, keeping a backup.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["RepairReport", "ResultsStore", "ResultsWarning", "latest_by_key", "read_records", "repair", "sanitize"]

try:  # POSIX advisory lock so two suites appending to one file do not interleave
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None


class ResultsWarning(UserWarning):
    """A line of a results file was skipped (partial write or not a record).

    Attributes:
        ident: ``(file, line number, hash of the line)``: the same bad line read again (by
            another reader in the same command, or after the partial last line it was got a
            line after it) has the same ident, so a command shows it once.
    """

    ident: tuple[str, int, str] | None = None


def sanitize(obj: Any) -> Any:
    """``obj`` as strict JSON data: non-finite floats become None, tuples become lists."""
    if isinstance(obj, dict):
        return {str(k): sanitize(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [sanitize(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    if hasattr(obj, "tolist"):  # tensors, NumPy values
        return sanitize(obj.tolist())
    return str(obj)


def _bad_line(line: bytes, last: bool) -> str | None:
    """Why ``line`` is not a run record (None when it is one)."""
    try:
        rec = json.loads(line)
    except ValueError:
        return "a partial last line (a write interrupted by a killed process)" if last else "not valid JSON"
    if not isinstance(rec, dict) or "key" not in rec or "status" not in rec:
        return "not a run record (no key/status)"
    return None


def read_records(path: str | os.PathLike) -> list[dict[str, Any]]:
    """All valid records of a results file, in file order.

    A partial last line (a write interrupted by a killed process) and any line that is not a
    JSON object with ``key`` and ``status`` are skipped with a :class:`ResultsWarning`;
    :func:`repair` removes them from the file. A missing file reads as empty.
    """
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        return []
    records = []
    lines = raw.split(b"\n")
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        last = i == len(lines) - 1  # no newline after it
        why = _bad_line(line, last)
        if why is not None:
            _warn(p, i + 1, line, why)
            continue
        records.append(json.loads(line))
    return records


def _warn(path: Path, lineno: int, line: bytes, why: str) -> None:
    warning = ResultsWarning(
        f"{path}: line {lineno} is {why}; skipped. `subsetlab repair {path}` rewrites the file "
        f"without it (keeping a backup)."
    )
    warning.ident = (str(path.resolve()), lineno, hashlib.sha256(line).hexdigest())
    warnings.warn(warning, stacklevel=3)


@dataclass
class RepairReport:
    """What :func:`repair` did.

    Attributes:
        path: The results file.
        removed: ``(line number, why)`` of every line removed (numbers as in the old file).
        kept: Records kept.
        backup: The copy of the file as it was, or None when nothing needed removing.
    """

    path: Path
    removed: list[tuple[int, str]] = field(default_factory=list)
    kept: int = 0
    backup: Path | None = None


def repair(path: str | os.PathLike) -> RepairReport:
    """Rewrite a results file without the lines that are not run records, keeping a backup.

    The file is first copied to ``<name>.bak`` (``<name>.bak1``, ``.bak2``... when taken), then
    rewritten in place under the same lock appends take, keeping every valid line byte for
    byte and in order. A file with nothing to remove is left untouched (no backup).

    Raises:
        FileNotFoundError: the file does not exist.
    """
    p = Path(path)
    report = RepairReport(p)
    fd = os.open(p, os.O_RDWR)  # FileNotFoundError for a missing file
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        raw = p.read_bytes()
        lines = raw.split(b"\n")
        good: list[bytes] = []
        for i, line in enumerate(lines):
            if not line.strip():
                continue
            why = _bad_line(line, i == len(lines) - 1)
            if why is None:
                good.append(line)
            else:
                report.removed.append((i + 1, why))
        report.kept = len(good)
        if not report.removed:
            return report
        backup = p.with_name(p.name + ".bak")
        n = 0
        while backup.exists():
            n += 1
            backup = p.with_name(f"{p.name}.bak{n}")
        shutil.copy2(p, backup)
        report.backup = backup
        data = b"".join(line + b"\n" for line in good)
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    return report


def latest_by_key(records: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The last record of every key (a retried run's newest outcome)."""
    out: dict[str, dict[str, Any]] = {}
    for r in records:
        out.pop(r["key"], None)  # keep file order of the latest records
        out[r["key"]] = r
    return out


class ResultsStore:
    """Append-only JSON Lines file of run records.

    Args:
        path: The results file; its directory is created on the first append.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"ResultsStore({str(self.path)!r})"

    def records(self) -> list[dict[str, Any]]:
        """Every valid record in file order (see :func:`read_records`)."""
        return read_records(self.path)

    def latest(self) -> dict[str, dict[str, Any]]:
        """The last record of every key."""
        return latest_by_key(self.records())

    def append(self, record: dict[str, Any]) -> None:
        """Append one record as one line: a single write, then flush and fsync.

        If the file does not end with a newline (an earlier write was cut short), the record
        starts on a fresh line so the partial line stays isolated.
        """
        data = json.dumps(sanitize(record), separators=(",", ":"), allow_nan=False).encode() + b"\n"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX)
            size = os.fstat(fd).st_size
            if size > 0:
                os.lseek(fd, size - 1, os.SEEK_SET)
                if os.read(fd, 1) != b"\n":
                    data = b"\n" + data
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            os.fsync(fd)
        finally:
            os.close(fd)  # closing releases the lock
