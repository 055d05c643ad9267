"""What default CREST costs against Random, measured in one run on the LeNet protocol.

Fashion-MNIST (54k train / 6k validation / 10k test), the ``lenet`` model, 20 epochs at batch
128, SGD lr 0.05 with Nesterov momentum 0.9 and weight decay 5e-4, cosine to 0, evaluation at
the end only, 10% budget: the protocol of ``benchmarks/suites/fashion_mnist_lenet.toml``. Each
strategy runs ``--repeats`` times, interleaved with the others, in this one process (2 torch
threads by default), from the same initial weights and split.

    python benchmarks/perf/crest.py                                  # crest vs random, 1 repeat
    python benchmarks/perf/crest.py --repeats 2 --extra "crest[curvature=head]" --extra "crest[preset=release]"

Prints per strategy: test accuracy, wall time of the run (``Trainer.fit``: everything from
setup to the final evaluation), time in training steps, the share of the wall time outside
training steps, the strategy's components in seconds per call (CREST: selection, loss
approximation, checking: the paper's Table 2), rounds, coresets built, checks and extra work;
then default CREST's wall time over Random's (target <= 1.5) and its share outside training
steps (target <= 35%).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from subsetlab.config import DataConfig, ModelConfig, TrainerConfig
from subsetlab.data import load_data
from subsetlab.models import build_model
from subsetlab.registry import create
from subsetlab.trainer import Trainer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default="/usr/share/datasets/fashion-mnist")
    ap.add_argument("--fraction", type=float, default=0.1)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model", default="lenet")
    ap.add_argument("--extra", action="append", default=[], help="more strategy specs to measure beside crest and random")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    data = load_data(DataConfig(name="fashion_mnist", root=args.root, val_fraction=0.1), args.seed)
    print(f"data: {len(data.train)} train / {len(data.test)} test ({time.perf_counter() - t0:.1f} s to load, not in the runs)")
    cfg = TrainerConfig(
        epochs=args.epochs, fraction=args.fraction, batch_size=128, lr=0.05, momentum=0.9, nesterov=True,
        weight_decay=5e-4, schedule="cosine", warmup_epochs=0, eval_every=args.epochs, device=args.device,
    )
    specs = ["random", "crest", *args.extra]
    mcfg = ModelConfig(name=args.model)
    runs: dict[str, list] = {s: [] for s in specs}
    # warm-up (oneDNN kernels, allocator) so the first measured run is not penalised
    Trainer(cfg.model_copy(update={"epochs": 1})).fit(create("random"), build_model(mcfg, data.train.input_shape, data.train.num_classes, 0), data, 0)
    for rep in range(args.repeats):
        for spec in specs:
            model = build_model(mcfg, data.train.input_shape, data.train.num_classes, args.seed)
            res = Trainer(cfg).fit(create(spec), model, data, args.seed + rep)
            assert res.ok, f"{spec}: {res.error}"
            runs[spec].append(res)
            print(f"  [{rep + 1}/{args.repeats}] {spec}: {res.timings['total']:.1f} s, acc {res.metrics['final_acc']:.4f}", flush=True)
    med = statistics.median
    print(f"\n{cfg.epochs} epochs, {runs['random'][0].work['steps']} steps, f={args.fraction}, {args.threads} threads, "
          f"{args.repeats} repeat(s) (medians)")
    rows = {}
    for spec, rs in runs.items():
        total = med(r.timings["total"] for r in rs)
        train = med(r.timings["train"] for r in rs)
        outside = med((r.timings["total"] - r.timings["train"]) / r.timings["total"] for r in rs)
        acc = statistics.fmean(r.metrics["final_acc"] for r in rs)
        rows[spec] = (total, outside)
        r = rs[0]
        log = r.selections["log"]
        built = sum(e["diagnostics"].get("built", 0) for e in log)
        per_call = ", ".join(
            f"{k} {r.timings['strategy'][k] / max(1, r.timings['strategy_counts'].get(k, 1)):.4f} s x{r.timings['strategy_counts'].get(k, 0)}"
            for k in r.timings["strategy"]
        )
        print(f"{spec:32s} acc {acc:.4f}  wall {total:6.1f} s  train {train:6.1f} s  outside-train {100 * outside:4.1f}%  "
              f"eval {med(x.timings['eval'] for x in rs):.1f} s")
        if log and built:
            print(f"{'':32s} rounds {len(log)}, coresets built {built}, checks {len(r.series.get('rho', []))}, "
                  f"last T1 {int(r.series['T1'][-1][1]) if r.series.get('T1') else '-'}; extra fwd {r.work['forward_examples']}, "
                  f"bwd {r.work['backward_examples']}, hvp {r.work['hvp_examples']} (backprop {r.work['backprop_examples']})")
        if per_call:
            print(f"{'':32s} per call: {per_call}")
    base = rows["random"][0]
    print()
    for spec, (total, outside) in rows.items():
        if spec != "random":
            print(f"{spec} wall / random wall: {total / base:.2f}x" + (
                f"   (target <= 1.5x);  outside training steps: {100 * outside:.1f}% of its wall (target <= 35%)" if spec == "crest" else ""))


if __name__ == "__main__":
    main()
