"""Checkpoint files: write a run's state, and read it back only when it is safe and matches.

A checkpoint is one ``torch.save`` file holding ``format`` (:data:`CHECKPOINT_FORMAT`),
``run_key`` and the body of :meth:`subsetlab.loop.LoopState.state_dict`. It is written
atomically (a temporary file, then a rename) and read with ``torch.load(weights_only=True)``,
so a crafted file cannot run code. In a distributed run every rank writes a file of its own
(the ranks' selections, streams and strategies differ) and a run resumes only when every
rank holds a checkpoint of the same step.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from subsetlab.errors import CheckpointError
from subsetlab.protocol import DistView

if TYPE_CHECKING:
    from subsetlab.loop import LoopState

__all__ = ["CHECKPOINT_FORMAT", "load_checkpoint", "rank_path", "save_checkpoint"]

#: Version of the checkpoint layout; a file of another version is ignored.
CHECKPOINT_FORMAT = 1


def rank_path(path: Path, dist: DistView) -> Path:
    """``path``, or this rank's file next to it in a distributed run (``run.pt.rank0-of-2``)."""
    if dist.world_size > 1:
        path = path.with_name(f"{path.name}.rank{dist.rank}-of-{dist.world_size}")
    return path


def save_checkpoint(path: Path, run_key: str, state: LoopState, dist: DistView) -> None:
    """Write ``state`` as the checkpoint of run ``run_key`` (this rank's file), atomically."""
    path = rank_path(path, dist)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": CHECKPOINT_FORMAT, "run_key": run_key, **state.state_dict()}
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path | None, run_key: str, device: torch.device, dist: DistView) -> dict[str, Any] | None:
    """The checkpoint of run ``run_key`` to resume from, or None to start afresh.

    None when there is no file, or it is of another format or run. A file that cannot be
    loaded with ``weights_only=True`` raises :class:`~subsetlab.errors.CheckpointError`. In a
    distributed run (every rank calls this) the run resumes only when every rank holds a
    checkpoint of the same step, and a file refused on any rank fails every rank.
    """
    if dist.world_size == 1:
        return _read(path, run_key, device, dist)
    error: CheckpointError | None = None
    try:
        ckpt = _read(path, run_key, device, dist)
    except CheckpointError as exc:
        ckpt, error = None, exc
    step = -2.0 if error is not None else (float(ckpt["step"]) if ckpt is not None else -1.0)
    lo = float(dist.all_reduce(torch.tensor([step]), "min"))
    hi = float(dist.all_reduce(torch.tensor([step]), "max"))
    if lo == -2.0:
        raise error or CheckpointError(f"Another rank refused its checkpoint next to {str(path)!r}; see its error.")
    return ckpt if (lo == hi and lo >= 0) else None


def _read(path: Path | None, run_key: str, device: torch.device, dist: DistView) -> dict[str, Any] | None:
    path = rank_path(path, dist) if path is not None else None
    if path is None or not path.exists():
        return None
    try:
        # weights_only: tensors and primitive containers only; a global named in the file
        # (a crafted __reduce__) is refused before it is called
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable checkpoint is refused the same way
        first = str(exc).strip().splitlines()
        raise CheckpointError(
            f"Refused to resume from checkpoint {str(path)!r}: it cannot be loaded safely "
            f"with weights_only=True ({type(exc).__name__}: {first[0] if first else ''}). It "
            f"was not written by subsetlab, is corrupt, or was tampered with; nothing from it "
            f"was run or used. Delete it to start the run afresh, or pass resume=False."
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT or ckpt.get("run_key") != run_key:
        return None
    return ckpt
