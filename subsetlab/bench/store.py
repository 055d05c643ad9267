"""The results store: one JSON object per line, append-only.

Each record describes one finished (or failed) run::

    {"key": "...", "suite": "...", "spec": {...}, "status": "ok" | "failed",
     "error": null | {"type", "message", "traceback", "step"},
     "result": RunResult.to_dict() | null, "env": {...}, "started": ISO time, "finished": ISO time}

Only one process (the suite's parent) writes. Each record is written with a single ``write``
of the whole line, then flushed and ``fsync``-ed, so a killed process leaves at most one partial
last line; readers skip it with a :class:`ResultsWarning`, and the next append starts on a fresh
line. A key may appear more than once (a failed run retried); the last record wins.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = ["ResultsStore", "ResultsWarning", "latest_by_key", "read_records", "sanitize"]

try:  # POSIX advisory lock so two suites appending to one file do not interleave
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None


class ResultsWarning(UserWarning):
    """A line of a results file was skipped (partial write or not a record)."""


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


def read_records(path: str | os.PathLike) -> list[dict[str, Any]]:
    """All valid records of a results file, in file order.

    A partial last line (a write interrupted by a killed process) and any line that is not a
    JSON object with ``key`` and ``status`` are skipped with a :class:`ResultsWarning`. A
    missing file reads as empty.
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
        try:
            rec = json.loads(line)
        except ValueError:
            why = "a partial last line (a write interrupted by a killed process)" if last else "not valid JSON"
            warnings.warn(f"{p}: line {i + 1} is {why}; skipped.", ResultsWarning, stacklevel=2)
            continue
        if not isinstance(rec, dict) or "key" not in rec or "status" not in rec:
            warnings.warn(f"{p}: line {i + 1} is not a run record (no key/status); skipped.", ResultsWarning, stacklevel=2)
            continue
        records.append(rec)
    return records


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
