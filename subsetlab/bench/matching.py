"""Time-matched runs: a Random run whose budget gives it another run's cost.

:func:`run_cost` measures a finished run's cost (wall seconds without evaluation and set-up, or
forward+backward work); :class:`TimeMatch` turns the records of a strategy's run and the
baseline's run at the same budget and seed into the matched run's spec.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from subsetlab.config import RunSpec

__all__ = ["FORWARD_COST", "TimeMatch", "run_cost"]

#: units (a training example = one forward + one backward pass = 1).
FORWARD_COST = 1.0 / 3.0


def run_cost(result: Mapping[str, Any] | None, mode: str, forward_cost: float = FORWARD_COST) -> float | None:
    """The cost a time-matched run is matched on, from a record's ``result``.

    Args:
        result: A run record's ``result`` (``RunResult.to_dict()``), or None.
        mode: ``"wall"``: ``timings.total - timings.eval - timings.setup``, wall seconds
            without evaluation and set-up;
            ``"work"``: ``backprop + forward_cost * forward + (1 - forward_cost) * (backward +
            hvp)`` examples of ``result.work``, in training-backprop units.
        forward_cost: Cost of an extra forward example (``"work"`` only).

    Returns:
        The cost, or None when the result lacks the numbers it needs.
    """

    def num(x: Any) -> float | None:
        ok = isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
        return float(x) if ok else None

    if not isinstance(result, Mapping):
        return None
    if mode == "wall":
        t = result.get("timings") or {}
        total = num(t.get("total"))
        return None if total is None else total - (num(t.get("eval")) or 0.0) - (num(t.get("setup")) or 0.0)
    w = result.get("work") or {}
    bp = num(w.get("backprop_examples"))
    if bp is None:
        return None
    extra_back = (num(w.get("backward_examples")) or 0.0) + (num(w.get("hvp_examples")) or 0.0)
    return bp + forward_cost * (num(w.get("forward_examples")) or 0.0) + (1.0 - forward_cost) * extra_back


_UNITS = {"wall": "seconds without evaluation and set-up", "work": "backprop-example units"}


@dataclass(frozen=True)
class TimeMatch:
    """A time-matched Random run: the baseline at the budget that gives it a strategy's cost.

    It depends on two runs of the suite: the strategy's (``strategy``) and the baseline's at
    the same budget f and seed (``baseline``). Once both have records,
    :meth:`resolve` gives the run: the baseline's spec with fraction
    ``f' = min(1, f * cost(strategy) / cost(baseline))`` (see :func:`run_cost`) and the label
    :attr:`label`.

    Attributes:
        strategy: The matched strategy's run at budget f.
        baseline: The Random baseline's run at the same budget, data, model and seed.
        mode: ``"wall"`` or ``"work"`` (see :func:`run_cost`).
        forward_cost: Cost of an extra forward example under ``"work"``.
    """

    strategy: RunSpec
    baseline: RunSpec
    mode: Literal["wall", "work"] = "wall"
    forward_cost: float = FORWARD_COST

    @property
    def key(self) -> str:
        """The run's key in the results: a hash of what it is matched to (the two runs' keys,
        the mode and, under ``"work"``, the forward cost), not of its measured fraction."""
        ident: dict[str, Any] = {
            "time_match": self.mode,
            "strategy": self.strategy.key,
            "baseline": self.baseline.key,
        }
        if self.mode == "work":
            ident["forward_cost"] = self.forward_cost
        return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]

    @property
    def label(self) -> str:
        """``baseline@strategy``, e.g. ``random@crest``."""
        return f"{self.baseline.display_name}@{self.strategy.display_name}"

    @property
    def budget(self) -> float:
        """The budget fraction f of the two runs it is matched between."""
        return self.baseline.trainer.fraction

    def placeholder(self) -> RunSpec:
        """The baseline's spec at f with this run's label (what a record shows before the
        fraction is known, e.g. when the run cannot be made)."""
        return self._spec(self.budget)

    def _spec(self, fraction: float) -> RunSpec:
        d = self.baseline.model_dump(mode="json")
        d["trainer"] = {**d["trainer"], "fraction": fraction}
        d["label"] = self.label
        return RunSpec.model_validate(d)

    def info(self) -> dict[str, Any]:
        """The ``match`` field of the run's record, before the run: what it is matched to."""
        out: dict[str, Any] = {
            "to": self.strategy.display_name,
            "to_key": self.strategy.key,
            "baseline": self.baseline.display_name,
            "baseline_key": self.baseline.key,
            "mode": self.mode,
            "unit": _UNITS[self.mode],
            "budget": self.budget,
        }
        if self.mode == "work":
            out["forward_cost"] = self.forward_cost
        return out

    def resolve(
        self, strategy_record: Mapping[str, Any] | None, baseline_record: Mapping[str, Any] | None
    ) -> tuple[RunSpec | None, dict[str, Any]]:
        """The run to make, from the latest records of the two runs it depends on.

        Returns:
            ``(spec, match)``: the baseline's spec at the matched fraction, and the record's
            ``match`` field (:meth:`info` plus ``target``, the strategy's cost;
            ``baseline_cost``; ``unclamped_fraction`` = f * target / baseline_cost;
            ``fraction``, clamped to at most 1; ``clamped``). When the run cannot be made
            (a record missing or failed, a cost missing or not positive), ``spec`` is None and
            ``match["reason"]`` says why.
        """
        info = self.info()
        parts = (("strategy", strategy_record, self.strategy), ("baseline", baseline_record, self.baseline))
        costs = {}
        for what, rec, spec in parts:
            name = f"{spec.display_name!r} (run {spec.key}, f={spec.trainer.fraction:g}, seed {spec.seed})"
            if rec is None:
                return None, {**info, "reason": f"the run of {name} has no record"}
            if rec.get("status") != "ok":
                err = rec.get("error") or {}
                first = (str(err.get("message") or "").strip().splitlines() or [""])[0][:200]
                why = f"{err.get('type', 'failed')}: {first}" if first else str(err.get("type", "failed"))
                return None, {**info, "reason": f"the run of {name} failed ({why}); no matched run is made"}
            cost = run_cost(rec.get("result"), self.mode, self.forward_cost)
            if cost is None or cost <= 0.0:
                return None, {
                    **info,
                    "reason": f"the run of {name} has no positive cost to match ({_UNITS[self.mode]}: {cost})",
                }
            costs[what] = cost
        unclamped = self.budget * costs["strategy"] / costs["baseline"]
        fraction = min(1.0, unclamped)
        info.update(
            target=costs["strategy"],
            baseline_cost=costs["baseline"],
            unclamped_fraction=unclamped,
            fraction=fraction,
            clamped=unclamped > 1.0,
        )
        return self._spec(fraction), info

    def finish(self, match: Mapping[str, Any], record: Mapping[str, Any]) -> dict[str, Any]:
        """``match`` completed with the finished run's ``cost`` and ``achieved_ratio`` (its cost
        / the target; None when the run failed)."""
        cost = run_cost(record.get("result"), self.mode, self.forward_cost) if record.get("status") == "ok" else None
        target = match.get("target")
        ratio = cost / target if cost is not None and target else None
        return {**match, "cost": cost, "achieved_ratio": ratio}
