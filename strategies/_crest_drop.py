"""CREST's "dropping learned examples": a fixed window of recent losses per example.

Losses are written into a ``[N, window]`` ring buffer (plus a ``[N]`` count of writes), all on
the training device, with no Python object per example. :func:`examples_to_drop` decides which
pool members leave for good.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["LossRecords", "drop_mask", "examples_to_drop"]


class LossRecords:
    """The last ``window`` recorded losses of every example.

    Args:
        n: Number of examples N.
        window: Slots per example.
        device: Where the buffer lives.

    Attributes:
        values: ``[N, window]`` float32 ring buffer (unwritten slots hold NaN).
        counts: ``[N]`` int64 number of losses ever recorded per example.
    """

    def __init__(self, n: int, window: int, device: torch.device | str = "cpu") -> None:
        self.window = int(window)
        self.values = torch.full((n, self.window), float("nan"), device=device)
        self.counts = torch.zeros(n, dtype=torch.long, device=device)

    def record(self, indices: torch.Tensor, losses: torch.Tensor) -> None:
        """Write one loss per example; repeated indices keep their largest loss (conservative)."""
        dev = self.values.device
        indices = indices.to(dev).long()
        losses = losses.detach().to(dev, torch.float32)
        uniq, inv = torch.unique(indices, return_inverse=True)
        worst = torch.full((uniq.shape[0],), float("-inf"), device=dev)
        worst.scatter_reduce_(0, inv, losses, reduce="amax")
        slot = self.counts[uniq] % self.window
        self.values[uniq, slot] = worst
        self.counts[uniq] += 1

    def summary(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(n_held, max_loss)`` per example: slots filled and the largest loss in them."""
        held = self.counts.clamp(max=self.window)
        mx = torch.nan_to_num(self.values, nan=float("-inf")).amax(1)
        return held, mx

    def state_dict(self) -> dict[str, Any]:
        """Tensors only."""
        return {"values": self.values, "counts": self.counts}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` on this buffer's device."""
        self.values = state["values"].to(self.values.device).clone()
        self.counts = state["counts"].to(self.counts.device).clone()


def examples_to_drop(
    records: LossRecords, pool: torch.Tensor, alpha: float, min_records: int, floor: int
) -> torch.Tensor:
    """Pool members to remove: all recorded losses below ``alpha``, never below ``floor`` left.

    An example is eligible when it is in the pool, holds at least ``min_records`` recorded
    losses and every one of them (the last ``window``) is below ``alpha``. If removing all
    eligible examples would leave fewer than ``floor`` in the pool, only the
    ``pool_size - floor`` eligible examples with the lowest maximum recorded loss go (ties to
    the lower index). An example with a recorded loss at or above ``alpha`` is never removed.

    Args:
        records: The loss records.
        pool: ``[N]`` bool active-pool mask (on the records' device).
        alpha: Loss threshold.
        min_records: Records an example needs before it can be judged.
        floor: Smallest pool size allowed.

    Returns:
        ``[N]`` bool mask of the examples to remove.
    """
    held, mx = records.summary()
    return drop_mask(held, mx, pool, alpha, min_records, floor)


def drop_mask(
    held: torch.Tensor, mx: torch.Tensor, pool: torch.Tensor, alpha: float, min_records: int, floor: int
) -> torch.Tensor:
    """:func:`examples_to_drop` from a records summary ``(held, max_loss)`` (e.g. all-reduced
    over ranks: held summed, the largest loss taken)."""
    pool = pool.to(held.device)
    eligible = pool & (held >= int(min_records)) & (mx < float(alpha))
    room = int(pool.sum()) - int(floor)
    n_elig = int(eligible.sum())
    if room <= 0 or n_elig == 0:
        return torch.zeros_like(pool)
    if n_elig <= room:
        return eligible
    idx = torch.nonzero(eligible).squeeze(1)
    order = torch.sort(mx[idx], stable=True).indices[:room]
    out = torch.zeros_like(pool)
    out[idx[order]] = True
    return out
