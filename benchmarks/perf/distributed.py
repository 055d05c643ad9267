"""One CREST job on 1 process and on 2 DDP processes (gloo), measured in one run.

The same run (data, model, strategy, seed, global batch, steps) is trained by
:func:`subsetlab.distributed.spawn` on

* ``1p x 1t``: one process, one torch thread;
* ``1p x Nt``: one process with as many threads as the 2-process job uses in all (same cores);
* ``2p x 1t``: two ranks (DDP over gloo), one thread each;

interleaved ``--repeats`` times. Reported per setting (medians): the in-rank training wall
(``timings["total"]`` of rank 0's :class:`~subsetlab.trainer.RunResult`, measured after a
1-epoch warm-up run in the same processes), its split into training steps, selection and
evaluation, the wall of the whole call (process start-up, process-group set-up and the
warm-up included), the final test accuracy and the selections made, then the
ratios to ``1p x 1t``. Nothing is timed inside a unit test; these machines are noisy, so read
the ratios of one run, not absolute seconds across runs.

    python benchmarks/perf/distributed.py                          # digits, MLP, CREST, f=0.2, 30 epochs
    python benchmarks/perf/distributed.py --strategy random --repeats 3
    python benchmarks/perf/distributed.py --data fashion_mnist --model cnn --epochs 2
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

from subsetlab import distributed


def spec(args: argparse.Namespace) -> dict[str, Any]:
    """The measured run (the batch size is the global batch, split over the ranks)."""
    return {
        "data": {"name": args.data, "val_fraction": 0.1},
        "model": {"name": args.model},
        "trainer": {
            "epochs": args.epochs, "fraction": args.fraction, "batch_size": args.batch_size, "lr": 0.05,
            "device": "cpu", "eval_every": args.epochs, "analytics": "off",
        },
        "strategy": {"name": args.strategy},
        "seed": 0,
    }


def job(dv: Any, raw: dict[str, Any]) -> dict[str, Any]:
    """Runs on every rank: a 1-epoch warm-up run (first-call costs: lazy imports, kernels,
    DDP and gloo set-up), then the measured run; returns this rank's figures."""
    from subsetlab.api import run_spec

    run_spec({**raw, "trainer": {**raw["trainer"], "epochs": 1, "eval_every": 1}}, resume=False, dist=dv)
    res = run_spec(raw, resume=False, dist=dv)
    t = res.timings
    return {
        "total": t["total"], "train": t["train"], "select": t["select"], "eval": t["eval"],
        "acc": res.metrics["final_acc"], "steps": res.work["steps"], "selections": res.selections["count"],
        "world": res.world_size,
    }


def measure(raw: dict[str, Any], nproc: int, threads: int) -> dict[str, Any]:
    """One spawn of ``nproc`` ranks with ``threads`` threads each; rank 0's figures and the call's wall."""
    t0 = time.perf_counter()
    out = distributed.spawn(job, nproc, (raw,), backend="gloo", threads=threads, timeout_s=1800)
    wall = time.perf_counter() - t0
    return {**out[0], "call": wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--strategy", default="crest")
    ap.add_argument("--data", default="digits")
    ap.add_argument("--model", default="mlp")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--fraction", type=float, default=0.2)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    raw = spec(args)
    settings = [(1, 1), (1, args.nproc), (args.nproc, 1)]
    names = {s: f"{s[0]}p x {s[1]}t" for s in settings}
    rows: dict[tuple[int, int], list[dict[str, Any]]] = {s: [] for s in settings}
    measure(raw, 1, 1)  # warm-up: imports, data cache, allocator
    for rep in range(args.repeats):
        for s in settings:
            rows[s].append(measure(raw, *s))
            r = rows[s][-1]
            print(f"  repeat {rep + 1}/{args.repeats} {names[s]:<8} in-rank {r['total']:6.2f} s  "
                  f"call {r['call']:6.2f} s  acc {r['acc']:.3f}", flush=True)

    def med(s: tuple[int, int], key: str) -> float:
        return statistics.median(r[key] for r in rows[s])

    print(f"\n{args.strategy} on {args.data} ({args.model}), f={args.fraction}, global batch {args.batch_size}, "
          f"{args.epochs} epochs, {rows[settings[0]][0]['steps']} steps; medians of {args.repeats} repeats\n")
    head = f"{'setting':<9} {'in-rank s':>9} {'train':>7} {'select':>7} {'eval':>6} {'call s':>7} {'acc':>6} {'sel':>4}"
    print(head)
    print("-" * len(head))
    for s in settings:
        accs = sorted({round(r["acc"], 4) for r in rows[s]})
        print(f"{names[s]:<9} {med(s, 'total'):9.2f} {med(s, 'train'):7.2f} {med(s, 'select'):7.2f} "
              f"{med(s, 'eval'):6.2f} {med(s, 'call'):7.2f} {accs[0]:6.3f} {rows[s][0]['selections']:4d}")
    base = settings[0]
    print()
    for s in settings[1:]:
        print(f"{names[s]} / {names[base]}: in-rank {med(s, 'total') / med(base, 'total'):.2f}x, "
              f"train {med(s, 'train') / med(base, 'train'):.2f}x, select {med(s, 'select') / med(base, 'select'):.2f}x, "
              f"call {med(s, 'call') / med(base, 'call'):.2f}x")


if __name__ == "__main__":
    main()
