"""Tables derived from a results file: mean ± std over seeds per dataset, model, budget, strategy.

Every number comes from the records (see :mod:`subsetlab.bench.store`); nothing is edited by
hand. Per group of runs that differ only by seed, :func:`aggregate` reports:

- ``acc``: final test accuracy, %;
- ``rel_err``: relative error against full data, ``(acc_full - acc) / acc_full`` in %, computed
  per seed against the full-data run of the same dataset, model, trainer setting (all but the
  budget fraction) and seed, then averaged;
- ``wall_s``: wall seconds of the run; ``speedup``: full-data wall / run wall, per seed
  (evaluation included);
- ``speedup_noeval``: the same without evaluation time, ``(full total - full eval) / (run
  total - run eval)`` per seed: evaluation costs the same at every budget, so it hides the
  training speed-up;
- ``select_s`` and ``select_share`` (% of wall): time in the strategy's hooks;
- ``nontrain_share``: ``(total - train) / total`` in %, time outside training steps;
- ``selections``: number of selections;
- ``extra_forward`` and ``extra_backward_hvp``: the strategy's extra forward and backward+HVP
  examples, also as multiples of the run's backprop examples (``..._x``);
- ``seeds`` (ok runs) and ``failed`` (runs whose latest record failed);
- for a strategy with time-matched Random runs (suite option ``time_matched``; records with a
  ``match`` field), per mode M (``wall`` or ``work``, the suite's ``time_match``):
  ``M_matched_acc``, the matched Random's accuracy %; ``M_matched_diff``, the strategy's
  accuracy minus its matched Random's, paired by seed (through ``match.to_key``), in points;
  ``M_matched_fraction``, the matched Random's fraction f'; ``M_matched_ratio``, its achieved
  cost / the strategy's cost; and the counts ``M_matched_seeds`` (ok matched runs) and
  ``M_matched_capped`` (matched runs whose fraction was clamped to 1: they got less than
  the strategy's cost).

Time-matched runs are not rows of their own: their numbers sit in the row of the strategy
they are matched to (in the Markdown table, the acc and Δ columns of each mode present).

The std is the sample standard deviation (ddof = 1); with a single seed it is undefined and
left out. When a key was recorded more than once (a failed run retried), its latest record
counts.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from subsetlab.bench.runs import FULL, ReportRow, RunView, Stat, _num, load_runs, run_views, write_tables  # noqa: F401 - re-exported
from subsetlab.bench.analytics_report import write_analytics

__all__ = [
    "LEGEND",
    "MATCH_MODES",
    "METRICS",
    "ReportRow",
    "RunView",
    "Stat",
    "aggregate",
    "legend",
    "load_runs",
    "md_metrics",
    "run_views",
    "to_csv",
    "to_markdown",
    "write_report",
]

#: (CSV name, Markdown column title, decimals) of every metric.
METRICS: tuple[tuple[str, str, int], ...] = (
    ("acc", "acc %", 2),
    ("rel_err", "rel. err. %", 2),
    ("wall_s", "wall s", 2),
    ("speedup", "speed-up", 2),
    ("speedup_noeval", "speed-up w/o eval", 2),
    ("select_s", "select s", 2),
    ("select_share", "select % of wall", 1),
    ("nontrain_share", "non-train % of wall", 1),
    ("selections", "selections", 1),
    ("extra_forward", "extra fwd", 0),
    ("extra_backward_hvp", "extra bwd+hvp", 0),
    ("extra_forward_x", "extra fwd (x bp)", 2),
    ("extra_backward_hvp_x", "extra bwd+hvp (x bp)", 2),
    ("train_s", "train s", 2),
    ("eval_s", "eval s", 2),
    ("wall_matched_acc", "time-matched random acc %", 2),
    ("wall_matched_diff", "Δ vs time-matched", 2),
    ("wall_matched_fraction", "time-matched f'", 3),
    ("wall_matched_ratio", "time-matched cost ratio", 2),
    ("work_matched_acc", "work-matched random acc %", 2),
    ("work_matched_diff", "Δ vs work-matched", 2),
    ("work_matched_fraction", "work-matched f'", 3),
    ("work_matched_ratio", "work-matched cost ratio", 2),
)

#: Time-match modes, in the order their columns appear.
MATCH_MODES = ("wall", "work")

#: Columns of the Markdown table (the CSV has every metric).
MD_METRICS = (
    "acc",
    "rel_err",
    "wall_s",
    "speedup",
    "speedup_noeval",
    "select_s",
    "select_share",
    "nontrain_share",
    "selections",
    "extra_forward_x",
    "extra_backward_hvp_x",
)


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _noeval(t: dict[str, float | None]) -> float | None:
    """Wall seconds without evaluation: ``total - eval`` (a missing eval counts as 0)."""
    total = t.get("total")
    return None if total is None else total - (t.get("eval") or 0.0)


def aggregate(records: Iterable[dict[str, Any]] | Sequence[RunView]) -> list[ReportRow]:
    """Aggregate records over seeds into report rows (see the module docstring).

    Args:
        records: Results records (any order; the latest record of a key counts) or
            :class:`RunView` objects from :func:`run_views`.

    Returns:
        Rows ordered by dataset, model, setting, then the full-data reference, then budget,
        then strategies in order of first appearance.
    """
    records = list(records)
    views = records if records and isinstance(records[0], RunView) else run_views(records)
    refs = {(v.panel, v.seed): v for v in views if v.is_full and v.status == "ok" and v.acc is not None}
    matched: dict[tuple[str, str], list[RunView]] = {}  # (strategy run key, mode) -> matched runs
    for v in views:
        if v.is_matched and v.status == "ok":
            matched.setdefault((str(v.match.get("to_key")), str(v.match.get("mode"))), []).append(v)
    order: dict[str, int] = {}
    groups: dict[tuple, list[RunView]] = {}
    for v in views:
        if v.is_matched:
            continue
        order.setdefault(v.label, len(order))
        groups.setdefault((v.panel, v.budget, v.label), []).append(v)
    rows = []
    for (panel, budget, label), vs in groups.items():
        ok = [v for v in vs if v.status == "ok"]
        cols: dict[str, list[float | None]] = {name: [] for name, _, _ in METRICS}
        for v in ok:
            t, w = v.timings, v.work
            total = t.get("total")
            ref = refs.get((panel, v.seed))
            cols["acc"].append(v.acc)
            cols["rel_err"].append(
                100.0 * (ref.acc - v.acc) / ref.acc if ref is not None and v.acc is not None and ref.acc else None
            )
            cols["wall_s"].append(total)
            cols["speedup"].append(_ratio(ref.timings.get("total"), total) if ref is not None else None)
            cols["speedup_noeval"].append(_ratio(_noeval(ref.timings), _noeval(t)) if ref is not None else None)
            cols["select_s"].append(t.get("select"))
            cols["select_share"].append(None if t.get("select") is None else _ratio(100.0 * t["select"], total))
            cols["nontrain_share"].append(
                None if total is None or t.get("train") is None else _ratio(100.0 * (total - t["train"]), total)
            )
            cols["selections"].append(v.selections)
            fwd = w.get("forward_examples")
            bwd = None if w.get("backward_examples") is None else w["backward_examples"] + (w.get("hvp_examples") or 0)
            cols["extra_forward"].append(fwd)
            cols["extra_backward_hvp"].append(bwd)
            cols["extra_forward_x"].append(_ratio(fwd, w.get("backprop_examples")))
            cols["extra_backward_hvp_x"].append(_ratio(bwd, w.get("backprop_examples")))
            cols["train_s"].append(t.get("train"))
            cols["eval_s"].append(t.get("eval"))
        seeds_m: dict[str, int] = {}
        capped: dict[str, int] = {}
        for mode in MATCH_MODES:
            mine = [(v, m) for v in ok for m in matched.get((v.key, mode), [])]
            if not mine:
                continue
            seeds_m[mode] = len(mine)
            capped[mode] = sum(1 for _, m in mine if m.match.get("clamped"))
            cols[f"{mode}_matched_acc"] = [m.acc for _, m in mine]
            cols[f"{mode}_matched_diff"] = [
                v.acc - m.acc if v.acc is not None and m.acc is not None else None for v, m in mine
            ]
            cols[f"{mode}_matched_fraction"] = [_num(m.match.get("fraction")) for _, m in mine]
            cols[f"{mode}_matched_ratio"] = [_num(m.match.get("achieved_ratio")) for _, m in mine]
        row = ReportRow.of_group(vs, budget, label, len(ok), {name: Stat.of(vals) for name, vals in cols.items()})
        row.matched_seeds, row.matched_capped = seeds_m, capped
        rows.append(row)
    rows.sort(key=lambda r: (r.dataset, r.model, r.setting, not r.reference, r.budget, order[r.strategy]))
    return rows


def _budget(b: float) -> str:
    return f"{b:g}"


def md_metrics(rows: Sequence[ReportRow]) -> tuple[str, ...]:
    """The Markdown table's metric columns for ``rows``: :data:`MD_METRICS`, with the
    time-matched Random's acc and Δ columns after ``rel_err`` for each mode present."""
    extra = [
        f"{mode}_matched_{m}" for mode in MATCH_MODES if any(r.matched_seeds.get(mode) for r in rows)
        for m in ("acc", "diff")
    ]
    i = MD_METRICS.index("rel_err") + 1
    return (*MD_METRICS[:i], *extra, *MD_METRICS[i:])


def _cell(r: ReportRow, metric: str, digits: int) -> str:
    text = r.stats[metric].fmt(digits)
    mode, _, rest = metric.partition("_matched_")
    if rest == "acc" and r.matched_capped.get(mode):
        text += " (capped)"
    return text


def to_markdown(rows: Sequence[ReportRow], metrics: Sequence[str] | None = None) -> str:
    """The rows as a Markdown table (mean ± std over seeds).

    Args:
        rows: Rows from :func:`aggregate`.
        metrics: Metric columns (names of :data:`METRICS`); default :func:`md_metrics`.
            A time-matched acc cell ends in ``(capped)`` when a matched run's fraction was
            clamped to 1.
    """
    metrics = md_metrics(rows) if metrics is None else metrics
    titles = {m: (title, digits) for m, title, digits in METRICS}
    show_setting = any(r.setting for r in rows)
    head = ["dataset", "model"] + (["setting"] if show_setting else []) + ["budget", "strategy"]
    head += [titles[m][0] for m in metrics] + ["seeds", "failed"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in rows:
        cells = [r.dataset, r.model] + ([r.setting] if show_setting else []) + [_budget(r.budget), r.strategy]
        cells += [_cell(r, m, titles[m][1]) for m in metrics]
        cells += [str(r.seeds), str(r.failed)]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def to_csv(rows: Sequence[ReportRow]) -> str:
    """The rows as CSV: one ``<metric>_mean`` and ``<metric>_std`` column per metric, then
    ``<mode>_matched_seeds`` and ``<mode>_matched_capped`` counts per time-match mode."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    names = [m for m, _, _ in METRICS]
    w.writerow(
        ["dataset", "model", "setting", "budget", "strategy", "seeds", "failed"]
        + [f"{m}_{s}" for m in names for s in ("mean", "std")]
        + [f"{mode}_matched_{c}" for mode in MATCH_MODES for c in ("seeds", "capped")]
    )
    for r in rows:
        vals: list[Any] = [r.dataset, r.model, r.setting, r.budget, r.strategy, r.seeds, r.failed]
        for m in names:
            st = r.stats[m]
            vals += ["" if st.mean is None else repr(st.mean), "" if st.std is None else repr(st.std)]
        for mode in MATCH_MODES:
            vals += [r.matched_seeds.get(mode, 0), r.matched_capped.get(mode, 0)]
        w.writerow(vals)
    return buf.getvalue()


LEGEND = """\
Mean ± sample std over seeds. acc: final test accuracy. rel. err.: (acc_full - acc) / acc_full per
seed against the full-data run of the same seed. speed-up: full-data wall time / run wall time,
evaluation included; speed-up w/o eval: the same with each run's evaluation time taken out
((full total - full eval) / (run total - run eval)), the training speed-up. select: time in the
strategy's hooks. non-train: time outside training steps. extra fwd, extra bwd+hvp: the
strategy's extra forward and backward/HVP examples as multiples of the run's training backprops.
failed: runs whose latest record failed.
"""

MATCH_LEGEND = """\
time-matched random acc: accuracy of a Random run (the suite's `random` baseline) whose budget f'
= f x (strategy's wall time w/o eval and set-up) / (Random's at f) gives it the strategy's wall
time without evaluation and set-up; work-matched: the same with forward+backward work (training
backprop = 1, extra forward = forward_cost, default 1/3, extra backward or HVP = 1 -
forward_cost) instead of seconds. Δ: strategy acc - matched Random acc, paired by seed, in
points (positive: the strategy wins at equal cost). (capped): for some seed f' would exceed 1,
so the matched Random ran on the full data and still cost less than the strategy.
"""


def legend(rows: Sequence[ReportRow]) -> str:
    """The legend written under the Markdown table (the time-matched part only when used)."""
    return LEGEND + (MATCH_LEGEND if any(r.matched_seeds for r in rows) else "")


def write_report(
    source: str | os.PathLike | Iterable[dict[str, Any]],
    out_dir: str | os.PathLike,
    formats: Sequence[str] = ("md", "csv"),
    title: str | None = None,
) -> dict[str, Path]:
    """Aggregate and write ``report.md`` / ``report.csv`` into ``out_dir``.

    When runs carry selection analytics, ``analytics.md`` / ``analytics.csv`` are written too
    (:func:`subsetlab.bench.analytics_report.write_analytics`; time-matched Random runs left out).

    Args:
        source: A results file path, or records.
        out_dir: Output directory (created).
        formats: Any of ``"md"``, ``"csv"``.
        title: Heading of the Markdown file (default: the results file name).

    Returns:
        Format (and ``analytics_md`` / ``analytics_csv``) to written path.
    """
    if isinstance(source, (str, os.PathLike)):
        title = title or f"Results: {Path(source).name}"
        records = load_runs(source)
    else:
        records = list(source)
    rows = aggregate(records)
    written = write_tables(
        out_dir, "report", formats,
        lambda: f"# {title or 'Results'}\n\n{to_markdown(rows)}\n{legend(rows)}", lambda: to_csv(rows),
    )
    plain = [r for r in records if not r.get("match")]  # time-matched runs are in the report table only
    written.update(write_analytics(plain, out_dir, formats, title=f"Selection analytics ({title})" if title else None))
    return written
