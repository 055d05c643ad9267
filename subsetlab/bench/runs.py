"""The results a report reads: one :class:`RunView` per run (its latest record, flattened),
display names for data sets, models and settings, and the :class:`Stat` / :class:`ReportRow`
that the report and the selection-analytics tables aggregate into.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from subsetlab.errors import ConfigError
from subsetlab.bench.store import latest_by_key, read_records

__all__ = ["FULL", "ReportRow", "RunView", "Stat", "load_runs", "run_views", "write_tables"]

FULL = "full"
#: Trainer fields that do not change what is computed (left out of the "setting").
_NOT_SETTING = ("fraction", "device", "max_seconds", "checkpoint_every", "analytics", "cpu_allocator")


@dataclass(frozen=True)
class Stat:
    """Mean and sample std (None with fewer than two values) of ``n`` values."""

    mean: float | None
    std: float | None
    n: int

    @classmethod
    def of(cls, values: Iterable[float | None]) -> Stat:
        """Statistics of the finite values among ``values``."""
        xs = [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
        if not xs:
            return cls(None, None, 0)
        return cls(statistics.fmean(xs), statistics.stdev(xs) if len(xs) > 1 else None, len(xs))

    def fmt(self, digits: int = 2, suffix: str = "") -> str:
        """``"mean ± std"`` (or ``"mean"``, or ``"—"`` when empty)."""
        if self.mean is None:
            return "—"
        s = f"{self.mean:.{digits}f}{suffix}"
        return s if self.std is None else f"{s} ± {self.std:.{digits}f}"


def _canon(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def _short(text: str, n: int = 6) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:n]


def _num(x: Any) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) else None


@dataclass
class RunView:
    """One record flattened for aggregation (internal ids are canonical JSON strings).

    Attributes:
        key: Run key.
        status: ``ok`` or ``failed``.
        label: Strategy label (display name).
        strategy: Strategy name.
        seed: Run seed.
        budget: Budget fraction (1.0 for the full-data run).
        data_id: Canonical JSON of the data config.
        model_id: Canonical JSON of the model config.
        setting_id: Canonical JSON of the trainer config without the budget and device.
        dataset: Data set display name.
        model: Model display name.
        setting: Trainer setting display name ("" when the records hold one setting).
        acc: Final test accuracy in %, or None.
        timings: Wall seconds ``total``, ``train``, ``select``, ``eval``.
        work: ``backprop_examples``, ``forward_examples``, ``backward_examples``,
            ``hvp_examples``.
        selections: Number of selections.
        history: Per-evaluation rows of the run (epoch, test_acc, wall...).
        analytics: The run's selection analytics (``RunResult.analytics``; empty for runs
            recorded without them).
        match: The record's ``match`` field for a time-matched Random run (what it is matched
            to, the mode, the target and achieved cost), else empty. Its ``budget`` is the
            matched strategy's budget f, not the run's own fraction f'.
    """

    key: str
    status: str
    label: str
    strategy: str
    seed: int
    budget: float
    data_id: str
    model_id: str
    setting_id: str
    dataset: str = ""
    model: str = ""
    setting: str = ""
    acc: float | None = None
    timings: dict[str, float | None] = field(default_factory=dict)
    work: dict[str, float | None] = field(default_factory=dict)
    selections: float | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    analytics: dict[str, Any] = field(default_factory=dict)
    match: dict[str, Any] = field(default_factory=dict)

    @property
    def is_matched(self) -> bool:
        """True for a time-matched Random run."""
        return bool(self.match)

    @property
    def is_full(self) -> bool:
        """True for the full-data reference run."""
        return self.strategy == FULL

    @property
    def panel(self) -> tuple[str, str, str]:
        """The (data, model, setting) ids a comparison is made within."""
        return (self.data_id, self.model_id, self.setting_id)


def load_runs(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The latest record of every key in a results file."""
    return list(latest_by_key(read_records(path)).values())


def _view(rec: dict[str, Any]) -> RunView:
    spec = rec.get("spec") or {}
    trainer = dict(spec.get("trainer") or {})
    strat = spec.get("strategy") or {}
    name = str(strat.get("name", "?"))
    budget = 1.0 if name == FULL else float(trainer.get("fraction", float("nan")))
    match = rec.get("match") if isinstance(rec.get("match"), dict) else {}
    if match and _num(match.get("budget")) is not None:
        budget = float(match["budget"])  # grouped with the strategy it is matched to
    setting = {k: v for k, v in trainer.items() if k not in _NOT_SETTING}
    res = rec.get("result") or {}
    t = res.get("timings") or {}
    w = res.get("work") or {}
    acc = _num((res.get("metrics") or {}).get("final_acc"))
    sel = res.get("selections") or {}
    return RunView(
        key=str(rec.get("key")),
        status=str(rec.get("status")),
        label=str(spec.get("label") or name),
        strategy=name,
        seed=int(spec.get("seed", 0)),
        budget=budget,
        data_id=_canon(spec.get("data") or {}),
        model_id=_canon(spec.get("model") or {}),
        setting_id=_canon(setting),
        acc=None if acc is None else 100.0 * acc,
        timings={k: _num(t.get(k)) for k in ("total", "train", "select", "eval")},
        work={k: _num(w.get(k)) for k in ("backprop_examples", "forward_examples", "backward_examples", "hvp_examples")},
        selections=_num(sel.get("count")),
        history=list(res.get("history") or []),
        analytics=dict(res.get("analytics") or {}),
        match=dict(match),
    )


def run_views(records: Iterable[dict[str, Any]]) -> list[RunView]:
    """Flatten records (latest per key) and give datasets, models and settings display names.

    A name shared by different configs gets a short hash suffix (``digits#1a2b3c``); the
    setting column is filled only when the records hold more than one trainer setting.
    """
    views = [_view(r) for r in latest_by_key(records).values()]
    for attr, src in (("dataset", "data_id"), ("model", "model_id")):
        names: dict[str, set[str]] = {}
        for v in views:
            names.setdefault(json.loads(getattr(v, src)).get("name", "?"), set()).add(getattr(v, src))
        for v in views:
            ident = getattr(v, src)
            name = json.loads(ident).get("name", "?")
            setattr(v, attr, name if len(names[name]) == 1 else f"{name}#{_short(ident)}")
    settings = {v.setting_id for v in views}
    if len(settings) > 1:
        for v in views:
            s = json.loads(v.setting_id)
            v.setting = f"E{s.get('epochs')} B{s.get('batch_size')} #{_short(v.setting_id, 4)}"
    return views


@dataclass
class ReportRow:
    """Aggregated metrics of one (dataset, model, setting, budget, strategy) group.

    Attributes:
        dataset: Data set display name.
        model: Model display name.
        setting: Trainer setting display name ("" with one setting).
        budget: Budget fraction (1.0 for the full-data reference).
        strategy: Strategy label.
        seeds: Number of ok runs.
        failed: Number of runs whose latest record failed.
        stats: Metric name (see :data:`METRICS`) to :class:`Stat`.
        reference: True for the full-data reference row.
        matched_seeds: Per time-match mode, the ok time-matched Random runs of this row.
        matched_capped: Per mode, how many of them had their fraction clamped to 1.
    """

    dataset: str
    model: str
    setting: str
    budget: float
    strategy: str
    seeds: int
    failed: int
    stats: dict[str, Stat]
    reference: bool = False
    matched_seeds: dict[str, int] = field(default_factory=dict)
    matched_capped: dict[str, int] = field(default_factory=dict)

    @classmethod
    def of_group(cls, vs: Sequence[RunView], budget: float, label: str, seeds: int, stats: dict[str, Stat]) -> ReportRow:
        """The row of the runs ``vs`` of one group (their first run names the data set, model
        and setting); ``failed`` counts the runs whose latest record failed."""
        first = vs[0]
        return cls(
            dataset=first.dataset,
            model=first.model,
            setting=first.setting,
            budget=budget,
            strategy=label,
            seeds=seeds,
            failed=sum(1 for v in vs if v.status != "ok"),
            stats=stats,
            reference=all(v.is_full for v in vs),
        )


def write_tables(out_dir: str | os.PathLike, stem: str, formats: Sequence[str], markdown: Callable[[], str],
                 csv_text: Callable[[], str]) -> dict[str, Path]:
    """Write ``<stem>.md`` and/or ``<stem>.csv`` into ``out_dir`` (created); return format -> path.

    Raises:
        ConfigError: a format other than ``"md"`` and ``"csv"``.
    """
    bad = [f for f in formats if f not in ("md", "csv")]
    if bad:
        raise ConfigError(f"Unknown report format {bad[0]!r}; use 'md' and/or 'csv'.")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    for fmt in formats:
        p = out / f"{stem}.{fmt}"
        p.write_text(markdown() if fmt == "md" else csv_text(), encoding="utf-8")
        written[fmt] = p
    return written
