"""Overhead of the selection analytics (``TrainerConfig.analytics``) on a Fashion-MNIST-sized run.

The same run (data, model, strategy, seed) is trained with ``analytics="off"``, ``"basic"`` and
``"full"``, interleaved ``--repeats`` times. Reported per mode: wall seconds (median), the
analytics' own seconds as the trainer times them (``timings["analytics"]``, device-synchronised),
and their share of the wall time. The target for ``"basic"``: a share well under 1%.

    python benchmarks/perf/analytics.py                       # Fashion-MNIST, small CNN, 10%, 4 epochs
    python benchmarks/perf/analytics.py --strategies random,crest --epochs 2 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics

from subsetlab.api import run_spec
from subsetlab.config import RunSpec


def spec(strategy: str, mode: str, args: argparse.Namespace) -> RunSpec:
    """The measured run."""
    data = {"name": "fashion_mnist", "val_fraction": 0.1}
    if args.synthetic:
        data = {"name": "synthetic", "options": {"n": 60000, "n_test": 10000, "dim": 784, "classes": 10}}
    return RunSpec.model_validate(
        {
            "data": data,
            "model": {"name": args.model},
            "trainer": {
                "epochs": args.epochs, "fraction": args.fraction, "batch_size": 128, "lr": 0.05,
                "device": args.device, "analytics": mode, "eval_every": args.epochs,
            },
            "strategy": {"name": strategy},
            "seed": 0,
        }
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--strategies", default="random", help="comma-separated strategy names")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--fraction", type=float, default=0.1)
    ap.add_argument("--model", default="cnn")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--modes", default="off,basic,full")
    ap.add_argument("--synthetic", action="store_true", help="same-sized synthetic data instead of Fashion-MNIST")
    args = ap.parse_args()
    modes = args.modes.split(",")
    run_spec(spec(args.strategies.split(",")[0], "off", args), resume=False)  # warm-up (loads, allocator, kernels)
    for strategy in args.strategies.split(","):
        walls: dict[str, list[float]] = {m: [] for m in modes}
        own: dict[str, list[float]] = {m: [] for m in modes}
        accs: dict[str, set[float]] = {m: set() for m in modes}
        steps = sel = 0
        for _ in range(args.repeats):
            for m in modes:
                r = run_spec(spec(strategy, m, args), resume=False)
                assert r.ok, r.error
                walls[m].append(r.timings["total"])
                own[m].append(r.timings.get("analytics", 0.0))
                accs[m].add(round(r.metrics["final_acc"], 6))
                steps, sel = r.work["steps"], r.selections["count"]
        print(f"\n{strategy}: {steps} steps, {sel} selections, device {args.device}, {args.repeats} repeats")
        base = statistics.median(walls[modes[0]])
        print(f"{'mode':<6} {'wall s (median)':>16} {'vs ' + modes[0]:>9} {'analytics s':>12} {'% of wall':>10}  final acc")
        for m in modes:
            w, a = statistics.median(walls[m]), statistics.median(own[m])
            print(f"{m:<6} {w:16.2f} {100 * (w - base) / base:+8.1f}% {a:12.3f} {100 * a / w:9.2f}%  {sorted(accs[m])}")


if __name__ == "__main__":
    main()
