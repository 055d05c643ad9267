"""Selection-kernel timings on CPU: subsetlab's torch solvers against apricot, side by side.

    python benchmarks/perf/selection.py            # everything (a few minutes: apricot is slow)
    python benchmarks/perf/selection.py --quick    # smaller (b) and (c) for a smoke run

(a) CREST's round: 50 independent facility-location problems of 50 points, choosing 13, on
    10-dim embeddings: one ``facility_location_batched`` call against one apricot fit per
    problem (a few fits timed and extrapolated to 50 unless ``--apricot-all``).
(b) Per-class CRAIG at Fashion-MNIST scale: 10 classes x 6,000 points, 10-dim embeddings,
    choose 600 per class, ``max_dist - dist`` similarity: ``facility_location_embeddings``
    (lazy greedy) against apricot's lazy greedy on the same precomputed similarity.
(c) ``bench_rounds``: NN-OMP (GradMatch's solver) at that scale, then one whole selection round
    of GradMatch, Glister and CRAIG (embedding pass included, reported separately) on
    Fashion-MNIST (54k train / 6k val, small CNN; synthetic images of that shape if the files
    are missing).

Synthetic embeddings (explicit, seeded): softmax-minus-onehot vectors, the C-dim gradient
embedding of cross-entropy. For class c: logits ~ N(0, 2^2) per class with +3 on class c,
embedding ``softmax(logits) - e_c``. For the C + C*D embedding of (c), the weight part is the
outer product with ReLU(N(0, 1)) penultimate features of width D = 128.

Times are wall-clock seconds of the calls (similarity included on both sides); no asserts.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time

import torch

from subsetlab.submodular import (
    facility_location_apricot,
    facility_location_batched,
    facility_location_embeddings,
    nn_omp,
    similarity,
)


def class_embeddings(n: int, c: int, num_classes: int, g: torch.Generator) -> torch.Tensor:
    """``[n, C]`` softmax-minus-onehot embeddings of n examples of class ``c``."""
    logits = torch.randn(n, num_classes, generator=g) * 2.0
    logits[:, c] += 3.0
    e = torch.softmax(logits, dim=1)
    e[:, c] -= 1.0
    return e


def bias_weight_embeddings(bias: torch.Tensor, D: int, g: torch.Generator) -> torch.Tensor:
    """``[n, C + C*D]``: the bias gradient and its outer product with ReLU features."""
    h = torch.relu(torch.randn(bias.shape[0], D, generator=g))
    return torch.cat([bias, (bias.unsqueeze(2) * h.unsqueeze(1)).flatten(1)], dim=1)


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def timed_cpu(fn):
    """(wall seconds, CPU seconds of this process, result)."""
    t, c = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - t, time.process_time() - c, out


def row(*cells, widths=(46, 14, 14, 14, 22)) -> str:
    return "".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))


# ---------------------------------------------------------------------------------------------


def bench_batched(args, g: torch.Generator) -> None:
    P, n, k, C = args.problems, args.points, args.k_batch, args.dim
    x = torch.stack([class_embeddings(n, p % C, C, g) for p in range(P)])
    mask = torch.ones(P, n, dtype=torch.bool)
    for _ in range(3):  # warm-up
        facility_location_batched(x, k, mask, similarity="max_minus_dist")
    times = []
    for _ in range(args.repeats):
        dt, res = timed(lambda: facility_location_batched(x, k, mask, similarity="max_minus_dist"))
        times.append(dt)
    ours = statistics.median(times)

    fits = P if args.apricot_all else min(P, args.apricot_fits)
    ap_times, ratios = [], []
    for p in range(fits):
        dt, r = timed(lambda: facility_location_apricot(x[p], k, similarity="max_minus_dist"))
        ap_times.append(dt)
        ratios.append(float(res.objective[p]) / r.objective)
    ap_total = sum(ap_times) * (P / fits)
    note = "all fits timed" if fits == P else f"{fits} fits timed, extrapolated to {P}"
    print(f"\n(a) {P} FL problems x {n} points, k={k}, d={C}, max_dist - dist")
    print(row("", "ms / round", "vs ours", "obj ratio"))
    print(row(f"subsetlab batched (median of {args.repeats})", f"{ours * 1e3:.2f}", "1.0x", ""))
    print(row(f"apricot, 1 fit per problem ({note})", f"{ap_total * 1e3:.0f}", f"{ap_total / ours:.0f}x",
              f"{min(ratios):.6f}"))
    print(f"    target <= 10 ms for the batch: {'met' if ours <= 0.010 else 'NOT met'}; apricot per fit "
          f"{statistics.median(ap_times) * 1e3:.0f} ms (mostly numba compilation); obj ratio = min over "
          f"timed problems of ours / apricot")


def bench_craig(args, g: torch.Generator) -> None:
    C, n, d = args.classes, args.per_class, args.dim
    k = max(1, round(args.fraction * n))
    embs = [class_embeddings(n, c % d, d, g) for c in range(C)]
    facility_location_embeddings(embs[0][:500], 50)  # warm-up of the torch kernels (small)
    ours_t, ours_cpu, ours_obj, ap_t, ap_cpu, ap_obj, ap_fit_t = [], [], [], [], [], [], []
    for c in range(C):
        dt, cpu, r = timed_cpu(lambda: facility_location_embeddings(embs[c], k, "max_minus_dist", "lazy"))
        ours_t.append(dt)
        ours_cpu.append(cpu)
        ours_obj.append(r.objective)
    if not args.skip_apricot:
        for c in range(C):
            sim_t, sim_cpu, sim = timed_cpu(lambda: similarity(embs[c], "max_minus_dist"))
            dt, cpu, r = timed_cpu(
                lambda: facility_location_apricot(sim, k, similarity="precomputed", optimizer="lazy")
            )
            ap_t.append(sim_t + dt)
            ap_cpu.append(sim_cpu + cpu)
            ap_fit_t.append(dt)
            ap_obj.append(r.objective)
    print(f"\n(b) per-class CRAIG: {C} classes x {n} points, d={d}, k={k} per class, max_dist - dist")
    print(row("", "wall s", "vs apricot", "obj ratio", "CPU s (all threads)"))
    if ap_t:
        ratio = sum(ours_obj) / sum(ap_obj)
        worst = min(o / a for o, a in zip(ours_obj, ap_obj))
        speed = sum(ap_t) / sum(ours_t)
        print(row("subsetlab lazy greedy (similarity included)", f"{sum(ours_t):.2f}", f"{speed:.1f}x",
                  f"{ratio:.6f}", f"{sum(ours_cpu):.2f}"))
        print(row("apricot lazy greedy (torch similarity + fit)", f"{sum(ap_t):.2f}", "1.0x", "1",
                  f"{sum(ap_cpu):.2f}"))
        if torch.get_num_threads() == 1:
            print(f"    speed-up in CPU seconds of this process: {sum(ap_cpu) / sum(ours_cpu):.1f}x "
                  f"(less sensitive than wall time to other processes sharing the CPUs)")
        print(f"    per class: ours {statistics.median(ours_t):.2f} s, apricot {statistics.median(ap_t):.2f} s "
              f"(fit alone {statistics.median(ap_fit_t):.2f} s); worst per-class obj ratio {worst:.6f}")
        print(f"    target >= 5x at obj ratio >= 0.999: {'met' if speed >= 5 and ratio >= 0.999 else 'NOT met'}")
    else:
        print(row("subsetlab lazy greedy (similarity included)", f"{sum(ours_t):.2f}", "", "",
                  f"{sum(ours_cpu):.2f}"))


def _fashion_mnist_setup(args):
    """Fashion-MNIST splits (54k/6k/10k), the small CNN, briefly trained; synthetic if missing.

    The CNN is trained for ``args.pretrain_steps`` SGD steps (batch 128, lr 0.05, momentum 0.9)
    on random batches, so the embeddings are those of a network early in training, not of the
    untrained one (whose softmax outputs are all near uniform).
    """
    from torch.nn import functional as F

    from subsetlab.config import DataConfig, ModelConfig
    from subsetlab.data import load_data
    from subsetlab.data.base import DataSplits, IndexedDataset
    from subsetlab.errors import MissingDataError
    from subsetlab.models import build_model

    n_train = 9000 if args.quick else None
    try:
        data = load_data(DataConfig(name="fashion_mnist", n_train=n_train), args.seed)
        source = "Fashion-MNIST"
    except MissingDataError:
        gen = torch.Generator().manual_seed(args.seed)
        n, nv = (n_train or 54000), 6000

        def make(m: int, name: str) -> IndexedDataset:
            y = torch.randint(0, 10, (m,), generator=gen)
            x = torch.randn(m, 1, 28, 28, generator=gen) + y.view(-1, 1, 1, 1) * 0.1
            return IndexedDataset(x, y, 10, name)

        data = DataSplits(make(n, "synthetic-train"), make(nv, "synthetic-val"), make(1000, "synthetic-test"))
        source = "synthetic images (Fashion-MNIST files not found)"
    model = build_model(ModelConfig(name="cnn"), (1, 28, 28), 10, args.seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    gen = torch.Generator().manual_seed(args.seed + 1)
    model.train()
    for _ in range(args.pretrain_steps):
        x, y = data.train.get(torch.randint(len(data.train), (128,), generator=gen))
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return data, model, source


def _one_round(spec: dict, data, model, args):
    """One ``select`` of the registered strategy ``spec`` outside the trainer: seconds (total,
    embedding, solver), the selection."""
    from torch.nn import functional as F

    from subsetlab import registry
    from subsetlab.embeddings import GradientEmbedder
    from subsetlab.protocol import Budget, DistView, SelectionContext, TrainState, WorkMeters
    from subsetlab.seeding import torch_generator

    device = torch.device("cpu")
    budget = Budget.make(len(data.train), args.fraction, 128, 20)
    meters = WorkMeters(device)
    ctx = SelectionContext(
        train=data.train, val=data.val, model=model,
        loss_fn=lambda z, y: F.cross_entropy(z, y, reduction="none"),
        embedder=GradientEmbedder(model, device, 1024), device=device,
        generator=torch_generator(args.seed, "strategy"), seed=args.seed, budget=budget,
        dist=DistView(), meters=meters,
    )
    strategy = registry.create(spec)
    strategy.setup(ctx)
    state = TrainState(0, 0, budget.steps_per_epoch, budget.total_steps, 0.05, model, 0)
    dt, sel = timed(lambda: strategy.select(state))
    return dt, meters.seconds.get("embedding", 0.0), meters.seconds.get("selection", 0.0), meters.forward_examples, sel


def bench_rounds(args, g: torch.Generator) -> None:
    """NN-OMP alone on synthetic embeddings, then whole selection rounds on Fashion-MNIST.

    First: NN-OMP (GradMatch's solver) per class: ``classes`` x ``per_class`` atoms, target = the
    sum of the class's gradients, k = fraction x per_class, lam 0.5, eps 1e-4, on C-dim (bias)
    and C + C*D-dim (bias + weight, D = 128) embeddings.

    Then one selection round of each strategy exactly as a run makes it
    (``strategy.select``): the no-grad embedding pass over the 54,000 training images (and the
    6,000 validation images for Glister) with the small CNN, then the solver, at a 10% budget
    (k = 5,400, batch 128), CPU. Defaults of each strategy unless named.
    """
    C, n, d, D = args.classes, args.per_class, args.dim, args.feature_dim
    k = max(1, round(args.fraction * n))
    print(f"\n(c) NN-OMP (GradMatch solver): {C} classes x {n} atoms, k={k}, lam=0.5, eps=1e-4")
    print(row("", "seconds", "s / class", "atoms kept"))
    for label, width in ((f"d = C = {d}", None), (f"d = C + C*D = {d + d * D}", D)):
        total, kept = 0.0, []
        for c in range(C):
            A = class_embeddings(n, c % d, d, g)
            if width is not None:
                A = bias_weight_embeddings(A, width, g)
            b = A.sum(0)
            dt, (idx, _w) = timed(lambda A=A, b=b: nn_omp(A, b, k, lam=0.5, eps=1e-4))
            total += dt
            kept.append(idx.numel())
        print(row(f"nn_omp, {label}", f"{total:.2f}", f"{total / C:.2f}", f"{min(kept)}-{max(kept)}"))

    data, model, source = _fashion_mnist_setup(args)
    n_tr, n_val = len(data.train), len(data.val)
    print(f"\n(c) one selection round per strategy: {source}, {n_tr} train / {n_val} val, small CNN after "
          f"{args.pretrain_steps} SGD steps, fraction {args.fraction}, batch 128")
    print(row("", "total s", "embedding s", "solver s", "forward ex.", widths=(58, 10, 13, 10, 13)))
    specs = [
        ("GradMatch (per class per gradient, bias+weight)", {"name": "gradmatch"}),
        ("GradMatch per batch (bias+weight)", {"name": "gradmatch", "variant": "per_batch"}),
        ("Glister (stochastic, bias, class quotas)", {"name": "glister"}),
        ("Glister (stochastic, bias+weight, class quotas)", {"name": "glister", "embedding": "bias_weight"}),
        ("CRAIG (per class, bias, lazy)", {"name": "craig"}),
    ]
    for label, spec in specs:
        total, emb_s, solve_s, fwd, sel = _one_round(spec, data, model, args)
        print(row(label, f"{total:.2f}", f"{emb_s:.2f}", f"{solve_s:.2f}", f"{fwd}", widths=(58, 10, 13, 10, 13)))
        diag = {k: v for k, v in sel.diagnostics.items() if k in ("omp_selected", "random_fill", "residual",
                                                                   "val_loss", "val_loss_after", "max_weight_ratio")}
        print(f"    {len(sel)} rows; " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                                for k, v in diag.items()))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="3 classes of 3,000 in (b) and (c)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's default)")
    p.add_argument("--repeats", type=int, default=20, help="timed repeats of the batched solver")
    p.add_argument("--problems", type=int, default=50)
    p.add_argument("--points", type=int, default=50)
    p.add_argument("--k-batch", type=int, default=13)
    p.add_argument("--dim", type=int, default=10, help="C, the embedding length")
    p.add_argument("--apricot-fits", type=int, default=5, help="apricot fits timed in (a)")
    p.add_argument("--apricot-all", action="store_true", help="time all apricot fits in (a)")
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--per-class", type=int, default=6000)
    p.add_argument("--fraction", type=float, default=0.1)
    p.add_argument("--feature-dim", type=int, default=128, help="D of the bias+weight embedding")
    p.add_argument("--skip-apricot", action="store_true")
    p.add_argument("--pretrain-steps", type=int, default=100, help="SGD steps of the CNN before the (c) rounds")
    p.add_argument("--only", choices=["a", "b", "c"], default=None)
    args = p.parse_args(argv)
    if args.quick:
        args.classes, args.per_class = 3, 3000
    if args.threads:
        torch.set_num_threads(args.threads)

    try:
        import apricot
        import numba

        ap_version = f"apricot {apricot.__version__}, numba {numba.__version__}"
    except ImportError:
        ap_version = "apricot not installed"
        args.skip_apricot = True
    load = os.getloadavg() if hasattr(os, "getloadavg") else (math.nan,) * 3
    print(f"torch {torch.__version__}, {ap_version}, python {sys.version.split()[0]}")
    print(f"torch threads {torch.get_num_threads()}, cpus {os.cpu_count()}, load average {load[0]:.2f} "
          f"(a load above the core count means other processes share the CPUs: timings are noisy)")
    g = torch.Generator().manual_seed(args.seed)
    if args.only in (None, "a"):
        bench_batched(args, g)
    if args.only in (None, "b"):
        bench_craig(args, g)
    if args.only in (None, "c"):
        bench_rounds(args, g)
    load = os.getloadavg() if hasattr(os, "getloadavg") else (math.nan,) * 3
    print(f"\nload average at the end {load[0]:.2f}")


if __name__ == "__main__":
    main()
