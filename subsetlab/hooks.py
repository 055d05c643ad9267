"""What the training loop calls out to: the strategy's hooks and the run's observers.

- :class:`StrategyHooks`: the strategy's hooks as the loop calls them. A failing hook fails
  the run with :class:`~subsetlab.errors.StrategyFailure`; a selection is validated.
- :class:`LoopObserver`: what the loop tells an observer of the run, such as the selection
  analytics (:class:`~subsetlab.analytics.AnalyticsObserver`).
"""

from __future__ import annotations

import traceback
from typing import TYPE_CHECKING, Any, Protocol

from subsetlab.errors import SelectionError, StrategyFailure, SubsetlabError
from subsetlab.protocol import Budget, DistView, Selection, SelectionStrategy, StepInfo, TrainState

if TYPE_CHECKING:
    from subsetlab.trainer import RunResult

__all__ = ["LoopObserver", "StrategyHooks"]


class LoopObserver(Protocol):
    """What the loop tells an observer of the run (e.g. the selection analytics).

    Every rank calls ``on_selection`` and ``on_step`` in the same order, so these may use
    collectives. The loop times each call as the part :attr:`name` of the run's timings and checkpoints the
    observer's state under the same key.
    """

    #: The observer's part in ``RunResult.timings`` and its key in a checkpoint.
    name: str

    def on_selection(self, step: int, selection: Selection, extended: bool) -> None:
        """A selection was made (or the current one grew, ``extended``) before step ``step``.

        ``selection`` is the whole current selection, the union of the ranks' in a
        distributed run.
        """

    def on_step(self, step: int, info: StepInfo) -> None:
        """Step ``step`` was trained on this rank's batch ``info``, after the strategy's ``on_step_end``."""

    def finish(self, result: RunResult) -> None:
        """Add the observer's figures to ``result`` once the run has ended (also when it failed; no collectives)."""

    def state_dict(self) -> Any:
        """Checkpointable state."""

    def load_state_dict(self, state: Any) -> None:
        """Restore :meth:`state_dict`."""


class StrategyHooks:
    """A strategy's hooks as the loop calls them.

    An exception from a hook (other than subsetlab's own errors and ``KeyboardInterrupt``)
    fails the run with :class:`~subsetlab.errors.StrategyFailure`, naming the strategy and the
    hook; :meth:`select` validates what the strategy returned.

    Args:
        strategy: The strategy.
        budget: The run's budget.
        n: Training set size.
        dist: The distributed view.
        normalize_weights: Rescale a selection's weights to sum to its row count.
    """

    def __init__(self, strategy: SelectionStrategy, budget: Budget, n: int, dist: DistView, normalize_weights: bool) -> None:
        self.strategy = strategy
        self.name = strategy.name
        self.budget, self.n, self.dist, self.normalize_weights = budget, n, dist, normalize_weights
        #: True when the strategy overrides ``on_after_backward`` (the loop skips the call otherwise).
        self.after_backward = type(strategy).on_after_backward is not SelectionStrategy.on_after_backward

    def call(self, hook: str, *args: Any) -> Any:
        """``strategy.<hook>(*args)``; a plugin's exception (even ``sys.exit()``) fails its run."""
        try:
            return getattr(self.strategy, hook)(*args)
        except (SubsetlabError, KeyboardInterrupt):
            raise
        except (Exception, SystemExit) as exc:  # a plugin's sys.exit() fails its run, not the suite
            tb = traceback.format_exc(limit=-3)
            raise StrategyFailure(
                f"Strategy {self.name!r} raised {type(exc).__name__} in {hook}(): {exc}\n{tb}", self.name
            ) from exc

    def select(self, state: TrainState) -> Selection:
        """The strategy's selection, validated (and its weights normalised when configured)."""
        sel = self.call("select", state)
        if not isinstance(sel, Selection):
            raise SelectionError(
                f"Strategy {self.name!r} returned {type(sel).__name__} from select(); it "
                f"must return a subsetlab.Selection."
            )
        # A selection may hold at most the whole training set per pseudo-epoch's worth of rows,
        # counting repeats (CREST's overlapping mini-batch coresets may exceed N slightly).
        # a plan's batches hold exactly the rows of one step (this rank's share when rank-local),
        # so every method back-propagates the same number of examples
        budget = self.budget
        rows = min(budget.batch_size, budget.subset_size)
        if self.dist.world_size > 1 and sel.rank_local:
            rows //= self.dist.world_size
        n = self.n
        sel = sel.validate(n, self.name, max_size=max(n, budget.total_steps * budget.batch_size), batch_size=rows)
        if self.normalize_weights:
            sel.weights = sel.weights * (len(sel) / sel.weights.sum())
        return sel
