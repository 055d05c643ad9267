"""The trainer's own cost: a plain PyTorch loop against subsetlab's ``random`` at the same steps.

Both train the same LeNet on the same Fashion-MNIST split with the same protocol (SGD, Nesterov
momentum, cosine to 0, evaluation at the end only), from the same initial weights, one run
after the other in this process, repeated and interleaved. The plain loop draws a fresh random
``f*N`` subset each epoch and trains ``ceil(f*N/B)`` batches on it, as Random does.

    python benchmarks/perf/trainer.py                    # 10% budget, 20 epochs, 3 repeats
    python benchmarks/perf/trainer.py --repeats 1 --epochs 4

Prints, per variant, the median wall time of the run (data already in memory: loading is
reported once, apart) and subsetlab's breakdown (train steps, strategy hooks, evaluation,
analytics, other), then the ratio ``subsetlab / plain`` (target <= 1.10).
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch
from torch.nn import functional as F

from subsetlab.config import DataConfig, ModelConfig, TrainerConfig
from subsetlab.data import load_data
from subsetlab.models import build_model
from subsetlab.registry import create
from subsetlab.schedule import lr_at
from subsetlab.seeding import torch_generator
from subsetlab.trainer import Trainer


def plain_loop(model, data, cfg: TrainerConfig, seed: int) -> tuple[float, float, float]:
    """A minimal loop: random f*N subset per epoch, batches of B, SGD, cosine.

    Returns ``(wall seconds, seconds of the final evaluation, test accuracy)``.
    """
    t0 = time.perf_counter()
    train, test = data.train, data.test
    n = len(train)
    k = math.ceil(round(cfg.fraction * n, 6))
    S = math.ceil(k / cfg.batch_size)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                          weight_decay=cfg.weight_decay)
    g = torch_generator(seed, "plain-loop")
    model.train()
    step = 0
    for _ in range(cfg.epochs):
        idx = torch.randperm(n, generator=g)[:k]
        for b in range(S):
            lr = lr_at(step, S, cfg)
            for group in opt.param_groups:
                group["lr"] = lr
            sel = idx[b * cfg.batch_size : (b + 1) * cfg.batch_size]
            x, y = train.x.index_select(0, sel), train.y.index_select(0, sel)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
    t_eval = time.perf_counter()
    model.eval()
    correct = 0
    with torch.no_grad():
        for s in range(0, len(test), cfg.eval_batch_size):
            z = model(test.x[s : s + cfg.eval_batch_size])
            correct += int((z.argmax(1) == test.y[s : s + cfg.eval_batch_size]).sum())
    end = time.perf_counter()
    return end - t0, end - t_eval, correct / len(test)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default="/usr/share/datasets/fashion-mnist")
    ap.add_argument("--fraction", type=float, default=0.1)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--analytics", default="basic", choices=["off", "basic", "full"])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    data = load_data(DataConfig(name="fashion_mnist", root=args.root, val_fraction=0.1), 0)
    load_s = time.perf_counter() - t0
    cfg = TrainerConfig(
        epochs=args.epochs, fraction=args.fraction, batch_size=128, lr=0.05, momentum=0.9, nesterov=True,
        weight_decay=5e-4, schedule="cosine", warmup_epochs=0, eval_every=args.epochs, device="cpu",
        analytics=args.analytics,
    )
    mcfg = ModelConfig(name="lenet")
    shape, C = data.train.input_shape, data.train.num_classes
    print(f"data: {len(data.train)} train / {len(data.test)} test, loaded in {load_s:.2f} s (not in the runs)")
    plain, plain_eval, sub, parts, accs = [], [], [], [], {"plain": [], "subsetlab": []}
    for rep in range(args.repeats + 1):  # the first pair warms up (allocator, oneDNN kernels)
        model = build_model(mcfg, shape, C, rep)
        t, t_ev, acc = plain_loop(model, data, cfg, rep)
        t1 = time.perf_counter()
        res = Trainer(cfg).fit(create("random"), build_model(mcfg, shape, C, rep), data, rep)
        wall = time.perf_counter() - t1
        assert res.ok, res.error
        if rep == 0:
            continue
        plain.append(t)
        plain_eval.append(t_ev)
        sub.append(wall)
        accs["plain"].append(acc)
        accs["subsetlab"].append(res.metrics["final_acc"])
        parts.append({**{k: v for k, v in res.timings.items() if isinstance(v, float)}, "fit_call": wall})
    med = statistics.median
    print(f"steps: {res.work['steps']} ({res.budget['steps_per_epoch']} per pseudo-epoch), threads {args.threads}")
    print(f"plain loop       : {med(plain):7.2f} s   acc {statistics.fmean(accs['plain']):.4f}   "
          f"(training {med(p - e for p, e in zip(plain, plain_eval)):.2f} s, final evaluation {med(plain_eval):.2f} s)")
    print(f"subsetlab random : {med(sub):7.2f} s   acc {statistics.fmean(accs['subsetlab']):.4f}   (Trainer.fit call)")
    keys = [k for k in parts[0] if k not in ("fit_call",)]
    print("  breakdown (median s): " + ", ".join(f"{k} {med(p[k] for p in parts):.2f}" for k in keys))
    extra = {
        "training steps": med(p["train"] for p in parts) - med(a - e for a, e in zip(plain, plain_eval)),
        "evaluation": med(p["eval"] for p in parts) - med(plain_eval),
        "strategy hooks": med(p["select"] for p in parts),
        "analytics": med(p.get("analytics", 0.0) for p in parts),
        "other (setup, results)": med(p["other"] + p["checkpoint"] for p in parts),
        "outside Trainer.fit's clock": med(p["fit_call"] - p["total"] for p in parts),
    }
    print("  subsetlab - plain, by part (s): " + ", ".join(f"{k} {v:+.2f}" for k, v in extra.items()))
    print(f"ratio subsetlab / plain: {med(s / p for s, p in zip(sub, plain)):.3f}  (target <= 1.10; per repeat: "
          + ", ".join(f"{s / p:.3f}" for s, p in zip(sub, plain)) + ")")


if __name__ == "__main__":
    main()
