"""Plots derived from a results file (matplotlib, Agg canvas, PNG).

:func:`make_plots` writes, into one directory:

- ``accuracy_vs_epoch.png``: test accuracy against pseudo-epoch per strategy, mean over seeds
  with the std shaded; one panel per dataset / model / budget (the full-data run in each);
- ``accuracy_vs_time.png``: the same curves against wall-clock seconds (mean over seeds), with
  each time-matched Random run (suite option ``time_matched``) dotted, in the colour of the
  strategy it is matched to;
- ``relative_error_vs_budget.png``: relative error against the budget (mean ± std), only when
  a dataset / model has more than one budget;
- ``time_breakdown.png``: stacked bars of train / select / eval / other seconds per strategy;

Time-matched Random runs appear only in ``accuracy_vs_time.png`` (the other plots show the
suite's strategies; the report table puts the matched runs beside their strategies).
- the selection-analytics plots of :mod:`subsetlab.bench.analytics_report`, when runs carry analytics.

No pyplot and no global matplotlib state: figures are drawn on their own Agg canvases.
"""

from __future__ import annotations

import math
import os
import statistics
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from subsetlab.bench.analytics_report import ANALYTICS_FILES, _views, _with_analytics
from subsetlab.bench.report import aggregate
from subsetlab.bench.runs import RunView, load_runs, run_views

__all__ = ["PLOT_FILES", "make_analytics_plots", "make_plots"]

#: File names :func:`make_plots` may write.
PLOT_FILES = ("accuracy_vs_epoch.png", "accuracy_vs_time.png", "relative_error_vs_budget.png", "time_breakdown.png")

_PARTS = (("train", "#4C72B0"), ("select", "#DD8452"), ("eval", "#55A868"), ("other", "#8C8C8C"))


def _figure(n_rows: int, n_cols: int, w: float = 5.0, h: float = 3.6) -> tuple[Any, list[list[Any]]]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w * n_cols, h * n_rows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    return fig, [list(r) for r in axes]


def _finish(ax: Any) -> None:
    """The grid and legend every panel has."""
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def _save(fig: Any, path: Path, drawn: bool) -> Path | None:
    """Write the figure to ``path`` when anything was drawn; the path, or None."""
    if not drawn:
        return None
    fig.savefig(path, dpi=110)
    return path


def _colors(labels: Sequence[str]) -> dict[str, Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    out, i = {}, 0
    for lab in labels:
        if lab == "full":
            out[lab] = "black"
        else:
            out[lab] = cmap(i % 10)
            i += 1
    return out


def _mean_std(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def _curves(views: Iterable[RunView]) -> list[tuple[int, float, float, float]]:
    """(epoch, mean wall, mean acc %, std acc %) per evaluation, over the runs' seeds."""
    by_epoch: dict[int, tuple[list[float], list[float]]] = {}
    for v in views:
        for h in v.history:
            acc, wall = h.get("test_acc"), h.get("wall")
            if not isinstance(acc, (int, float)) or not math.isfinite(acc):
                continue
            walls, accs = by_epoch.setdefault(int(h.get("epoch", 0)) + 1, ([], []))
            accs.append(100.0 * acc)
            walls.append(float(wall) if isinstance(wall, (int, float)) else float("nan"))
    out = []
    for e in sorted(by_epoch):
        walls, accs = by_epoch[e]
        m, s = _mean_std(accs)
        out.append((e, statistics.fmean(walls), m, s))
    return out


def _panels(views: list[RunView]) -> tuple[list[tuple], dict[tuple, list[float]], dict[tuple, list[RunView]]]:
    """Panels (data, model, setting), their budgets, and runs per (panel, budget) incl. full."""
    panels: list[tuple] = []
    budgets: dict[tuple, list[float]] = {}
    for v in views:
        if v.panel not in budgets:
            panels.append(v.panel)
            budgets[v.panel] = []
        if not v.is_full and v.budget not in budgets[v.panel]:
            budgets[v.panel].append(v.budget)
    for p in panels:
        budgets[p].sort()
        if not budgets[p]:
            budgets[p] = [1.0]
    cells: dict[tuple, list[RunView]] = {}
    for v in views:
        targets = budgets[v.panel] if v.is_full else [v.budget]
        for b in targets:
            cells.setdefault((v.panel, b), []).append(v)
    return panels, budgets, cells


def _title(v: RunView, budget: float | None = None) -> str:
    t = f"{v.dataset} / {v.model}"
    if v.setting:
        t += f" / {v.setting}"
    if budget is not None:
        t += f" — budget {budget:g}"
    return t


def _by_label(views: list[RunView]) -> dict[str, list[RunView]]:
    out: dict[str, list[RunView]] = {}
    for v in views:
        out.setdefault(v.label, []).append(v)
    return out


def _curve_plot(path: Path, views: list[RunView], x: str, colors: dict[str, Any]) -> Path | None:
    panels, budgets, cells = _panels(views)
    n_cols = max(len(budgets[p]) for p in panels)
    fig, axes = _figure(len(panels), n_cols)
    drawn = False
    for i, p in enumerate(panels):
        for j in range(n_cols):
            ax = axes[i][j]
            if j >= len(budgets[p]):
                ax.set_visible(False)
                continue
            b = budgets[p][j]
            runs = cells.get((p, b), [])
            for label, vs in _by_label(runs).items():
                c = _curves(vs)
                if not c:
                    continue
                xs = [r[0] if x == "epoch" else r[1] for r in c]
                m = [r[2] for r in c]
                s = [r[3] for r in c]
                style = "--" if vs[0].is_full else ":" if vs[0].is_matched else "-"
                color = colors.get(str(vs[0].match.get("to")), "grey") if vs[0].is_matched else colors[label]
                ax.plot(xs, m, style, color=color, label=f"{label} (n={len(vs)})", lw=1.6)
                ax.fill_between(xs, [a - d for a, d in zip(m, s)], [a + d for a, d in zip(m, s)],
                                color=color, alpha=0.18, lw=0)
                drawn = True
            ax.set_title(_title(runs[0], b) if runs else "", fontsize=9)
            ax.set_xlabel("pseudo-epoch" if x == "epoch" else "wall-clock seconds")
            ax.set_ylabel("test accuracy %")
            if x == "wall":
                ax.set_xscale("log")
            _finish(ax)
    return _save(fig, path, drawn)


def _rel_err_plot(path: Path, views: list[RunView], colors: dict[str, Any]) -> Path | None:
    rows = aggregate(views)
    panels, budgets, _ = _panels(views)
    multi = [p for p in panels if len(budgets[p]) > 1]
    if not multi:
        return None
    names = {}
    for v in views:
        names.setdefault(v.panel, v)
    fig, axes = _figure(len(multi), 1, w=6.0)
    drawn = False
    for i, p in enumerate(multi):
        ax = axes[i][0]
        ref = names[p]
        mine = [r for r in rows if (r.dataset, r.model, r.setting) == (ref.dataset, ref.model, ref.setting)
                and not r.reference]
        for label in dict.fromkeys(r.strategy for r in mine):
            pts = sorted((r.budget, r.stats["rel_err"]) for r in mine if r.strategy == label)
            pts = [(b, st) for b, st in pts if st.mean is not None]
            if not pts:
                continue
            ax.errorbar([b for b, _ in pts], [st.mean for _, st in pts], yerr=[st.std or 0.0 for _, st in pts],
                        marker="o", capsize=3, color=colors[label], label=label)
            drawn = True
        ax.axhline(0.0, color="black", lw=0.8, ls="--")
        ax.set_title(_title(ref), fontsize=9)
        ax.set_xlabel("budget (fraction of the data per epoch)")
        ax.set_ylabel("relative error vs full data %")
        ax.set_xticks(budgets[p])
        _finish(ax)
    return _save(fig, path, drawn)


def _time_plot(path: Path, views: list[RunView]) -> Path | None:
    panels, budgets, cells = _panels(views)
    keys = [(p, b) for p in panels for b in budgets[p]]
    if not keys:
        return None
    n_cols = min(3, len(keys))
    n_rows = math.ceil(len(keys) / n_cols)
    fig, axes = _figure(n_rows, n_cols, w=5.5, h=0.9 + 0.45 * max(len(_by_label(cells[k])) for k in keys))
    drawn = False
    for idx, (p, b) in enumerate(keys):
        ax = axes[idx // n_cols][idx % n_cols]
        groups = [(lab, [v for v in vs if v.status == "ok" and v.timings.get("total") is not None])
                  for lab, vs in _by_label(cells[(p, b)]).items()]
        groups = [(lab, vs) for lab, vs in groups if vs]
        if not groups:
            ax.set_visible(False)
            continue
        labels = [lab for lab, _ in groups]
        left = [0.0] * len(groups)
        for part, color in _PARTS:
            vals = []
            for _, vs in groups:
                xs = []
                for v in vs:
                    t = v.timings
                    if part == "other":
                        known = sum((t.get(k) or 0.0) for k in ("train", "select", "eval"))
                        xs.append(max(0.0, (t.get("total") or 0.0) - known))
                    else:
                        xs.append(t.get(part) or 0.0)
                vals.append(statistics.fmean(xs))
            ax.barh(range(len(groups)), vals, left=left, color=color, label=part)
            left = [a + v for a, v in zip(left, vals)]
        ax.set_yticks(range(len(groups)), labels, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel("wall seconds (mean over seeds)")
        ax.set_title(_title(groups[0][1][0], b), fontsize=9)
        ax.legend(fontsize=7, loc="lower right")
        ax.grid(alpha=0.3, axis="x")
        drawn = True
    for idx in range(len(keys), n_rows * n_cols):
        axes[idx // n_cols][idx % n_cols].set_visible(False)
    return _save(fig, path, drawn)


def make_plots(source: str | os.PathLike | Iterable[dict[str, Any]], out_dir: str | os.PathLike) -> list[Path]:
    """Draw the plots of a results file (or records) into ``out_dir``; return the files written.

    Plots with nothing to show (no successful run; one budget only, for the relative-error
    plot) are not written. Runs with selection analytics add the plots of
    :func:`make_analytics_plots`.
    """
    records = load_runs(source) if isinstance(source, (str, os.PathLike)) else list(source)
    views = run_views(records)
    if not views:
        return []
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with_matched = [v for v in views if v.status == "ok"]
    views = [v for v in views if not v.is_matched]
    ok = [v for v in with_matched if not v.is_matched]
    colors = _colors(list(dict.fromkeys(v.label for v in views)))  # one colour per strategy everywhere
    written = [
        _curve_plot(out / PLOT_FILES[0], ok, "epoch", colors) if ok else None,
        _curve_plot(out / PLOT_FILES[1], with_matched, "wall", colors) if with_matched else None,
        _rel_err_plot(out / PLOT_FILES[2], views, colors),
        _time_plot(out / PLOT_FILES[3], ok) if ok else None,
    ]
    return [p for p in written if p is not None] + make_analytics_plots(views, out)


# ------------------------------------------------------------------------------ selection-analytics plots


def _per_epoch(v: RunView, table: str, key: str) -> dict[int, float]:
    """Mean of ``key`` per pseudo-epoch over a run's ``selections`` or ``epochs`` rows."""
    acc: dict[int, list[float]] = {}
    for r in v.analytics.get(table) or []:
        x = r.get(key)
        if isinstance(x, (int, float)) and math.isfinite(x):
            acc.setdefault(int(r.get("epoch", 0)), []).append(float(x))
    return {e: statistics.fmean(xs) for e, xs in acc.items()}


def _seed_mean(vs: list[RunView], table: str, key: str, scale: float = 1.0) -> tuple[list[float], list[float]]:
    """(pseudo-epoch + 1 for epoch rows / pseudo-epoch for selections, mean over seeds)."""
    by: dict[int, list[float]] = {}
    for v in vs:
        for e, x in _per_epoch(v, table, key).items():
            by.setdefault(e, []).append(x * scale)
    es = sorted(by)
    shift = 1 if table == "epochs" else 0  # an epoch row is the state at the end of the epoch
    return [e + shift for e in es], [statistics.fmean(by[e]) for e in es]


def _panel_grid(views: list[RunView], n_cols: int, w: float = 5.0, h: float = 3.4):
    panels, budgets, cells = _panels(views)
    keys = [(p, b) for p in panels for b in budgets[p]]
    fig, axes = _figure(len(keys), n_cols, w=w, h=h)
    return fig, axes, keys, cells


def _selections_plot(path: Path, views: list[RunView], colors: dict[str, Any]) -> Path | None:
    fig, axes, keys, cells = _panel_grid(views, 1, w=6.0)
    drawn = False
    for i, key in enumerate(keys):
        ax = axes[i][0]
        runs = cells.get(key, [])
        for label, vs in _by_label(runs).items():
            for j, v in enumerate(vs):
                a = v.analytics
                S = max(1, int(a.get("steps_per_epoch") or 1))
                steps = [int(r["step"]) for r in a.get("selections") or []]
                if not steps:
                    continue
                total = int(a.get("total_steps") or steps[-1] + 1)
                xs = [s / S for s in steps] + [total / S]
                ys = list(range(1, len(steps) + 1)) + [len(steps)]
                ax.step(xs, ys, where="post", color=colors[label], lw=1.4, alpha=0.85,
                        ls="--" if v.is_full else "-", label=f"{label} (n={len(vs)})" if j == 0 else None)
                drawn = True
        ax.set_yscale("log")
        ax.set_title(_title(runs[0], key[1]) if runs else "", fontsize=9)
        ax.set_xlabel("pseudo-epoch")
        ax.set_ylabel("selections so far (every seed)")
        _finish(ax)
    return _save(fig, path, drawn)


def _series_plot(path: Path, views: list[RunView], colors: dict[str, Any],
                 series: Sequence[tuple[str, str, str, float]]) -> Path | None:
    """One column per (table, key, y label, scale); one row per panel; mean over seeds per epoch."""
    fig, axes, keys, cells = _panel_grid(views, len(series))
    drawn = False
    for i, key in enumerate(keys):
        runs = cells.get(key, [])
        for j, (table, field, ylabel, scale) in enumerate(series):
            ax = axes[i][j]
            for label, vs in _by_label(runs).items():
                xs, ys = _seed_mean(vs, table, field, scale)
                if not xs:
                    continue
                ax.plot(xs, ys, "--" if vs[0].is_full else "-", marker="o", ms=3, color=colors[label],
                        label=f"{label} (n={len(vs)})", lw=1.4)
                drawn = True
            ax.set_title(_title(runs[0], key[1]) if runs else "", fontsize=9)
            ax.set_xlabel("pseudo-epoch")
            ax.set_ylabel(ylabel)
            _finish(ax)
    return _save(fig, path, drawn)


def make_analytics_plots(
    source: str | os.PathLike | Iterable[dict[str, Any]] | Sequence[RunView], out_dir: str | os.PathLike
) -> list[Path]:
    """Draw the analytics plots (see the module docstring) into ``out_dir``; return the files.

    One row of panels per data set, model, setting and budget, with the full-data run in each;
    one colour per strategy (the same as in the other plots). Nothing is written when no run
    has analytics.
    """
    views = _views(source)
    have = _with_analytics(views)
    if not have:
        return []
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    colors = _colors(list(dict.fromkeys(v.label for v in views)))
    written = [
        _selections_plot(out / ANALYTICS_FILES[0], have, colors),
        _series_plot(out / ANALYTICS_FILES[1], have, colors, (
            ("selections", "forget", "forgetting score of selected (mean)", 1.0),
            ("selections", "loss", "loss of selected (first batch)", 1.0),
        )),
        _series_plot(out / ANALYTICS_FILES[2], have, colors, (
            ("epochs", "coverage", "coverage: % of training set seen", 100.0),
            ("selections", "class_tv", "class TV distance of selections", 1.0),
        )),
    ]
    return [p for p in written if p is not None]
