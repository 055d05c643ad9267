"""The ``subsetlab`` command: list what is registered, run benchmark suites, report results.

Subcommands::

    subsetlab list [--json]                 strategies (with their distribution), datasets, models
    subsetlab schema NAME                   JSON schema of a strategy's config
    subsetlab run [SUITE] [options]         run a suite (default: the packaged quick suite)
    subsetlab report RESULTS [options]      tables (Markdown, CSV) and plots from a results file
    subsetlab repair RESULTS                remove lines that are not run records (keeps a backup)

Exit codes: 0 success, 1 some run of the suite failed, 2 usage or configuration error or
missing data (nothing was run), 130 interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from subsetlab.cli_commands import (
    EXIT_FAILED,
    EXIT_FAILED_RUNS,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    _check_formats,
    _cmd_list,
    _cmd_repair,
    _cmd_report,
    _cmd_schema,
    _report,
)

__all__ = ["build_parser", "describe_suite", "main"]


_RUN_EPILOG = """\
Strategies: --strategy replaces the suite's strategy list (repeat it for several; '*' means
every registered strategy); the full-data reference run is still added unless --no-full.
Without a suite file and without --strategy, the quick suite runs the built-in strategies
only, so installing a plugin does not change what a plain `subsetlab run` runs; add
--all-strategies (or --strategy '*') to run the installed plugins' strategies too.
Parameters go in brackets: --strategy "crest[tau=0.05,b=3]". Any other setting can be changed
with --set SECTION.KEY=VALUE, SECTION one of trainer, data (every dataset), model (every model),
e.g. --set trainer.lr=0.05 --set data.n_train=500 --set 'model.options={"hidden":[64]}'.

Time-matched Random: --time-matched LABEL (repeatable, '*' for every strategy but Random and
full data) adds, per budget and seed, a Random run whose fraction gives it that strategy's wall
time without evaluation (--time-match wall, the default) or its forward+backward work
(--time-match work); it runs once both runs it depends on are recorded, and the report shows it
beside the strategy.

Runs already recorded in the results file (same key: a hash of the run's spec, not of the
device) are skipped, so rerunning an interrupted command resumes it. Failed runs are skipped
too unless --retry-failed. Before any run starts, the data of every run is checked: missing
data files stop the command (exit 2) with the paths looked at and how to get them. At the end the report table is printed and report.md, report.csv
and PNG plots are written to --out (default: next to the results file).

examples:
  subsetlab run                                         # the quick default suite
  subsetlab run benchmarks/suites/fashion_mnist.toml --workers 2
  subsetlab run suite.toml --strategy random --strategy "crest[tau=0.05]" --seeds 0,1
  subsetlab run suite.toml --nproc 2 --strategy crest      # each run on 2 DDP processes
  subsetlab run suite.toml --cluster tcp://host:8786       # runs spread over a Dask cluster

--nproc N starts the same command on N local ranks with torchrun (equivalently:
torchrun --standalone --nproc-per-node N -m subsetlab run ...); runs of strategies that do
not support distributed training are recorded as failed with the reason.
"""


def _csv_list(kind: type, what: str) -> Any:
    def parse(text: str) -> list:
        from subsetlab.bench.suite import parse_list
        from subsetlab.errors import ConfigError

        try:
            return parse_list(text, kind, what)
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = what
    return parse


def _setting(text: str) -> tuple[str, str, Any]:
    if "=" not in text or "." not in text.split("=", 1)[0]:
        raise argparse.ArgumentTypeError(
            f"expected SECTION.KEY=VALUE with SECTION one of trainer, data, model (e.g. "
            f"trainer.lr=0.05). Got {text!r}."
        )
    path, value = text.split("=", 1)
    section, key = path.strip().split(".", 1)
    if section not in ("trainer", "data", "model"):
        raise argparse.ArgumentTypeError(f"unknown section {section!r} in {text!r}; use trainer, data or model.")
    return section, key.strip(), _value(value)


def _value(text: str) -> Any:
    t = text.strip()
    if t.lower() in ("true", "false"):
        return t.lower() == "true"
    if t.lower() in ("none", "null"):
        return None
    try:
        return json.loads(t)
    except ValueError:
        return t


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer. Got {text!r}.") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer. Got {v}.")
    return v


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``subsetlab`` command."""
    from subsetlab import __version__

    p = argparse.ArgumentParser(
        prog="subsetlab",
        description="Train on adaptively selected, weighted data subsets and compare the selection "
        "methods side by side.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run 'subsetlab COMMAND --help' for the options of a command.",
    )
    p.add_argument("--version", action="version", version=f"subsetlab {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    lp = sub.add_parser("list", help="list registered strategies, datasets and models",
                        description="List the registered strategies (with the distribution and version "
                        "that provides each), datasets and models.")
    lp.add_argument("--json", action="store_true", help="print JSON instead of text")
    lp.set_defaults(func=_cmd_list)

    sp = sub.add_parser("schema", help="print the JSON schema of a strategy's config",
                        description="Print the JSON schema of a strategy's config: every parameter, its "
                        "type, default, range and description.")
    sp.add_argument("name", help="registered strategy name (see 'subsetlab list')")
    sp.set_defaults(func=_cmd_schema)

    rp = sub.add_parser("run", help="run a benchmark suite (default: the quick suite)",
                        description="Run every run of a benchmark suite that is not yet recorded, "
                        "append the results, then print and write the report.",
                        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=_RUN_EPILOG)
    rp.add_argument("suite", nargs="?", help="suite TOML file (default: the packaged quick suite)")
    rp.add_argument("--results", metavar="PATH", help="results file (default: runs/<suite name>/results.jsonl)")
    rp.add_argument("--out", metavar="DIR", help="directory of the report and plots (default: next to the results)")
    rp.add_argument("--workers", type=_positive_int, default=1, metavar="N",
                    help="worker processes (default 1: run in this process)")
    rp.add_argument("--cluster", metavar="ADDRESS",
                    help="run the suite's runs on Dask (pip install \"subsetlab[cluster]\"): 'local' starts a local "
                    "cluster of --workers processes, else the address of a running scheduler (tcp://host:8786)")
    rp.add_argument("--nproc", type=_positive_int, default=1, metavar="N",
                    help="train every run on N processes (DDP under torchrun; gloo on CPU, NCCL on CUDA); "
                    "the batch size is the global batch, split over the N ranks")
    rp.add_argument("--threads", type=_positive_int, metavar="N",
                    help="torch threads per process (default: the suite's `threads`, else torch's own for "
                    "1 worker and cores // workers for several)")
    rp.add_argument("--strategy", action="append", metavar="SPEC", dest="strategies",
                    help="strategy to run, e.g. random or \"crest[tau=0.05,b=3]\"; repeatable; replaces "
                    "the suite's list ('*' = all registered)")
    rp.add_argument("--all-strategies", action="store_true", dest="all_strategies",
                    help="also run every registered strategy, installed plugins' included (the quick suite "
                    "otherwise runs the built-ins only)")
    rp.add_argument("--seeds", type=_csv_list(int, "seed"), metavar="LIST", help="seeds, e.g. 0,1,2")
    rp.add_argument("--budgets", type=_csv_list(float, "budget"), metavar="LIST", help="budget fractions, e.g. 0.1,0.3")
    rp.add_argument("--epochs", type=_positive_int, metavar="N", help="pseudo-epochs (trainer.epochs)")
    rp.add_argument("--batch-size", type=_positive_int, metavar="N", help="training batch size (trainer.batch_size)")
    rp.add_argument("--lr", type=float, metavar="X", help="peak learning rate (trainer.lr)")
    rp.add_argument("--device", metavar="DEV", help="auto, cpu, cuda, cuda:N or mps (not part of run keys)")
    rp.add_argument("--set", action="append", type=_setting, default=[], metavar="SECTION.KEY=VALUE",
                    dest="settings", help="change any trainer/data/model setting; repeatable")
    rp.add_argument("--time-matched", action="append", metavar="LABEL", dest="time_matched",
                    help="add a time-matched Random run per budget and seed for the strategy with this label; "
                    "repeatable; '*' = every strategy but Random and full data; replaces the suite's "
                    "time_matched ('none' turns it off)")
    rp.add_argument("--time-match", choices=("wall", "work"), default=None, dest="time_match",
                    help="what a time-matched Random run gets as much of as its strategy: wall seconds without "
                    "evaluation (the suite default) or forward+backward work")
    rp.add_argument("--forward-cost", type=float, metavar="X", dest="forward_cost",
                    help="cost of an extra forward example relative to a training backprop in --time-match work "
                    "(default 1/3; an extra backward or HVP example costs 1 - X)")
    rp.add_argument("--no-full", action="store_true", help="do not add the full-data reference runs")
    rp.add_argument("--retry-failed", action="store_true", help="rerun runs whose latest record failed")
    rp.add_argument("--quiet", "-q", action="store_true",
                    help="no progress bars: one line per finished run (the default when stderr is not a terminal)")
    rp.add_argument("--progress", choices=("auto", "bar", "lines", "none"), default=None,
                    help="progress display (default auto: bars on a terminal, else lines)")
    rp.add_argument("--dry-run", action="store_true", help="list the runs and whether each is recorded; run nothing")
    rp.add_argument("--no-plots", action="store_true", help="do not draw plots at the end")
    rp.add_argument("--format", type=_csv_list(str, "format"), default=["md", "csv"], metavar="LIST",
                    help="report files to write: md, csv (default md,csv)")
    rp.set_defaults(func=_cmd_run)

    ep = sub.add_parser("report", help="aggregate a results file into tables and plots",
                        description="Aggregate a results file over seeds (mean ± std per dataset, model, "
                        "budget and strategy), print the Markdown table and write report files and plots.")
    ep.add_argument("results", help="results file (JSON Lines) written by 'subsetlab run'")
    ep.add_argument("--out", metavar="DIR", help="output directory (default: next to the results file)")
    ep.add_argument("--format", type=_csv_list(str, "format"), default=["md", "csv"], metavar="LIST",
                    help="report files to write: md, csv (default md,csv)")
    ep.add_argument("--no-plots", action="store_true", help="do not draw plots")
    ep.set_defaults(func=_cmd_report)

    xp = sub.add_parser("repair", help="remove lines that are not run records from a results file",
                        description="Rewrite a results file without its lines that are not run records "
                        "(a line cut short by a killed process, text that is not JSON), keeping every "
                        "record as it is. The file as it was is kept as RESULTS.bak (.bak1, .bak2... if "
                        "taken). Do not run it while a suite is writing to the file.")
    xp.add_argument("results", help="results file (JSON Lines) written by 'subsetlab run'")
    xp.set_defaults(func=_cmd_repair)
    return p


# ---------------------------------------------------------------------- commands
@dataclass
class _Loaded:
    """The suite to run, whether the command line changed it, and the registered strategies
    the default suite leaves out (not built-in)."""

    suite: Any
    overridden: bool = False
    left_out: list[Any] = field(default_factory=list)


def _load(args: argparse.Namespace) -> _Loaded:
    from subsetlab import registry
    from subsetlab.bench.suite import ALL_STRATEGIES, load_default_suite, load_suite

    suite = load_suite(args.suite) if args.suite else load_default_suite()
    strategies = args.strategies
    left_out: list[Any] = []
    if args.all_strategies:
        strategies = [ALL_STRATEGIES, *(strategies or suite.strategies)]
    elif not args.suite and not strategies and suite.all:
        # the default suite's '*' means the built-ins: installing a plugin does not change it
        infos = registry.info()
        left_out = [i for i in infos if i.distribution != "subsetlab"]
        if left_out:
            strategies = [*(i.name for i in infos if i.distribution == "subsetlab"), *suite.strategies]
    trainer: dict[str, Any] = {}
    data: dict[str, Any] = {}
    model: dict[str, Any] = {}
    for section, key, value in args.settings:
        {"trainer": trainer, "data": data, "model": model}[section][key] = value
    for flag, key in (("epochs", "epochs"), ("batch_size", "batch_size"), ("lr", "lr"), ("device", "device")):
        if getattr(args, flag) is not None:
            trainer[key] = getattr(args, flag)
    if "fraction" in trainer:
        from subsetlab.errors import ConfigError

        raise ConfigError("--set trainer.fraction: set the budget fractions with --budgets instead.")
    matched: bool | list[str] | None = None
    if args.time_matched:
        labels = [t.strip() for t in args.time_matched]
        matched = True if "*" in labels else False if labels == ["none"] else labels
    time_options = [matched is not None, args.time_match is not None, args.forward_cost is not None]
    overridden = any([strategies, args.seeds, args.budgets, trainer, data, model, args.no_full, *time_options])
    if overridden:
        suite = suite.with_overrides(
            strategies=strategies,
            seeds=args.seeds,
            budgets=args.budgets,
            trainer=trainer or None,
            data=data or None,
            model=model or None,
            include_full=False if args.no_full else None,
            time_matched=matched,
            time_match=args.time_match,
            forward_cost=args.forward_cost,
        )
    return _Loaded(suite, overridden, left_out)


def _percent(f: float) -> str:
    return f"{100 * f:.4g}%"


def describe_suite(suite: Any, builtin_only: bool = False) -> str:
    """One sentence saying what a suite runs, from its settings (after command-line overrides).

    Args:
        suite: A :class:`~subsetlab.bench.suite.Suite`.
        builtin_only: The strategy list is the built-in strategies (the default suite).
    """
    labels = [e.display_name for e in suite.strategy_entries()]
    if builtin_only:
        what = "the built-in strategies"
    elif suite.all:
        what = "all registered strategies"
    elif len(labels) <= 4:
        what = ", ".join(labels)
    else:
        what = f"{len(labels)} strategies"
    if suite.include_full:
        what += " and the full-data reference" if labels else "the full-data reference"
    data = ", ".join(d.name for d in suite.datasets)
    models = ", ".join(m.name for m in suite.models)
    budgets = ", ".join(_percent(b) for b in suite.budgets)
    seeds = ", ".join(str(x) for x in suite.seeds)
    return (
        f"Suite {suite.name}: {what} on {data} ({models}), {budgets} budget{'s' if len(suite.budgets) > 1 else ''}, "
        f"{suite.trainer.epochs} pseudo-epochs, seed{'s' if len(suite.seeds) > 1 else ''} {seeds}."
    )


def _banner(loaded: _Loaded) -> None:
    """The suite's description, or, once the command line changed the suite (or the default
    suite left strategies out), a sentence made from its actual settings."""
    suite = loaded.suite
    if suite.description and not loaded.overridden and not loaded.left_out:
        print(suite.description.strip())
    else:
        print(describe_suite(suite, builtin_only=bool(loaded.left_out)))
    if loaded.left_out:
        names = ", ".join(f"{i.name} [{i.distribution} {i.version}]".replace(" ]", "]") for i in loaded.left_out)
        print(
            f"Not run: {names}. Without a suite file or --strategy, the quick suite runs the "
            f"built-in strategies only; add --all-strategies (or --strategy NAME) to run these too."
        )


def _run_parser() -> argparse.ArgumentParser:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["run"]


def rank_argv(argv: Sequence[str]) -> list[str]:
    """The ``subsetlab run`` arguments each rank gets: ``--nproc`` dropped (a rank reads the
    world size from torchrun) and abbreviated options written out in full, so that torchrun's
    own argument parser, which sees them too, cannot mistake one for its options."""
    actions = _run_parser()._option_string_actions
    longs = [o for o in actions if o.startswith("--")]
    out: list[str] = []
    it = iter(argv)
    for tok in it:
        if not tok.startswith("--") or tok == "--":
            out.append(tok)
            continue
        name, eq, value = tok.partition("=")
        hits = [name] if name in actions else [o for o in longs if o.startswith(name)]
        full = hits[0] if len(hits) == 1 else name
        takes_value = len(hits) == 1 and actions[full].nargs != 0
        if full == "--nproc":
            if not eq and takes_value:
                next(it, None)
            continue
        out.append(f"{full}{eq}{value}")
    return out


def _launch_ranks(args: argparse.Namespace) -> int:
    """Start this command on ``args.nproc`` ranks under torchrun; return rank 0's exit code."""
    import os
    import subprocess
    import tempfile

    from subsetlab.distributed import torchrun_command

    if args.workers > 1 or args.cluster:
        from subsetlab.errors import ConfigError

        raise ConfigError("--nproc cannot be combined with --workers or --cluster: --nproc trains each run on N "
                          "processes, --workers/--cluster run single-process runs side by side.")
    cmd = torchrun_command(args.nproc, ["run", *rank_argv(args.argv)])
    print(f"launching {args.nproc} ranks: {' '.join(cmd[1:])}", flush=True)
    with tempfile.TemporaryDirectory(prefix="subsetlab-") as tmp:
        status = Path(tmp) / "exit-code"
        env = {**os.environ, "SUBSETLAB_STATUS_FILE": str(status)}
        # torchrun's own default (one thread per rank, with a banner saying so) unless set
        env["OMP_NUM_THREADS"] = str(args.threads) if args.threads else env.get("OMP_NUM_THREADS", "1")
        rc = subprocess.run(cmd, env=env, check=False).returncode
        if rc == 0 and status.is_file():
            return int(status.read_text().strip() or 0)
    if rc != 0:
        print(f"subsetlab run: the ranks exited with code {rc}; finished runs are recorded, run the same "
              f"command again to resume.", file=sys.stderr)
    return rc if rc != 0 else EXIT_OK


def _cmd_run(args: argparse.Namespace) -> int:
    from subsetlab import distributed

    _check_formats(args.format)
    _, world, _ = distributed.env_rank_world()
    if args.nproc > 1 and world == 1 and not args.dry_run:
        # report a bad suite, option or missing data here, not once per rank
        from subsetlab.bench.runner import check_data

        suite = _load(args).suite
        check_data(suite.expand(), suite.name)
        return _launch_ranks(args)
    if world > 1 and args.nproc not in (1, world):
        from subsetlab.errors import ConfigError

        raise ConfigError(f"--nproc {args.nproc} does not match the {world} ranks torchrun started.")
    if world > 1:
        dv = distributed.init(device=args.device or "auto")
        try:
            code = _run_suite_cmd(args, dv)
        finally:
            distributed.shutdown()
        status = os.environ.get("SUBSETLAB_STATUS_FILE")
        if status and dv.is_main:
            Path(status).write_text(str(code))
            return EXIT_OK
        return code if dv.is_main else EXIT_OK
    return _run_suite_cmd(args, None)


def _run_suite_cmd(args: argparse.Namespace, dv: Any) -> int:
    from subsetlab.bench.runner import failed_notice, match_title, run_suite, run_title
    from subsetlab.bench.store import latest_by_key, read_records

    main_rank = dv is None or dv.is_main
    loaded = _load(args)
    suite = loaded.suite
    results = Path(args.results) if args.results else Path("runs") / suite.name / "results.jsonl"
    out = Path(args.out) if args.out else results.parent
    if main_rank:
        _banner(loaded)
    if args.dry_run:
        specs = suite.expand()
        matches = suite.time_matches()
        latest = latest_by_key(read_records(results))
        print(f"suite {suite.name}: {len(specs) + len(matches)} runs -> {results}")
        for s in specs:
            status = (latest.get(s.key) or {}).get("status", "to run")
            print(f"  {s.key}  {status:<7} {run_title(s)}")
        for m in matches:  # a recorded one shows its measured fraction
            rec = latest.get(m.key) or {}
            title = match_title(m)
            if rec.get("spec"):
                from subsetlab.config import RunSpec

                title = f"{run_title(RunSpec.model_validate(rec['spec']))} (matched to f={m.budget:g}, {m.mode})"
            print(f"  {m.key}  {rec.get('status', 'to run'):<7} {title}")
        return EXIT_OK
    progress = args.progress or ("lines" if args.quiet else "auto")
    if not main_rank:
        progress = "none"
    outcome = run_suite(
        suite,
        results,
        workers=args.workers,
        progress=progress,
        retry_failed=args.retry_failed,
        threads=args.threads,
        cluster=args.cluster,
        dist=dv,
    )
    if not main_rank:
        return EXIT_OK
    keys = set(outcome.keys)
    records = [r for r in latest_by_key(read_records(results)).values() if r["key"] in keys]
    _report(records, out, args.format, not args.no_plots, title=f"Suite {suite.name}")
    print(
        f"\nsuite {suite.name}: {outcome.n_ok} ok, {outcome.n_failed} failed, {len(outcome.ran)} run now, "
        f"{len(outcome.skipped)} already recorded; {outcome.seconds:.1f} s; results in {results}"
    )
    failed_skipped = sum(1 for k in outcome.skipped if outcome.statuses.get(k) == "failed")
    if failed_skipped:
        print(failed_notice(failed_skipped))
    return EXIT_OK if outcome.n_failed == 0 else EXIT_FAILED_RUNS


# ---------------------------------------------------------------------- entry point
@contextlib.contextmanager
def _short_warnings() -> Iterator[None]:
    """Print warnings as one ``warning: ...`` line each (restored on exit); a bad line of a
    results file, read several times in one command, is shown once."""
    with warnings.catch_warnings():
        seen: set[Any] = set()

        def show(message: Any, category: Any, filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
            ident = getattr(message, "ident", None)
            if ident is not None:
                if ident in seen:
                    return
                seen.add(ident)
            print(f"warning: {message}", file=file or sys.stderr)

        warnings.showwarning = show
        yield


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``subsetlab`` command with ``argv`` (default ``sys.argv[1:]``); return the exit code."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return int(exc.code or 0)
    args.argv = argv[argv.index("run") + 1 :] if args.command == "run" else argv
    from subsetlab.errors import ConfigError, MissingDataError, RegistryError, SubsetlabError

    with _short_warnings():
        try:
            return int(args.func(args))
        except (ConfigError, RegistryError, MissingDataError) as exc:  # nothing was run
            print(f"subsetlab {args.command}: error: {exc}", file=sys.stderr)
            return EXIT_USAGE
        except SubsetlabError as exc:  # a missing extra, an unreachable cluster, a broken process group
            print(f"subsetlab {args.command}: error: {exc}", file=sys.stderr)
            return EXIT_FAILED
        except KeyboardInterrupt:
            print("\ninterrupted; finished runs are recorded; run the same command again to resume.", file=sys.stderr)
            return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
