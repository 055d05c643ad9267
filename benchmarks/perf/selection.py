"""Selection-kernel timings on CPU: subsetlab's torch solvers against apricot, side by side.

    python benchmarks/perf/selection.py            # everything (a few minutes: apricot is slow)
    python benchmarks/perf/selection.py --quick    # smaller (b) and (c) for a smoke run

(a) CREST's round: 50 independent facility-location problems of 50 points, choosing 13, on
    10-dim embeddings: one ``facility_location_batched`` call against one apricot fit per
    problem (a few fits timed and extrapolated to 50 unless ``--apricot-all``).
(b) Per-class CRAIG at Fashion-MNIST scale: 10 classes x 6,000 points, 10-dim embeddings,
    choose 600 per class, ``max_dist - dist`` similarity: ``facility_location_embeddings``
    (lazy greedy) against apricot's lazy greedy on the same precomputed similarity.
(c) ``bench_rounds``: NN-OMP (GradMatch's solver) at that scale, a hook for full GradMatch and
    Glister rounds.

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


def bench_rounds(args, g: torch.Generator) -> None:
    """HOOK for the lead: one GradMatch round and one Glister round at Fashion-MNIST scale.

    For now this times only NN-OMP (GradMatch's solver) per class: ``classes`` x ``per_class``
    atoms, target = the sum of the class's gradients, k = fraction x per_class, lam 0.5,
    eps 1e-4, on C-dim (bias) and C + C*D-dim (bias + weight, D = 128) embeddings.
    TODO(lead): add the embedding pass and the strategy's own selection (GradMatch per class,
    Glister's greedy with its Taylor updates) once strategies/gradmatch.py and glister.py exist.
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
            dt, (idx, w) = timed(lambda: nn_omp(A, b, k, lam=0.5, eps=1e-4))
            total += dt
            kept.append(idx.numel())
        print(row(f"nn_omp, {label}", f"{total:.2f}", f"{total / C:.2f}", f"{min(kept)}-{max(kept)}"))


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
