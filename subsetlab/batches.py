"""From a selection to mini-batches: the order in which a run trains on its current selection."""

from __future__ import annotations

from typing import Any

import torch

from subsetlab.protocol import Selection

__all__ = ["BatchStream"]


class BatchStream:
    """Turns a :class:`Selection` into an endless sequence of mini-batches (positions).

    With a batch plan, the plan's batches are served in a fresh random order on every pass;
    batches added by :meth:`extend` are served first, in the order they were added.
    Without one, rows are served from back-to-back random permutations, ``min(B, k)`` at a time,
    so every step trains on exactly the same number of examples.
    """

    def __init__(self, selection: Selection, batch_size: int, generator: torch.Generator) -> None:
        self.selection = selection
        self.batch_size = min(batch_size, len(selection))
        self.generator = generator
        self.order: torch.Tensor | None = None
        self.cursor = 0
        self.queue: list[int] = []  # plan batches to serve next (added by extend), in order

    def extend(self, selection: Selection, added: int) -> None:
        """Serve ``selection`` (the current one grown by ``added`` plan batches at its end).

        The added batches come next, in order; the random passes over the whole plan start
        afresh after them.
        """
        n = len(selection.batches)
        self.selection = selection
        self.queue.extend(range(n - added, n))
        self.order, self.cursor = None, 0

    def _refill(self) -> None:
        n = len(self.selection.batches) if self.selection.batches is not None else len(self.selection)
        self.order = torch.randperm(n, generator=self.generator)
        self.cursor = 0

    def next(self) -> torch.Tensor:
        """Positions (into the selection) of the next mini-batch."""
        plan = self.selection.batches
        if plan is not None:
            if self.queue:
                return plan[self.queue.pop(0)]
            if self.order is None or self.cursor >= len(plan):
                self._refill()
            b = plan[int(self.order[self.cursor])]
            self.cursor += 1
            return b
        parts, need = [], self.batch_size
        while need:
            if self.order is None or self.cursor >= len(self.order):
                self._refill()
            take = self.order[self.cursor : self.cursor + need]
            self.cursor += int(take.shape[0])
            need -= int(take.shape[0])
            parts.append(take)
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def state_dict(self) -> dict[str, Any]:
        """Checkpointable state."""
        return {"order": self.order, "cursor": self.cursor, "queue": list(self.queue)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.order, self.cursor = state["order"], int(state["cursor"])
        self.queue = [int(q) for q in state.get("queue", [])]
