"""Facility location's public solvers (torch): one problem, one from embeddings, many at once.

:func:`select_facility_location` dispatches between them and the apricot backend by config
strings. Each solver builds a gain oracle (:mod:`subsetlab.submodular.oracles`) and runs the
optimizer named by ``optimizer`` on it (:mod:`subsetlab.submodular.greedy`).
"""

from __future__ import annotations

from typing import Literal

import torch

from subsetlab.errors import ConfigError, DataError
from subsetlab.submodular._base import (
    _APRICOT_OPTIMIZERS,
    _BACKENDS,
    DEFAULT_MAX_BYTES,
    Backend,
    FLBatchResult,
    FLResult,
    Optimizer,
    SimilarityKind,
    _as_float,
    _candidate_major,
    _check_embeddings,
    _check_epsilon,
    _check_finite,
    _check_k,
    _check_kind,
    _check_max_bytes,
    _check_optimizer,
    _check_sim,
    _need_generator,
)
from subsetlab.submodular.apricot_backend import facility_location_apricot
from subsetlab.submodular.greedy import (
    SubsetSampler,
    lazy_greedy,
    naive_greedy,
    stochastic_greedy,
    stochastic_sample_size,
)
from subsetlab.submodular.oracles import BatchedFLOracle, FLOracle, _DenseRows, _EmbeddingRows, _rows_per_chunk
from subsetlab.submodular.similarities import _check_mask, _fill_similarity, similarity_batched

__all__ = [
    "facility_location",
    "facility_location_embeddings",
    "facility_location_batched",
    "pack_groups",
    "select_facility_location",
]


def _check_greedy_args(
    k: int,
    kind: str | None,
    optimizer: str,
    epsilon: float,
    generator: torch.Generator | None,
    max_bytes: int,
) -> int:
    """Check the arguments of the torch greedy solvers, in order; returns ``k`` as an int."""
    k = _check_k(k)
    if kind is not None:
        _check_kind(kind)
    _check_optimizer(optimizer)
    _check_max_bytes(max_bytes)
    if optimizer == "stochastic":
        _check_epsilon(epsilon)
        _need_generator(generator)
    return k


def _greedy(
    rows: _DenseRows,
    k: int,
    optimizer: str,
    epsilon: float,
    generator: torch.Generator | None,
    chunk: int,
    max_bytes: int,
) -> FLResult:
    """Greedy FL on a candidate-row source; see :func:`facility_location`."""
    k = min(k, rows.n)
    oracle = FLOracle(rows, k, chunk, max_bytes)
    if optimizer == "naive":
        naive_greedy(oracle, k)
    elif optimizer == "lazy":
        lazy_greedy(oracle, k)
    else:
        sampler = SubsetSampler(oracle.avail, stochastic_sample_size(rows.n, k, epsilon), generator)
        stochastic_greedy(oracle, k, sampler)
    return oracle.result()


def facility_location(
    sim: torch.Tensor,
    k: int,
    optimizer: Optimizer = "lazy",
    epsilon: float = 0.01,
    generator: torch.Generator | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    ground_weights: torch.Tensor | None = None,
) -> FLResult:
    """Greedy facility location on a precomputed similarity matrix.

    * ``"naive"``: every step computes the gain of all remaining candidates at once,
      ``sum_i relu(sim[i, c] - cur[i])`` (vectorised, chunked over candidates so the temporaries
      stay under ``max_bytes``).
    * ``"lazy"`` (Minoux): keeps stale gains as upper bounds and re-evaluates only the
      candidates whose bound could still win; returns exactly the ranking and gains of
      ``"naive"`` (same tie-breaking, same float64 accumulation), usually far faster.
    * ``"stochastic"`` (Mirzasoleiman et al., 2015): each step samples
      ``ceil(n / k * log(1 / epsilon))`` of the remaining candidates with ``generator`` and
      takes the best. With ``epsilon=0.01`` this is close to lazy greedy; note that apricot's
      default ``epsilon=0.9`` samples ~``0.1 n / k`` candidates, about one per step when
      ``k ~ n / 10``, which is hardly better than random selection.

    Ties go to the lowest index. ``k >= n`` selects every element (in greedy order).

    Large problems (``n >= 1024``) switch, once at most 5% of the similarity entries can still
    raise ``cur``, to a pruned sparse copy holding only those entries (re-pruned as ``cur``
    grows, never larger than ``max_bytes``); later steps then touch a small fraction of the
    matrix. This changes no choice: naive and lazy greedy prune at the same steps and still
    agree exactly.

    Args:
        sim: ``[n, n]`` non-negative similarity, ``sim[i, j]`` between ground element ``i``
            and candidate ``j``.
        k: Number of elements to choose.
        optimizer: ``"naive"``, ``"lazy"`` or ``"stochastic"``.
        epsilon: Stochastic greedy's accuracy parameter, in (0, 1).
        generator: Required for ``"stochastic"``; its device may differ from ``sim``'s.
        max_bytes: Cap on the temporary memory of one candidate chunk and on the pruned copy.
        ground_weights: Optional ``[n]`` positive weights of the ground elements: the
            objective becomes ``F(S) = sum_i w_i max_{j in S} sim[i, j]`` (a ground element
            standing for ``w_i`` others, as a candidate of a GreeDi merge stands for its
            cluster), and the result's ``weights`` are the sums of the ground weights each
            chosen element represents (they sum to ``sum_i w_i``). The choices equal those of
            the unweighted greedy when all weights are equal.

    Returns:
        :class:`FLResult` with ``ranking``, ``gains``, ``weights`` (cluster sizes summing to n),
        ``objective`` and ``assignment``.

    Raises:
        ConfigError: bad ``k``, ``optimizer``, ``epsilon`` or missing generator.
        DataError: ``sim`` not square, not finite or negative; ``ground_weights`` not ``[n]``,
            not finite or not positive.
    """
    k = _check_greedy_args(k, None, optimizer, epsilon, generator, max_bytes)
    sim = _check_sim(sim, 2)
    c = _candidate_major(sim)
    w = None
    if ground_weights is not None:
        w = _as_float(torch.as_tensor(ground_weights), "ground_weights").to(device=c.device, dtype=c.dtype)
        if w.shape != (c.shape[0],):
            raise DataError(
                f"ground_weights must have shape [n] = [{c.shape[0]}] (one per ground element). "
                f"Got {tuple(w.shape)} instead."
            )
        _check_finite(w, "ground_weights")
        if w.numel() and float(w.min()) <= 0:
            raise DataError(f"ground_weights must be > 0. Got minimum {float(w.min()):.4g} instead.")
        c = c * w.unsqueeze(0)  # candidate-major: c[j, i] = w_i sim[i, j]
    chunk = _rows_per_chunk(c.shape[0], c.element_size(), max_bytes)
    res = _greedy(_DenseRows(c), k, optimizer, float(epsilon), generator, chunk, max_bytes)
    if w is not None and res.ranking.numel():
        res.weights = torch.bincount(res.assignment, weights=w, minlength=res.ranking.shape[0]).to(c.dtype)
    return res


def facility_location_embeddings(
    x: torch.Tensor,
    k: int,
    similarity: SimilarityKind = "max_minus_dist",
    optimizer: Optimizer = "lazy",
    epsilon: float = 0.01,
    generator: torch.Generator | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> FLResult:
    """Greedy facility location on the similarity of embeddings, within a memory cap.

    If the ``[n, n]`` similarity fits in ``max_bytes`` it is materialised once (same as
    ``facility_location(similarity(x, kind), ...)``). Otherwise it is never materialised:
    similarity rows are computed from the embeddings on the fly, for the candidates each step
    needs, in chunks of at most ``max_bytes``; only the ``[n]`` vector of current maxima and
    the ``[n]`` gain bounds persist, plus the pruned sparse copy of the live entries once it fits
    ``max_bytes`` (see :func:`facility_location`). ``"lazy"`` is by far the best optimizer in
    that mode; ``"naive"`` recomputes all ``n^2`` similarities every step until the pruned copy
    takes over. ``"max_minus_dist"`` costs one extra pass to find the maximum distance. Results
    equal the materialised path's up to float rounding of the distances (the same ranking in
    practice; exact ties may break differently).

    Args:
        x: ``[n, d]`` embeddings.
        k: Number of elements to choose.
        similarity: ``"max_minus_dist"`` or ``"exp"`` (see :func:`similarity`).
        optimizer: ``"naive"``, ``"lazy"`` or ``"stochastic"`` (see :func:`facility_location`).
        epsilon: Stochastic greedy's accuracy parameter.
        generator: Required for ``"stochastic"``.
        max_bytes: Cap on the similarity bytes held at once.

    Returns:
        :class:`FLResult` (indices are rows of ``x``).

    Raises:
        ConfigError: bad ``k``, ``similarity``, ``optimizer``, ``epsilon`` or ``max_bytes``.
        DataError: ``x`` not 2-D or not finite.
    """
    k = _check_greedy_args(k, similarity, optimizer, epsilon, generator, max_bytes)
    x = _check_embeddings(x, 2)
    n = x.shape[0]
    itemsize = x.element_size()
    if n * n * itemsize <= max_bytes:
        sim = _fill_similarity(x, similarity, symmetric=False)  # rows are candidates
        chunk = _rows_per_chunk(n, itemsize, max_bytes)
        return _greedy(_DenseRows(sim), k, optimizer, float(epsilon), generator, chunk, max_bytes)
    chunk = _rows_per_chunk(n, itemsize, max_bytes)
    return _greedy(_EmbeddingRows(x, similarity, chunk), k, optimizer, float(epsilon), generator, chunk, max_bytes)


# ----------------------------------------------------------------------------------------------
# batched solver


def facility_location_batched(
    x: torch.Tensor,
    k: torch.Tensor | int,
    mask: torch.Tensor | None = None,
    similarity: SimilarityKind | Literal["precomputed"] = "max_minus_dist",
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> FLBatchResult:
    """Naive greedy facility location on ``P`` small independent problems at once.

    The Python loop runs over the greedy step (``max k`` times); every step advances all
    problems with a handful of batched tensor ops. Each problem gets the same ranking, gains and
    weights as :func:`facility_location` with ``optimizer="naive"`` on its valid rows (gains
    agree to float64 rounding). Used by CREST (P random subsets x C classes per round) and by
    any per-class or per-batch selection of many small ground sets. Problems are processed in
    groups so that the ``[P, n, n]`` similarity and its temporaries stay under ``max_bytes``.

    Args:
        x: ``[P, n, d]`` embeddings, or ``[P, n, n]`` similarities when
            ``similarity="precomputed"`` (``x[p, i, j]`` between ground ``i`` and candidate
            ``j``; non-negative).
        k: Per-problem budgets, ``[P]`` int tensor or one int; clipped to each problem's number
            of valid rows.
        mask: ``[P, n]`` bool, True for valid rows; padding rows are neither chosen nor counted.
        similarity: ``"max_minus_dist"``, ``"exp"`` or ``"precomputed"``.
        max_bytes: Cap on the bytes of similarity (plus temporaries) per group of problems.

    Returns:
        :class:`FLBatchResult` padded to ``K = max k`` with ``-1`` indices and 0 weights.

    Raises:
        ConfigError: bad ``k``, ``similarity`` or ``max_bytes``.
        DataError: bad shapes, non-finite values, negative precomputed similarity.
    """
    _check_max_bytes(max_bytes)
    if similarity == "precomputed":
        x = _check_sim(x, 3)
    else:
        _check_kind(similarity)
        x = _check_embeddings(x, 3)
    P, n = x.shape[0], x.shape[1]
    dev = x.device
    if mask is None:
        mask = torch.ones(P, n, dtype=torch.bool, device=dev)
    mask = _check_mask(mask.to(dev), P, n)
    kt = _batched_k(k, P, dev)
    k_eff = torch.minimum(kt, mask.sum(1))
    K = int(k_eff.max()) if P else 0
    dt = x.dtype

    ranking = torch.full((P, K), -1, dtype=torch.int64, device=dev)
    gains = torch.zeros(P, K, dtype=torch.float64, device=dev)
    weights = torch.zeros(P, K, dtype=dt, device=dev)
    objective = torch.zeros(P, dtype=torch.float64, device=dev)
    assignment = torch.full((P, n), -1, dtype=torch.int64, device=dev)
    group = max(1, int(max_bytes) // max(1, 3 * n * n * 4))
    for s in range(0, P, group):
        e = min(s + group, P)
        if similarity == "precomputed":
            c = x[s:e].masked_fill(~(mask[s:e].unsqueeze(2) & mask[s:e].unsqueeze(1)), 0.0)
            c = c if torch.equal(c, c.mT) else c.mT.contiguous()
        else:
            c = similarity_batched(x[s:e], mask[s:e], similarity)
        oracle = BatchedFLOracle(c, mask[s:e], k_eff[s:e], K)
        naive_greedy(oracle, K)
        r = oracle.result()
        ranking[s:e], gains[s:e], weights[s:e], objective[s:e], assignment[s:e] = r
    return FLBatchResult(ranking, gains, weights, objective, k_eff, assignment)


def _batched_k(k: torch.Tensor | int, P: int, dev: torch.device) -> torch.Tensor:
    if isinstance(k, torch.Tensor):
        if k.shape != (P,) or k.is_floating_point() or (k.numel() and int(k.min()) < 0):
            raise ConfigError(
                f"k must be one non-negative int or an int tensor of shape {(P,)} (one budget per "
                f"problem). Got a {k.dtype} tensor of shape {tuple(k.shape)} instead."
            )
        return k.to(device=dev, dtype=torch.int64)
    return torch.full((P,), _check_k(k), dtype=torch.int64, device=dev)


def pack_groups(groups: torch.Tensor, num_groups: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad ragged groups (e.g. classes, or random subsets x classes) into a batch.

    Args:
        groups: ``[N]`` int64 group id of each row, in ``[0, num_groups)``.
        num_groups: Number of groups ``G``; ``groups.max() + 1`` when None.

    Returns:
        ``(index, mask)``: ``index`` ``[G, m]`` int64 with the rows of each group in increasing
        order, padded with ``-1`` (``m`` = largest group), and ``mask = index >= 0``. Gather
        embeddings with ``x[index.clamp(min=0)]`` and map results back with
        :meth:`FLBatchResult.flat`.
    """
    if groups.ndim != 1 or groups.is_floating_point():
        raise DataError(f"groups must be a 1-D integer tensor. Got {groups.dtype} of shape {tuple(groups.shape)}.")
    groups = groups.to(torch.int64)
    dev = groups.device
    G = int(groups.max()) + 1 if num_groups is None and groups.numel() else int(num_groups or 0)
    if groups.numel() and (int(groups.min()) < 0 or int(groups.max()) >= G):
        raise DataError(f"group ids must lie in [0, {G}). Got range [{int(groups.min())}, {int(groups.max())}].")
    counts = torch.bincount(groups, minlength=G)
    m = int(counts.max()) if G else 0
    order = torch.argsort(groups, stable=True)
    gs = groups[order]
    starts = torch.cumsum(counts, 0) - counts
    pos = torch.arange(groups.numel(), device=dev) - starts[gs]
    index = torch.full((G, m), -1, dtype=torch.int64, device=dev)
    index[gs, pos] = order
    return index, index >= 0



def select_facility_location(
    x: torch.Tensor,
    k: int,
    backend: Backend = "torch",
    similarity: SimilarityKind | Literal["precomputed"] = "max_minus_dist",
    optimizer: Optimizer = "lazy",
    epsilon: float = 0.01,
    generator: torch.Generator | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> FLResult:
    """One entry point for strategies: facility location by config strings.

    Args:
        x: ``[n, d]`` embeddings, or ``[n, n]`` similarity with ``similarity="precomputed"``.
        k: Number of elements to choose.
        backend: ``"torch"`` (:func:`facility_location_embeddings` /
            :func:`facility_location`) or ``"apricot"`` (:func:`facility_location_apricot`).
        similarity: ``"max_minus_dist"``, ``"exp"`` or ``"precomputed"``.
        optimizer: ``"naive"``, ``"lazy"`` or ``"stochastic"`` (apricot: lazy or stochastic).
        epsilon: Stochastic greedy's accuracy parameter.
        generator: Required for ``"stochastic"``; for apricot a seed is drawn from it.
        max_bytes: Memory cap of the torch backend (see :func:`facility_location_embeddings`).

    Returns:
        :class:`FLResult`.

    Raises:
        ConfigError: unknown backend, similarity or optimizer, or bad values.
        MissingDependencyError: ``backend="apricot"`` without apricot-select installed.
    """
    if backend not in _BACKENDS:
        raise ConfigError(f"The facility-location backend must be one of {list(_BACKENDS)}. Got {backend!r} instead.")
    if similarity != "precomputed":
        _check_kind(similarity)
    if backend == "apricot":
        _check_optimizer(optimizer, _APRICOT_OPTIMIZERS)
        seed = None
        if optimizer == "stochastic":
            _need_generator(generator)
            seed = int(torch.randint(2**31 - 1, (1,), generator=generator, device=generator.device))
        return facility_location_apricot(x, k, similarity, optimizer, epsilon, seed)
    if similarity == "precomputed":
        return facility_location(x, k, optimizer, epsilon, generator, max_bytes)
    return facility_location_embeddings(x, k, similarity, optimizer, epsilon, generator, max_bytes)

