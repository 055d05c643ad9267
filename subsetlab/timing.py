"""Device-synchronised wall-clock timing: one primitive for every timed part of a run.

On CUDA, kernels run asynchronously, so a wall-clock reading taken while the device is busy
charges the pending work to whatever is timed next. :class:`Lap` synchronises the device
before it starts and when it stops; :meth:`subsetlab.protocol.WorkMeters.timer` (a
strategy's components) and :class:`Stopwatch` (the trainer's parts of a run) both time with it.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Iterator
from typing import Any

import torch

__all__ = ["Lap", "Stopwatch", "sync"]


def sync(device: torch.device | None) -> None:
    """Wait for the work queued on ``device`` (CUDA only; a no-op elsewhere)."""
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


class Lap:
    """Wall seconds of one block, device-synchronised: ``with Lap(device) as lap: ...``.

    Attributes:
        seconds: The block's seconds, set when it ends (0.0 until then).
    """

    def __init__(self, device: torch.device | None = None) -> None:
        self.device = device
        self.seconds = 0.0
        self._start = time.perf_counter()

    def __enter__(self) -> Lap:
        sync(self.device)
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = self.elapsed()

    def elapsed(self) -> float:
        """Seconds since the block began (synchronises the device first)."""
        sync(self.device)
        return time.perf_counter() - self._start


class Stopwatch:
    """The wall seconds of a run, by part (``setup``, ``train``, ``select``, ...).

    A part timed inside another is not counted in the outer one: the strategy's
    ``on_after_backward``, timed as ``select`` inside the training step, is not ``train``.

    Args:
        device: The training device (synchronised at every part's start and end).
        parts: The parts reported even when never timed (0.0), in this order.
    """

    def __init__(self, device: torch.device | None, parts: Iterable[str]) -> None:
        self.device = device
        #: Seconds per part.
        self.times: dict[str, float] = dict.fromkeys(parts, 0.0)
        self._start = time.perf_counter()
        self._before = 0.0  # seconds of the sessions before this one (a resumed run)
        self._inner: list[float] = []  # per open part: seconds of the parts timed inside it

    @contextlib.contextmanager
    def part(self, name: str) -> Iterator[Lap]:
        """Add the seconds of the block to part ``name``; the :class:`Lap` can be read inside."""
        lap = Lap(self.device)
        self._inner.append(0.0)
        try:
            with lap:
                yield lap
        finally:
            inner = self._inner.pop()
            self.times[name] = self.times.get(name, 0.0) + lap.seconds - inner
            if self._inner:
                self._inner[-1] += lap.seconds

    def total(self) -> float:
        """Seconds since the run began, earlier sessions of a resumed run included."""
        return self._before + time.perf_counter() - self._start

    def report(self) -> dict[str, float]:
        """``total``, every part, and ``other`` (the seconds no part accounts for)."""
        total = self.total()
        return {"total": total, **self.times, "other": max(0.0, total - sum(self.times.values()))}

    def state_dict(self) -> dict[str, Any]:
        """The parts' seconds (``times``) and the run's seconds so far (``elapsed``)."""
        return {"times": dict(self.times), "elapsed": self.total()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue a saved run: its seconds are added to this session's."""
        for name, seconds in state["times"].items():
            self.times[name] = self.times.get(name, 0.0) + seconds
        self._before = float(state["elapsed"])
