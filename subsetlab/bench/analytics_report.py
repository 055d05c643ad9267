"""Selection analytics in the report: a table from the runs' ``analytics`` (the plots are in
:mod:`subsetlab.bench.plots`). The analytics themselves are recorded during training by
:mod:`subsetlab.analytics`.

Each run recorded with ``TrainerConfig.analytics`` other than ``"off"`` carries per-selection
rows, per-pseudo-epoch rows and a per-run summary (see :mod:`subsetlab.analytics`). From them:

- :func:`aggregate_analytics` / :func:`write_analytics`: ``analytics.md`` and ``analytics.csv``,
  one row per data set, model, setting, budget and strategy, mean ± sample std over seeds of the
  per-run summaries (see :data:`ANALYTICS_METRICS`);
- :func:`~subsetlab.bench.plots.make_analytics_plots`: ``selections_vs_epoch.png`` (cumulative number of selections
  against training progress, every seed), ``selected_difficulty.png`` (mean forgetting score
  and loss of the selected examples over training) and ``coverage_balance.png`` (share of the
  training set trained on so far, and class imbalance of the selections).

Runs recorded before analytics existed (or with ``analytics="off"``) are left out; when no run
has analytics nothing is written.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from subsetlab.bench.runs import ReportRow, RunView, Stat, load_runs, run_views, write_tables

__all__ = [
    "ANALYTICS_FILES",
    "ANALYTICS_METRICS",
    "aggregate_analytics",
    "analytics_csv",
    "analytics_markdown",
    "write_analytics",
]

#: Plot files :func:`~subsetlab.bench.plots.make_analytics_plots` may write.
ANALYTICS_FILES = ("selections_vs_epoch.png", "selected_difficulty.png", "coverage_balance.png")

#: (summary key, Markdown title, decimals, scale) of every per-run analytics figure; values are
#: multiplied by ``scale`` (coverage and learned shown in %).
ANALYTICS_METRICS: tuple[tuple[str, str, int, float], ...] = (
    ("selections", "selections", 1, 1.0),
    ("jaccard", "Jaccard", 3, 1.0),
    ("coverage", "coverage %", 1, 100.0),
    ("ess_ratio", "ESS/k", 3, 1.0),
    ("class_tv", "class TV", 3, 1.0),
    ("class_entropy", "class entropy", 3, 1.0),
    ("class_ratio", "class min/max", 3, 1.0),
    ("forget_q1", "forget Q1", 2, 1.0),
    ("forget_q4", "forget Q4", 2, 1.0),
    ("loss_q1", "loss Q1", 3, 1.0),
    ("loss_q4", "loss Q4", 3, 1.0),
    ("learned", "learned %", 1, 100.0),
    ("forgetting_events", "forgetting events", 0, 1.0),
    ("loss_full_q1", "loss (full) Q1", 3, 1.0),
    ("loss_full_q4", "loss (full) Q4", 3, 1.0),
)

#: Columns of ``analytics.md`` (the CSV has every metric).
MD_ANALYTICS = (
    "selections", "jaccard", "coverage", "ess_ratio", "class_tv",
    "forget_q1", "forget_q4", "loss_q1", "loss_q4",
)

LEGEND = """\
Mean ± sample std over seeds of per-run figures; runs without recorded analytics are left out.
selections: number of selections. Jaccard: mean Jaccard index of the distinct examples of
consecutive selections (1 = the same set again). coverage: share of the training set trained on
at least once by the end. ESS/k: effective sample size (sum w)^2 / sum w^2 of a selection's
weights over its k rows, averaged over selections (1 = equal weights). class TV: total-variation
distance between a selection's class distribution and the training set's, averaged over
selections (0 = same proportions). forget Q1 / Q4: mean forgetting score (correct-then-wrong
events so far) of the selected examples, averaged over the selections made in the first / last
quarter of the steps. loss Q1 / Q4: mean loss of the first batch trained after each of those
selections. "—": no selection in that quarter (a method that selects once).
"""


def _with_analytics(views: Iterable[RunView]) -> list[RunView]:
    return [v for v in views if v.status == "ok" and isinstance((v.analytics or {}).get("summary"), dict)]


def _views(source: str | os.PathLike | Iterable[dict[str, Any]] | Sequence[RunView]) -> list[RunView]:
    if isinstance(source, (str, os.PathLike)):
        return run_views(load_runs(source))
    items = list(source)
    return items if items and isinstance(items[0], RunView) else run_views(items)


def aggregate_analytics(
    source: str | os.PathLike | Iterable[dict[str, Any]] | Sequence[RunView],
) -> list[ReportRow]:
    """Aggregate the runs' analytics summaries over seeds.

    Args:
        source: A results file, records, or :class:`~subsetlab.bench.report.RunView` objects.

    Returns:
        One :class:`~subsetlab.bench.report.ReportRow` per group that has at least one run with
        analytics (``seeds`` counts those runs; ``failed`` the group's failed runs), with a
        :class:`~subsetlab.bench.report.Stat` per key of :data:`ANALYTICS_METRICS`, ordered
        like the main report.
    """
    views = _views(source)
    order: dict[str, int] = {}
    groups: dict[tuple, list[RunView]] = {}
    for v in views:
        order.setdefault(v.label, len(order))
        groups.setdefault((v.panel, v.budget, v.label), []).append(v)
    rows = []
    for (_, budget, label), vs in groups.items():
        have = _with_analytics(vs)
        if not have:
            continue
        stats = {}
        for key, _, _, scale in ANALYTICS_METRICS:
            vals = [v.analytics["summary"].get(key) for v in have]
            stats[key] = Stat.of(x * scale if isinstance(x, (int, float)) else None for x in vals)
        rows.append(ReportRow.of_group(vs, budget, label, len(have), stats))
    rows.sort(key=lambda r: (r.dataset, r.model, r.setting, not r.reference, r.budget, order[r.strategy]))
    return rows


def analytics_markdown(rows: Sequence[ReportRow], metrics: Sequence[str] = MD_ANALYTICS) -> str:
    """The analytics rows as a Markdown table (mean ± std over seeds)."""
    titles = {m: (t, d) for m, t, d, _ in ANALYTICS_METRICS}
    show_setting = any(r.setting for r in rows)
    head = ["dataset", "model"] + (["setting"] if show_setting else []) + ["budget", "strategy"]
    head += [titles[m][0] for m in metrics] + ["seeds"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in rows:
        cells = [r.dataset, r.model] + ([r.setting] if show_setting else []) + [f"{r.budget:g}", r.strategy]
        cells += [r.stats[m].fmt(titles[m][1]) for m in metrics] + [str(r.seeds)]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def analytics_csv(rows: Sequence[ReportRow]) -> str:
    """The analytics rows as CSV: ``<metric>_mean`` and ``<metric>_std`` per metric (unscaled
    except coverage and learned, in %)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    names = [m for m, _, _, _ in ANALYTICS_METRICS]
    w.writerow(["dataset", "model", "setting", "budget", "strategy", "seeds"] + [f"{m}_{s}" for m in names for s in ("mean", "std")])
    for r in rows:
        vals: list[Any] = [r.dataset, r.model, r.setting, r.budget, r.strategy, r.seeds]
        for m in names:
            st = r.stats[m]
            vals += ["" if st.mean is None else repr(st.mean), "" if st.std is None else repr(st.std)]
        w.writerow(vals)
    return buf.getvalue()


def write_analytics(
    source: str | os.PathLike | Iterable[dict[str, Any]] | Sequence[RunView],
    out_dir: str | os.PathLike,
    formats: Sequence[str] = ("md", "csv"),
    title: str | None = None,
) -> dict[str, Path]:
    """Write ``analytics.md`` / ``analytics.csv`` into ``out_dir`` when any run has analytics.

    Returns:
        ``"analytics_md"`` / ``"analytics_csv"`` to the written path; empty when no run has
        analytics (nothing is written then).
    """
    rows = aggregate_analytics(source)
    if not rows:
        return {}
    written = write_tables(
        out_dir, "analytics", formats,
        lambda: f"# {title or 'Selection analytics'}\n\n{analytics_markdown(rows)}\n{LEGEND}", lambda: analytics_csv(rows),
    )
    return {f"analytics_{fmt}": p for fmt, p in written.items()}
