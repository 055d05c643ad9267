"""Facility location with apricot-select (kept for comparison with the peer libraries).

apricot and numba are imported only inside :func:`facility_location_apricot`.
"""

from __future__ import annotations

from typing import Literal

import torch

from subsetlab.errors import MissingDependencyError
from subsetlab.submodular._base import (
    _APRICOT_OPTIMIZERS,
    FLResult,
    SimilarityKind,
    _candidate_major,
    _check_epsilon,
    _check_k,
    _check_kind,
    _check_optimizer,
    _check_sim,
)
from subsetlab.submodular.similarities import similarity as _similarity

__all__ = ["facility_location_apricot"]


def facility_location_apricot(
    x: torch.Tensor,
    k: int,
    similarity: SimilarityKind | Literal["precomputed"] = "precomputed",
    optimizer: Literal["lazy", "stochastic"] = "lazy",
    epsilon: float = 0.01,
    random_state: int | None = None,
) -> FLResult:
    """Facility location with apricot (``FacilityLocationSelection``, ``metric="precomputed"``).

    The similarity (given, or computed with torch from embeddings) is passed to apricot as a
    dense float64 NumPy array on the CPU; the result is mapped back to an :class:`FLResult` on
    ``x``'s device, with weights, assignment and objective computed here from the similarity.
    Kept for comparison with the peer libraries; the torch solvers are faster.

    Notes:
        * Every ``fit()`` compiles apricot's numba kernels again: about 1-1.5 s per call, so
          many small fits are dominated by compilation.
        * ``n_neighbors=`` (sparse k-NN similarity) is broken on NumPy 2 and is not used. A
          sparse similarity would have to be a ``scipy.sparse.csr_matrix`` with int32
          ``indices``/``indptr`` (apricot's kernels are compiled for int32); this wrapper only
          passes dense arrays.
        * apricot's stochastic greedy defaults to ``epsilon=0.9`` (about one candidate per
          step, near random); this wrapper passes ``epsilon`` (default 0.01) explicitly.
        * apricot breaks ties by its own order, so rankings may differ from the torch solvers
          where gains tie exactly; objectives agree.

    Args:
        x: ``[n, n]`` similarity (``similarity="precomputed"``) or ``[n, d]`` embeddings.
        k: Number of elements to choose (clipped to n).
        similarity: ``"precomputed"``, ``"max_minus_dist"`` or ``"exp"``.
        optimizer: ``"lazy"`` or ``"stochastic"``.
        epsilon: Stochastic greedy's accuracy parameter.
        random_state: Seed for apricot's stochastic greedy (derive it from the run seed).

    Returns:
        :class:`FLResult`.

    Raises:
        MissingDependencyError: apricot-select is not installed.
        ConfigError: bad ``k``, ``similarity``, ``optimizer`` or ``epsilon``.
        DataError: bad shapes, non-finite values, negative similarity.
    """
    k = _check_k(k)
    _check_optimizer(optimizer, _APRICOT_OPTIMIZERS)
    if optimizer == "stochastic":
        _check_epsilon(epsilon)
    if similarity == "precomputed":
        c = _candidate_major(_check_sim(x, 2))
    else:
        _check_kind(similarity)
        c = _similarity(x, similarity)
    try:
        import apricot  # noqa: PLC0415 - optional, heavy (numba)
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise MissingDependencyError(
            "facility_location_apricot needs the package 'apricot-select' (with numba). "
            "Install it with: pip install apricot-select, or use backend='torch'."
        ) from exc
    import numpy as np  # noqa: PLC0415

    n = c.shape[0]
    k = min(k, n)
    dev, dt = c.device, c.dtype
    if k == 0:
        return FLResult(
            torch.zeros(0, dtype=torch.int64, device=dev), torch.zeros(0, dtype=torch.float64, device=dev),
            torch.zeros(0, dtype=dt, device=dev), 0.0, torch.full((n,), -1, dtype=torch.int64, device=dev),
        )
    arr = np.ascontiguousarray(c.detach().to("cpu", torch.float64).numpy())
    kwds = {"epsilon": float(epsilon)} if optimizer == "stochastic" else {}
    sel = apricot.FacilityLocationSelection(
        k, metric="precomputed", optimizer=optimizer, optimizer_kwds=kwds, random_state=random_state
    )
    sel.fit(arr)
    ranking = torch.as_tensor(np.asarray(sel.ranking, dtype=np.int64), device=dev)
    gains = torch.as_tensor(np.asarray(sel.gains, dtype=np.float64), device=dev)
    weights, objective, assign = _weights_of(c, ranking)
    return FLResult(ranking, gains, weights, objective, assign)


def _weights_of(c: torch.Tensor, ranking: torch.Tensor) -> tuple[torch.Tensor, float, torch.Tensor]:
    """Cluster sizes, objective and assignment of a chosen set on candidate-major ``c``."""
    k = ranking.shape[0]
    rows = c.index_select(0, ranking)  # [k, n]
    assign = torch.argmax(rows, dim=0)  # first maximum: earliest chosen among ties
    assign[ranking] = torch.arange(k, device=c.device)
    weights = torch.bincount(assign, minlength=k).to(c.dtype)
    objective = float(rows.amax(0).sum(dtype=torch.float64))
    return weights, objective, assign
