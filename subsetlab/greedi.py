"""GreeDi: a greedy selection spread over the ranks of a distributed run, then merged.

Mirzasoleiman, Karbasi, Sarkar, Krause, "Distributed Submodular Maximization: Identifying
Representative Elements in Massive Data", NeurIPS 2013. With ``W`` ranks:

1. the ground set is split into ``W`` shards (:func:`shard_of`: a seeded random partition,
   stratified by class when labels are given; every rank computes the same one from the
   shared seed, without communication);
2. each rank runs the single-process greedy on its own shard and proposes
   ``kappa = min(k, n_r, ceil(oversample * k / W))`` candidates (:func:`local_budget`; with the
   default ``oversample = 2`` and two ranks, ``kappa = k``, GreeDi's choice; with more ranks
   the union stays about ``2 k`` candidates instead of growing as ``W k``);
3. the ranks gather the candidates, after checking that the merge will not hold more than a
   configured number of bytes (:func:`check_merge_memory`);
4. a second greedy pass over the union of the candidates picks the ``k`` elements; when there
   are several independent problems (one per class), their merges are spread over the ranks;
5. the best of the merged solution and the ranks' own complete solutions is kept (GreeDi's
   last step), and every rank ends with the same selection.

Two solvers are provided here, knowing no particular strategy:

* :func:`greedi_facility_location` (CRAIG). The second pass maximises facility location over
  the candidates, each weighted by the size of the cluster it represents on its shard:
  ``F_B(S) = sum_{c in B} w_c max_{j in S} sim(c, j)``. That is the approximation it makes: a
  ground element is represented by its shard's candidate (it moves by at most its distance to
  that candidate, so for ``max_dist - dist`` similarity ``F_B`` is within the shards'
  facility-location residual ``sum_i dist(i, rep(i))`` of the true objective, apart from the
  constant). Step 5 and the returned weights then use the *true* objective over the whole
  ground set, computed exactly across the ranks (each rank measures its own elements against
  every candidate set; the sums are all-reduced): the result is never worse, under the true
  objective, than any complete shard solution, and its weights are the exact cluster sizes
  over the whole ground set, as a single process computes them for that set. GreeDi's
  factor ``(1 - 1/e)^2 / min(W, k)`` of the optimum is proved for ``kappa >= k`` and local
  passes that evaluate the objective on the whole ground set; here, as in the paper's variant
  for decomposable objectives, each local pass measures its own shard only, so the factor is
  not a theorem of this implementation: the tests check it against brute force on small sets,
  where the merge comes within a few percent of the single-process greedy.
* :func:`greedi_nn_omp` (GradMatch). The second pass is NN-OMP over the candidate atoms with the
  *exact* global target (the all-reduced sum of the shards' targets); step 5 compares its
  residual with each shard's own solution scaled to the whole set (``n / n_r`` times its
  weights). OMP is not submodular, so GreeDi's factor does not apply; the merge's residual is
  at most that of the best scaled shard solution.

With one rank both reduce to the single-process solver (same set, same weights). Cost per
rank: the greedy on ``n / W`` elements proposing ``kappa`` candidates, a share of the merges
(one problem each on ``|B|`` candidates, ``|B| <= W kappa``), and, for facility location,
``|B|``-wide distance rows for its own elements. What falls with ``W``: the embedding pass (the
largest part of a selection with a real network), the local passes, and for facility location
the ``O(n^2)`` similarity work. What does not: a merge still takes ``k`` sequential greedy or
OMP steps, so for solvers whose steps cost a fixed overhead each (NN-OMP, Glister's greedy) the
selection stops getting cheaper once the merges dominate (docs/guides/scaling.md gives measured
figures).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from subsetlab.errors import SelectionError
from subsetlab.protocol import DistView
from subsetlab.submodular import facility_location, nn_omp, select_facility_location, similarity

__all__ = [
    "GreediResult",
    "local_budget",
    "shard_of",
    "merge_bytes",
    "check_merge_memory",
    "gather_candidates",
    "agree",
    "greedi_facility_location",
    "greedi_nn_omp",
]


@dataclass
class GreediResult:
    """Result of a GreeDi selection (the same on every rank).

    Attributes:
        ids: ``[m]`` int64 ids of the chosen elements (the ids the ranks passed in), in the
            order the winning pass chose them.
        weights: ``[m]`` float weights: exact cluster sizes over the whole ground set
            (facility location) or the OMP coefficients (NN-OMP).
        source: ``"merge"`` when the second pass won, else ``"rank r"`` (that shard's own
            solution).
        candidates: ``|B|``, the number of gathered candidates.
        score: The winning solution's score: mean distance of the ground elements to their
            nearest chosen element (facility location with ``max_minus_dist``; lower is
            better; with ``exp``, the mean ``exp(-distance / d)``, higher is better) or the
            relative residual ``||b - A^T x|| / ||b||`` (NN-OMP).
        merge_score: The merged solution's score, for comparison.
        target_norm: NN-OMP: ``||b||`` of the whole target (0 for facility location).
    """

    ids: torch.Tensor
    weights: torch.Tensor
    source: str
    candidates: int
    score: float
    merge_score: float
    target_norm: float = 0.0


def shard_of(n: int, world: int, generator: torch.Generator, labels: torch.Tensor | None = None) -> torch.Tensor:
    """``[n]`` int64 rank of each element: a seeded random partition into ``world`` shards.

    With ``labels`` the partition is stratified: the members of each class are shuffled and
    dealt out in turn, so every shard holds ``floor`` or ``ceil`` of ``n_c / world`` members of
    class c. Randomness from ``generator`` only (CPU): every rank computes the same partition
    from the shared seed.
    """
    n, world = int(n), int(world)
    perm = torch.randperm(n, generator=generator)
    owner = torch.empty(n, dtype=torch.long)
    if labels is None:
        owner[perm] = torch.arange(n) % world
        return owner
    lab = torch.as_tensor(labels).cpu().long()[perm]
    order = torch.argsort(lab, stable=True)  # class-grouped, random within each class
    grouped = lab[order]
    start = torch.searchsorted(grouped, grouped, right=False)  # first position of each class
    rank_in_class = torch.arange(n) - start
    owner[perm[order]] = rank_in_class % world
    return owner


def merge_bytes(rows: int, dim: int, itemsize: int, square: bool = False, support: int = 0) -> int:
    """Bytes a merge holds on one rank: the gathered ``[rows, dim]`` candidates, plus two
    ``[rows, rows]`` similarity matrices (``square``: facility location's similarity and its
    weighted copy) or the float64 Gram matrix and Cholesky factor of a ``support``-atom OMP."""
    total = rows * dim * itemsize
    if square:
        total += 2 * rows * rows * itemsize
    total += 2 * support * support * 8
    return int(total)


def check_merge_memory(need: int, limit: int, who: str, what: str = "GreeDi merge") -> None:
    """Raise a :class:`SelectionError` when a merge of ``need`` bytes exceeds ``limit``.

    Every rank calls it with the same numbers (they come from the gathered candidate counts),
    so every rank raises, or none does.
    """
    if need > limit:
        raise SelectionError(
            f"Strategy {who!r}: the {what} would hold {need:,} bytes ({need / 2**20:.1f} MiB) on a "
            f"rank, more than its greedi_max_bytes limit of {limit:,} bytes. Raise greedi_max_bytes (e.g. "
            f"{who}[greedi_max_bytes={1 << max(20, math.ceil(math.log2(max(need, 1))))}]) if the "
            f"memory is there, or lower the budget, the embedding size or the number of ranks "
            f"(the merge holds about world_size * k candidates)."
        )


def gather_candidates(
    dv: DistView,
    payload: dict[str, Any],
    count: int,
    need: Any,
    limit: int,
    who: str,
    what: str = "GreeDi merge",
) -> tuple[list[dict[str, Any]], list[int]]:
    """Every rank's candidate ``payload``, after checking the merge's memory.

    Args:
        dv: The distributed view.
        payload: This rank's candidates (data: tensors, numbers, strings, None).
        count: Number of candidates in ``payload``.
        need: ``need(total)``: bytes the merge of ``total`` candidates holds on one rank.
        limit: The limit (``greedi_max_bytes``).
        who: Strategy name, for the error.
        what: What is merged, for the error.

    Returns:
        ``(payloads, counts)`` in rank order.

    Raises:
        SelectionError: on every rank, before anything large is sent, when ``need(total)``
            exceeds ``limit``.
    """
    from subsetlab.distributed import all_gather_object

    counts = [int(c) for c in dv.all_gather(torch.tensor([int(count)], dtype=torch.long))]
    check_merge_memory(int(need(sum(counts))), int(limit), who, what)
    return all_gather_object(dv, payload), counts


def agree(dv: DistView, obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (a broadcast): the ranks end with the same result even
    where a solver is not bit-reproducible across processes."""
    from subsetlab.distributed import broadcast_object

    return broadcast_object(dv, obj if dv.rank == 0 else None, 0)


def local_budget(k: int, n_local: int, world: int, oversample: float = 2.0) -> int:
    """Candidates a rank proposes for a problem of budget ``k``: ``min(k, n_r, ceil(oversample * k / W))``.

    ``oversample >= W`` is GreeDi's ``kappa = k`` (every shard proposes a whole solution; the
    union then grows as ``W k``); the default 2 proposes twice each shard's share, so the union
    holds about ``2 k`` candidates whatever the number of ranks (and with 2 ranks it is
    ``kappa = k``).
    """
    return max(0, min(int(k), int(n_local), math.ceil(float(oversample) * int(k) / max(1, int(world)))))


def _exchange_counts(dv: DistView, local: Sequence[int], sizes: Sequence[int]) -> tuple[list[list[int]], list[int]]:
    """Every rank's candidate counts per problem, and each problem's whole size (one collective)."""
    t = torch.tensor(list(local) + list(sizes), dtype=torch.long)
    rows = [[int(v) for v in r] for r in dv.all_gather(t)]
    P = len(local)
    counts = [r[:P] for r in rows]
    totals = [sum(r[P + p] for r in rows) for p in range(P)]
    return counts, totals


def _problem_generators(generator: torch.Generator | None, count: int) -> list[torch.Generator | None]:
    """One generator per problem, drawn identically on every rank from ``generator`` (so a
    problem's merge is the same whichever rank runs it)."""
    if generator is None:
        return [None] * count
    seeds = torch.randint(2**62, (count,), generator=generator, device=generator.device).tolist()
    return [torch.Generator().manual_seed(int(s)) for s in seeds]


def _spread(dv: DistView, count: int, solve: Any) -> list[Any]:
    """Run ``solve(p)`` for the problems ``p`` with ``p % W == rank`` and give every rank every
    result (one all-gather): the merges of several problems (classes) are split over the ranks."""
    from subsetlab.distributed import all_gather_object

    mine = {p: solve(p) for p in range(count) if p % dv.world_size == dv.rank}
    out: dict[int, Any] = {}
    for part in all_gather_object(dv, mine):
        out.update(part)
    return [out[p] for p in range(count)]


# ----------------------------------------------------------------------------------------------
# facility location


def _nearest(x: torch.Tensor, cand: torch.Tensor, sets: Sequence[torch.Tensor], block: int, exp: bool = False
             ) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """For each candidate set (positions into ``cand``): the objective part of the rows of ``x``
    and the number of rows whose nearest member each set element is (ties to the earliest
    position in the set). The objective part is the summed distance to the nearest member, or
    with ``exp`` the summed ``exp(-distance / d)``."""
    sums = torch.zeros(len(sets), dtype=torch.float64)
    counts = [torch.zeros(s.numel(), dtype=torch.float64) for s in sets]
    dim = max(1, x.shape[1])
    for start in range(0, x.shape[0], block):
        d = torch.cdist(x[start : start + block], cand)
        for i, s in enumerate(sets):
            if s.numel() == 0:
                continue
            best, arg = d.index_select(1, s.to(d.device)).min(1)
            sums[i] += float((torch.exp(-best.double() / dim) if exp else best.double()).sum())
            counts[i] += torch.bincount(arg.cpu(), minlength=s.numel()).double()
    return sums, counts


def greedi_facility_location(
    dv: DistView,
    problems: Sequence[tuple[torch.Tensor, torch.Tensor, int]],
    *,
    similarity_kind: str = "max_minus_dist",
    optimizer: str = "lazy",
    epsilon: float = 0.01,
    local_generator: torch.Generator | None = None,
    merge_generator: torch.Generator | None = None,
    max_bytes: int = 256 * 2**20,
    merge_max_bytes: int = 2**30,
    oversample: float = 2.0,
    backend: str = "torch",
    who: str = "strategy",
) -> list[GreediResult]:
    """Facility location over the union of every rank's elements, by GreeDi, for several
    independent problems at once (CRAIG's classes).

    Every rank must call it with the same number of problems, each with its own shard. See the
    module docstring for the steps and the approximation.

    Args:
        dv: The distributed view (a single-process view gives the single-process greedy).
        problems: ``(x, ids, k)`` per problem: ``[n_r, d]`` this rank's elements (``n_r`` may
            be 0), their ``[n_r]`` int64 ids (unique over ranks) and the problem's budget.
        similarity_kind: ``"max_minus_dist"`` or ``"exp"``.
        optimizer: Greedy optimizer of both passes (``"lazy"``, ``"naive"``, ``"stochastic"``).
        epsilon: Stochastic greedy's accuracy parameter.
        local_generator: This rank's generator for the local passes (stochastic greedy).
        merge_generator: The merges' generator (drawn identically on every rank).
        max_bytes: Memory cap of the local solver (see
            :func:`~subsetlab.submodular.facility_location_embeddings`).
        merge_max_bytes: Limit of :func:`check_merge_memory`.
        oversample: Candidates per rank, see :func:`local_budget`.
        backend: Solver of the local passes (``"torch"`` or ``"apricot"``); the merges,
            weighted, always use the torch solver.
        who: Strategy name for errors.

    Returns:
        One :class:`GreediResult` per problem, with exact cluster sizes over the problem's whole
        ground set as weights.
    """
    W = dv.world_size
    local = [
        _local_pass(x, local_budget(k, x.shape[0], W, oversample), backend, similarity_kind, optimizer, epsilon,
                    local_generator, max_bytes)
        for x, _ids, k in problems
    ]
    if W == 1:
        out = []
        for (x, ids, _k), (rows, w) in zip(problems, local):
            score = float(torch.cdist(x, x[rows]).min(1).values.double().mean()) if rows.numel() else 0.0
            out.append(GreediResult(ids[rows].cpu(), w.cpu(), "merge", int(rows.numel()), score, score))
        return out

    counts, totals = _exchange_counts(dv, [int(r.numel()) for r, _ in local], [int(x.shape[0]) for x, _, _ in problems])
    cand_n = [sum(c[p] for c in counts) for p in range(len(problems))]
    dims = [int(x.shape[1]) for x, _, _ in problems]
    item = problems[0][0].element_size() if problems else 4
    need = sum(n * d * item for n, d in zip(cand_n, dims)) + max((2 * n * n * item for n in cand_n), default=0)
    check_merge_memory(need, merge_max_bytes, who)
    cands = _gather_candidates(dv, problems, local)
    gens = _problem_generators(merge_generator, len(problems))
    budgets = [min(int(k), totals[p]) for p, (_, _, k) in enumerate(problems)]

    def merge(p: int) -> torch.Tensor:
        cand, w, _ = cands[p]
        if cand.shape[0] == 0 or budgets[p] == 0:
            return torch.zeros(0, dtype=torch.long)
        sim = similarity(cand, similarity_kind)
        res = facility_location(sim, budgets[p], optimizer, epsilon, gens[p], ground_weights=w)
        return res.ranking.cpu()

    merged = _spread(dv, len(problems), merge)
    return _best_of_sets(dv, problems, cands, merged, counts, totals, budgets, cand_n, similarity_kind == "exp")


def _local_pass(
    x: torch.Tensor, k_loc: int, backend: str, similarity_kind: str, optimizer: str, epsilon: float,
    generator: torch.Generator | None, max_bytes: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """GreeDi's first pass on this rank's shard: ``(rows, cluster sizes)`` of ``k_loc`` picks."""
    if k_loc <= 0:
        return torch.zeros(0, dtype=torch.long, device=x.device), torch.zeros(0, dtype=x.dtype, device=x.device)
    r = select_facility_location(
        x, k_loc, backend=backend, similarity=similarity_kind, optimizer=optimizer, epsilon=epsilon,
        generator=generator, max_bytes=max_bytes,
    )
    return r.ranking, r.weights


def _gather_candidates(
    dv: DistView, problems: Sequence[tuple[torch.Tensor, torch.Tensor, int]], local: list[tuple[torch.Tensor, torch.Tensor]]
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Every rank's candidates per problem, in rank order: ``(x, weights, ids)``."""
    from subsetlab.distributed import all_gather_object

    payload = [{"x": x[r].cpu(), "w": w.cpu(), "ids": ids[r].cpu()} for (x, ids, _), (r, w) in zip(problems, local)]
    parts = all_gather_object(dv, payload)
    W = dv.world_size
    return [
        (
            torch.cat([parts[r][p]["x"] for r in range(W)]).to(x.device),
            torch.cat([parts[r][p]["w"] for r in range(W)]).to(x.device),
            torch.cat([parts[r][p]["ids"] for r in range(W)]),
        )
        for p, (x, _, _) in enumerate(problems)
    ]


def _best_of_sets(
    dv: DistView,
    problems: Sequence[tuple[torch.Tensor, torch.Tensor, int]],
    cands: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    merged: list[torch.Tensor],
    counts: list[list[int]],
    totals: list[int],
    budgets: list[int],
    cand_n: list[int],
    exp: bool,
) -> list[GreediResult]:
    """GreeDi's last step with the true objective over each problem's whole ground set: the
    merge's set or a rank's own, whichever is best. Every rank measures its own elements
    against every candidate set, and the sums are all-reduced."""
    W = dv.world_size
    all_sets, flat_sums, flat_counts = [], [], []
    for p, (x, _, _) in enumerate(problems):
        offsets = [0]
        for c in counts:
            offsets.append(offsets[-1] + c[p])
        sets = [merged[p]] + [torch.arange(offsets[r], offsets[r + 1]) for r in range(W)]
        eligible = [True] + [counts[r][p] == budgets[p] for r in range(W)]
        block = max(1, (16 << 20) // max(1, cand_n[p] * 8))
        sums, cnts = _nearest(x, cands[p][0], sets, block, exp)
        all_sets.append((sets, eligible))
        flat_sums.append(sums)
        flat_counts.extend(cnts)
    sums_all = dv.all_reduce(torch.cat(flat_sums) if flat_sums else torch.zeros(0, dtype=torch.float64), "sum")
    counts_all = dv.all_reduce(torch.cat(flat_counts) if flat_counts else torch.zeros(0, dtype=torch.float64), "sum")
    meta, best = [], []
    s_off = c_off = 0
    for sets, eligible in all_sets:
        sums = sums_all[s_off : s_off + len(sets)]
        s_off += len(sets)
        starts = [c_off]
        for st in sets:
            starts.append(starts[-1] + st.numel())
        c_off = starts[-1]
        # larger sum_i exp(-d_i / d) is better; a smaller summed distance is a larger
        # sum_i (max_dist - d_i)
        key = [(-float(v) if exp else float(v)) for v in sums]
        best.append(min((i for i in range(len(sets)) if eligible[i]), key=lambda i: (key[i], i)))
        meta.append((sets, sums, starts))
    best = agree(dv, best)  # identical already (all-reduced inputs); rank 0's, to be certain
    out = []
    for p, ((sets, sums, starts), b) in enumerate(zip(meta, best)):
        n_all = max(1, totals[p])
        out.append(GreediResult(
            ids=cands[p][2][sets[b]],
            weights=counts_all[starts[b] : starts[b + 1]].to(cands[p][1].dtype).cpu(),
            source="merge" if b == 0 else f"rank {b - 1}",
            candidates=cand_n[p],
            score=float(sums[b]) / n_all,
            merge_score=float(sums[0]) / n_all,
        ))
    return out


# ----------------------------------------------------------------------------------------------
# non-negative OMP


def greedi_nn_omp(
    dv: DistView,
    problems: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]],
    *,
    lam: float = 0.5,
    eps: float = 1e-4,
    merge_max_bytes: int = 2**30,
    oversample: float = 2.0,
    who: str = "strategy",
) -> list[GreediResult]:
    """NN-OMP over the union of every rank's atoms, by GreeDi, for several independent problems
    at once (GradMatch's classes).

    Every rank must call it with the same number of problems, each with its own atoms and its
    own share of the target: a problem's whole target is the sum of the ranks' ``b_local``
    (all-reduced), e.g. the sum of all its atoms when each rank passes the sum of its own.

    Args:
        dv: The distributed view (a single-process view gives :func:`~subsetlab.submodular.nn_omp`).
        problems: ``(A, ids, b_local, k)`` per problem: ``[n_r, d]`` this rank's atoms (``n_r``
            may be 0), their ``[n_r]`` int64 ids (unique over ranks), ``[d]`` this rank's share
            of the target, and the most atoms to choose.
        lam: Ridge coefficient.
        eps: Relative residual at which OMP stops.
        merge_max_bytes: Limit of :func:`check_merge_memory`.
        oversample: Candidates per rank, see :func:`local_budget`.
        who: Strategy name for errors.

    Returns:
        One :class:`GreediResult` per problem; ``weights`` are the OMP coefficients (a shard's
        own solution is scaled by ``n / n_r``), ``score`` the relative residual against the
        whole target.
    """
    W = dv.world_size
    local = []
    for A, _ids, b_local, k in problems:
        k_loc = local_budget(k, A.shape[0], W, oversample)
        if k_loc > 0:
            local.append(nn_omp(A, b_local, k_loc, lam=lam, eps=eps))
        else:
            local.append((torch.zeros(0, dtype=torch.long, device=A.device), torch.zeros(0, dtype=A.dtype, device=A.device)))
    if W == 1:
        out = []
        for (A, ids, b_local, _k), (idx, w) in zip(problems, local):
            r = _residual(A[idx], w, b_local)
            out.append(GreediResult(ids[idx].cpu(), w.cpu(), "merge", int(idx.numel()), r, r, float(b_local.double().norm())))
        return out

    dims = [int(A.shape[1]) for A, *_ in problems]
    targets = dv.all_reduce(torch.cat([b.double().reshape(-1) for _, _, b, _ in problems]), "sum")
    bs, off = [], 0
    for d in dims:
        bs.append(targets[off : off + d])
        off += d
    counts, totals = _exchange_counts(dv, [int(i.numel()) for i, _ in local], [int(A.shape[0]) for A, *_ in problems])
    cand_n = [sum(c[p] for c in counts) for p in range(len(problems))]
    item = problems[0][0].element_size() if problems else 4
    need = sum(n * d * item for n, d in zip(cand_n, dims)) + max(
        (2 * min(int(k), n) ** 2 * 8 for n, (_, _, _, k) in zip(cand_n, problems)), default=0
    )
    check_merge_memory(need, merge_max_bytes, who)
    from subsetlab.distributed import all_gather_object

    payload = [
        {"A": A[i].cpu(), "w": w.cpu(), "ids": ids[i].cpu(), "scale": totals[p] / max(1, int(A.shape[0]))}
        for p, ((A, ids, _, _), (i, w)) in enumerate(zip(problems, local))
    ]
    parts = all_gather_object(dv, payload)

    def merge(p: int) -> dict[str, Any]:
        A0, _, _, k = problems[p]
        b = bs[p].to(A0.device, A0.dtype)
        cand = torch.cat([parts[r][p]["A"] for r in range(W)]).to(A0.device)
        cand_ids = torch.cat([parts[r][p]["ids"] for r in range(W)])
        m = min(int(k), int(cand.shape[0]))
        if m > 0:
            midx, mw = nn_omp(cand, b, m, lam=lam, eps=eps)
        else:
            midx, mw = torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=A0.dtype)
        options = [(_residual(cand[midx], mw, b), 0, cand_ids[midx.cpu()], mw.cpu())]
        for r in range(W):
            part = parts[r][p]
            if part["A"].shape[0]:
                sw = part["w"] * float(part["scale"])
                options.append((_residual(part["A"].to(A0.device), sw.to(A0.device), b), r + 1, part["ids"], sw))
        best = min(options, key=lambda o: (o[0], o[1]))
        return {
            "ids": best[2], "weights": best[3], "source": "merge" if best[1] == 0 else f"rank {best[1] - 1}",
            "candidates": int(cand.shape[0]), "score": best[0], "merge_score": options[0][0],
            "target_norm": float(b.double().norm()),
        }

    return [GreediResult(**r) for r in _spread(dv, len(problems), merge)]


def _residual(A: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> float:
    """``||b - A^T w|| / ||b||`` in float64 (0 for a zero target)."""
    bb = b.double()
    r = bb - (w.double() @ A.double() if w.numel() else 0.0)
    nb = float(bb.norm())
    return float(r.norm()) / nb if nb > 0 else 0.0
