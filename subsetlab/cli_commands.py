"""The ``subsetlab`` commands that read rather than run: ``list``, ``schema``, ``report`` and
``repair`` (see :mod:`subsetlab.cli` for the parser and ``run``)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["EXIT_FAILED", "EXIT_FAILED_RUNS", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_USAGE"]

EXIT_OK, EXIT_FAILED_RUNS, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
EXIT_FAILED = 1  # the command could not do its job (a missing extra, an unreachable cluster)


def _cmd_list(args: argparse.Namespace) -> int:
    from subsetlab import registry

    strategies = [
        {"name": i.name, "distribution": i.distribution, "version": i.version, "summary": i.summary}
        for i in registry.info()
    ]
    datasets: list[dict[str, str]] = []
    models: list[dict[str, str]] = []
    try:
        from subsetlab import data as _data

        for n in _data.list_datasets():
            doc = (_data.get_loader(n).__doc__ or "").strip()
            datasets.append({"name": n, "summary": doc.splitlines()[0] if doc else ""})
    except ImportError as exc:  # pragma: no cover - partial installs
        print(f"warning: cannot list datasets: {exc}", file=sys.stderr)
    try:
        from subsetlab import models as _models

        for n in _models.list_models():
            models.append({"name": n, "summary": _models.model_info(n).summary})
    except ImportError as exc:  # pragma: no cover
        print(f"warning: cannot list models: {exc}", file=sys.stderr)
    if args.json:
        print(json.dumps({"strategies": strategies, "datasets": datasets, "models": models}, indent=2))
        return EXIT_OK
    width = max([len(x["name"]) for x in strategies + datasets + models] + [4])
    sources = [f"[{s['distribution']} {s['version']}]".replace(" ]", "]") for s in strategies]
    src_width = max([len(x) for x in sources] + [0])
    print("Strategies:")
    for s, src in zip(strategies, sources):
        print(f"  {s['name']:<{width}}  {src:<{src_width}}  {s['summary']}")
    for title, items in (("Datasets", datasets), ("Models", models)):
        print(f"{title}:")
        for x in items:
            print(f"  {x['name']:<{width}}  {x['summary']}")
    return EXIT_OK


def _cmd_schema(args: argparse.Namespace) -> int:
    from subsetlab import registry

    cls = registry.get(args.name)
    print(json.dumps(cls.Config.model_json_schema(), indent=2))
    return EXIT_OK


def _check_formats(formats: Sequence[str]) -> None:
    bad = [f for f in formats if f not in ("md", "csv")]
    if bad:
        from subsetlab.errors import ConfigError

        raise ConfigError(f"--format: unknown report format(s) {bad}; use md and/or csv, e.g. --format md,csv.")


def _report(records: list[dict[str, Any]], out: Path, formats: Sequence[str], plots: bool, title: str) -> None:
    from subsetlab.bench.report import aggregate, to_markdown, write_report

    rows = aggregate(records)
    if not rows:
        print("(no results to report)")
        return
    print()
    print(to_markdown(rows), end="")
    written = list(write_report(records, out, formats, title=title).values())
    if plots:
        from subsetlab.bench.plots import make_plots

        written += make_plots(records, out)
    if written:
        print(f"\nwrote {', '.join(str(p) for p in written)}")


def _cmd_report(args: argparse.Namespace) -> int:
    from subsetlab.bench.report import load_runs
    from subsetlab.errors import ConfigError

    _check_formats(args.format)
    path = Path(args.results)
    if not path.is_file():
        raise ConfigError(f"Results file {str(path)!r} does not exist. Give the file written by 'subsetlab run'.")
    records = load_runs(path)
    out = Path(args.out) if args.out else path.parent
    _report(records, out, args.format, not args.no_plots, title=f"Results: {path.name}")
    return EXIT_OK


def _cmd_repair(args: argparse.Namespace) -> int:
    from subsetlab.bench.store import repair
    from subsetlab.errors import ConfigError

    path = Path(args.results)
    if not path.is_file():
        raise ConfigError(f"Results file {str(path)!r} does not exist. Give the file written by 'subsetlab run'.")
    report = repair(path)
    if report.backup is None:
        print(f"nothing to repair in {path}: all {report.kept} lines are run records.")
        return EXIT_OK
    what = "; ".join(f"line {n}: {why}" for n, why in report.removed)
    n = len(report.removed)
    print(f"repaired {path}: removed {n} line{'s' if n != 1 else ''} ({what}), kept {report.kept} records; "
          f"the file as it was is the backup at {report.backup}")
    return EXIT_OK
