"""Facility location (torch greedy, batched, chunked, apricot) and NN-OMP against plain references."""

from __future__ import annotations

import itertools
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from subsetlab.errors import ConfigError, DataError
from subsetlab.submodular import (
    facility_location,
    facility_location_apricot,
    facility_location_batched,
    facility_location_embeddings,
    nn_omp,
    pack_groups,
    pairwise_distances,
    select_facility_location,
    similarity,
    similarity_batched,
)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def rand_emb(n: int, d: int = 4, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(n, d, generator=gen(seed), dtype=dtype)


# ---------------------------------------------------------------------------------------------
# plain references


def brute_greedy(sim: list[list[float]], k: int) -> tuple[list[int], list[float]]:
    """Naive greedy written out: sim[i][j] between ground i and candidate j; ties -> lowest j."""
    n = len(sim)
    cur = [0.0] * n
    chosen: list[int] = []
    gains: list[float] = []
    for _ in range(min(k, n)):
        best_gain, best_c = None, None
        for c in range(n):
            if c in chosen:
                continue
            g = sum(max(sim[i][c] - cur[i], 0.0) for i in range(n))
            if best_gain is None or g > best_gain:
                best_gain, best_c = g, c
        chosen.append(best_c)
        gains.append(best_gain)
        cur = [max(cur[i], sim[i][best_c]) for i in range(n)]
    return chosen, gains


def brute_weights(sim: list[list[float]], chosen: list[int]) -> list[int]:
    """Cluster sizes: each i goes to its most similar chosen j (earliest on ties; itself if chosen)."""
    w = [0] * len(chosen)
    for i in range(len(sim)):
        if i in chosen:
            w[chosen.index(i)] += 1
            continue
        best = 0
        for t, j in enumerate(chosen):
            if sim[i][j] > sim[i][chosen[best]]:
                best = t
        w[best] += 1
    return w


def objective(sim: torch.Tensor, chosen) -> float:
    return float(sim[:, list(chosen)].double().amax(1).sum())


# ---------------------------------------------------------------------------------------------
# similarity


def test_similarity_hand_computed_three_points():
    # distances: d(0,1)=3, d(0,2)=4, d(1,2)=5
    x = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]])
    dist = torch.tensor([[0.0, 3.0, 4.0], [3.0, 0.0, 5.0], [4.0, 5.0, 0.0]])
    assert torch.allclose(pairwise_distances(x), dist, atol=1e-5)
    expected = torch.tensor([[5.0, 2.0, 1.0], [2.0, 5.0, 0.0], [1.0, 0.0, 5.0]])
    assert torch.allclose(similarity(x, "max_minus_dist"), expected, atol=1e-5)
    assert torch.allclose(similarity(x, "exp"), torch.exp(-dist / 2.0), atol=1e-6)


@pytest.mark.parametrize("kind", ["max_minus_dist", "exp"])
def test_similarity_nonnegative_symmetric_with_max_diagonal(kind):
    s = similarity(rand_emb(40, 6, seed=1) * 10, kind)
    assert (s >= 0).all()
    assert torch.allclose(s, s.T, atol=1e-5)
    assert torch.equal(s.diagonal(), s.amax(1))


@pytest.mark.parametrize("kind", ["max_minus_dist", "exp"])
def test_similarity_batched_matches_single_and_zeroes_padding(kind):
    x = torch.randn(3, 9, 4, generator=gen(2))
    mask = torch.ones(3, 9, dtype=torch.bool)
    mask[1, 6:] = False
    mask[2, ::2] = False
    x[~mask] = 1e3  # padding must not enter max_dist
    s = similarity_batched(x, mask, kind)
    for p in range(3):
        v = mask[p]
        ref = similarity(x[p][v], kind)
        assert torch.allclose(s[p][v][:, v], ref, atol=1e-5)
        assert (s[p][~v] == 0).all() and (s[p][:, ~v] == 0).all()


# ---------------------------------------------------------------------------------------------
# single-problem greedy


@pytest.mark.parametrize("optimizer", ["naive", "lazy"])
@pytest.mark.parametrize("seed", range(5))
def test_greedy_matches_brute_force(optimizer, seed):
    n, k = 12, 5
    sim = similarity(rand_emb(n, 3, seed=seed))
    res = facility_location(sim, k, optimizer)
    ranking, gains = brute_greedy(sim.double().tolist(), k)
    assert res.ranking.tolist() == ranking
    assert np.allclose(res.gains.numpy(), gains, rtol=0, atol=1e-6)
    assert res.weights.tolist() == brute_weights(sim.tolist(), ranking)
    assert res.weights.sum() == n
    assert math.isclose(res.objective, objective(sim, ranking), abs_tol=1e-5)


@pytest.mark.parametrize("optimizer", ["naive", "lazy"])
def test_greedy_asymmetric_similarity_uses_columns_as_candidates(optimizer):
    sim = torch.rand(10, 10, generator=gen(3))  # sim[i, j]: ground i, candidate j
    res = facility_location(sim, 4, optimizer)
    ranking, gains = brute_greedy(sim.double().tolist(), 4)
    assert res.ranking.tolist() == ranking
    assert np.allclose(res.gains.numpy(), gains, atol=1e-6)


@pytest.mark.parametrize("optimizer", ["naive", "lazy"])
def test_greedy_ties_go_to_lowest_index(optimizer):
    # integer similarities with many exact ties; the brute force is exact on them
    sim = torch.randint(0, 3, (11, 11), generator=gen(4)).float()
    sim = sim + sim.T
    res = facility_location(sim, 11, optimizer)
    ranking, gains = brute_greedy(sim.tolist(), 11)
    assert res.ranking.tolist() == ranking
    assert res.gains.tolist() == gains


def test_lazy_equals_naive_exactly_on_a_larger_problem():
    sim = similarity(rand_emb(400, 10, seed=5))
    a = facility_location(sim, 80, "naive")
    b = facility_location(sim, 80, "lazy")
    assert torch.equal(a.ranking, b.ranking)
    assert torch.equal(a.gains, b.gains)
    assert torch.equal(a.weights, b.weights)


@pytest.mark.parametrize("seed", range(6))
def test_greedy_within_one_minus_inverse_e_of_optimum(seed):
    n, k = 10, 3
    sim = similarity(rand_emb(n, 2, seed=10 + seed), "exp")
    best = max(objective(sim, c) for c in itertools.combinations(range(n), k))
    for opt in ("naive", "lazy"):
        res = facility_location(sim, k, opt)
        assert res.objective >= (1 - 1 / math.e) * best - 1e-9
        assert res.objective <= best + 1e-5


def test_k_zero_and_k_at_least_n():
    sim = similarity(rand_emb(7, seed=6))
    empty = facility_location(sim, 0)
    assert empty.ranking.numel() == 0 and empty.weights.numel() == 0 and empty.objective == 0.0
    for opt in ("naive", "lazy"):
        full = facility_location(sim, 50, opt)
        assert sorted(full.ranking.tolist()) == list(range(7))
        assert torch.equal(full.weights, torch.ones(7))
        assert math.isclose(full.objective, float(sim.diagonal().double().sum()), rel_tol=1e-6)


def test_weights_count_duplicates_once_chosen_elements_count_themselves():
    x = torch.tensor([[0.0, 0.0], [0.0, 0.0], [10.0, 0.0], [10.0, 1.0]])
    res = facility_location(similarity(x), 4, "lazy")
    assert res.weights.tolist() == [1.0, 1.0, 1.0, 1.0]  # duplicates chosen -> each >= 1
    res = facility_location(similarity(x), 2, "lazy")
    assert sorted(res.weights.tolist()) == [2.0, 2.0]


def greedy_gaps(sim: torch.Tensor, ranking: list[int]) -> list[float]:
    """Per step: (best gain - chosen gain, best gain - second best gain), float64, on ``sim``."""
    s = sim.double()
    cur = torch.zeros(s.shape[0], dtype=torch.float64)
    out = []
    for t, j in enumerate(ranking):
        g = (s - cur[:, None]).clamp(min=0).sum(0)
        g[ranking[:t]] = -1.0
        top = g.topk(2).values
        out.append((float(top[0] - g[j]), float(top[0] - top[1])))
        cur = torch.maximum(cur, s[:, j])
    return out


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_permuting_the_ground_set_permutes_the_selection(seed):
    # Symmetric facility location has exact ties (two points that only cover each other have
    # equal gains), which the lowest-index rule breaks differently after a permutation. So: the
    # permuted run, mapped back, must be a valid greedy sequence of the original problem, with
    # the same objective; where no step has a tie it must be exactly the same sequence.
    x = rand_emb(60, 5, seed=seed)
    perm = torch.randperm(60, generator=gen(100 + seed))
    a = facility_location_embeddings(x, 12)
    b = facility_location_embeddings(x[perm], 12)
    mapped = perm[b.ranking].tolist()
    sim = similarity(x)
    gaps = greedy_gaps(sim, mapped)
    assert all(chosen_gap <= 1e-5 for chosen_gap, _ in gaps)
    assert math.isclose(a.objective, b.objective, rel_tol=1e-6)
    assert sorted(a.weights.tolist()) == sorted(b.weights.tolist()) or min(g for _, g in gaps) < 1e-5
    if min(g for _, g in greedy_gaps(sim, a.ranking.tolist())) > 1e-4:  # no near-ties (seeds 0, 2)
        assert mapped == a.ranking.tolist()
        assert torch.equal(a.weights, b.weights)
    # and the assignment maps along
    if mapped == a.ranking.tolist():
        assert torch.equal(b.assignment, a.assignment[perm])


def test_permutation_test_covers_a_tie_free_case():
    x = rand_emb(60, 5, seed=0)
    a = facility_location_embeddings(x, 12)
    assert min(g for _, g in greedy_gaps(similarity(x), a.ranking.tolist())) > 1e-4


def test_stochastic_greedy_is_deterministic_for_a_generator():
    sim = similarity(rand_emb(200, 5, seed=9))
    a = facility_location(sim, 20, "stochastic", generator=gen(1))
    b = facility_location(sim, 20, "stochastic", generator=gen(1))
    c = facility_location(sim, 20, "stochastic", generator=gen(2))
    assert torch.equal(a.ranking, b.ranking) and torch.equal(a.gains, b.gains)
    assert not torch.equal(a.ranking, c.ranking)
    assert len(set(a.ranking.tolist())) == 20 and a.weights.sum() == 200
    lazy = facility_location(sim, 20, "lazy")
    assert a.objective >= 0.95 * lazy.objective
    with pytest.raises(ConfigError, match="generator"):
        facility_location(sim, 20, "stochastic")


@pytest.mark.parametrize("kind", ["max_minus_dist", "exp"])
@pytest.mark.parametrize("optimizer", ["naive", "lazy"])
def test_chunked_path_equals_materialised(kind, optimizer):
    x = rand_emb(40, 6, seed=11)
    full = facility_location(similarity(x, kind), 8, optimizer)
    tiny = facility_location_embeddings(x, 8, kind, optimizer, max_bytes=4 * 40 * 7)  # 3-row chunks
    assert torch.equal(full.ranking, tiny.ranking)
    assert torch.allclose(full.gains, tiny.gains, rtol=1e-5)
    assert torch.equal(full.weights, tiny.weights)
    assert math.isclose(full.objective, tiny.objective, rel_tol=1e-6)


def test_chunked_stochastic_is_deterministic_and_valid():
    x = rand_emb(80, 4, seed=12)
    a = facility_location_embeddings(x, 10, optimizer="stochastic", generator=gen(3), max_bytes=2000)
    b = facility_location_embeddings(x, 10, optimizer="stochastic", generator=gen(3), max_bytes=2000)
    assert torch.equal(a.ranking, b.ranking) and a.weights.sum() == 80


# ---------------------------------------------------------------------------------------------
# batched


def test_batched_equals_per_problem_with_masks_and_per_problem_k():
    P, n = 6, 11
    sims = torch.zeros(P, n, n)
    mask = torch.ones(P, n, dtype=torch.bool)
    valid = [11, 9, 5, 11, 3, 8]
    for p, v in enumerate(valid):
        mask[p, v:] = False
        sims[p, :v, :v] = similarity(rand_emb(v, 3, seed=20 + p))
    k = torch.tensor([4, 9, 7, 1, 0, 3])  # 9 and 7 exceed their valid counts: select all
    res = facility_location_batched(sims, k, mask, similarity="precomputed")
    assert res.n_selected.tolist() == [4, 9, 5, 1, 0, 3]
    assert res.ranking.shape == (P, 9)
    for p, v in enumerate(valid):
        ref = facility_location(sims[p, :v, :v], int(k[p]), "naive")
        m = ref.ranking.numel()
        assert torch.equal(res.ranking[p, :m], ref.ranking)
        assert (res.ranking[p, m:] == -1).all() and (res.weights[p, m:] == 0).all()
        assert torch.allclose(res.gains[p, :m], ref.gains, rtol=1e-12, atol=1e-12)
        assert torch.equal(res.weights[p, :m], ref.weights)
        assert math.isclose(float(res.objective[p]), ref.objective, rel_tol=1e-12, abs_tol=1e-12)
        assert torch.equal(res.assignment[p, :v], ref.assignment)
        assert (res.assignment[p, v:] == -1).all()
        assert res.weights[p].sum() == (v if k[p] > 0 else 0)


@pytest.mark.parametrize("kind", ["max_minus_dist", "exp"])
def test_batched_from_embeddings_matches_single(kind):
    x = torch.randn(5, 20, 4, generator=gen(30))
    mask = torch.rand(5, 20, generator=gen(31)) > 0.3
    res = facility_location_batched(x, 6, mask, similarity=kind)
    for p in range(5):
        ref = facility_location_embeddings(x[p][mask[p]], 6, kind, "naive")
        pos = mask[p].nonzero().squeeze(1)
        m = ref.ranking.numel()
        assert res.ranking[p, :m].tolist() == pos[ref.ranking].tolist()
        assert torch.allclose(res.gains[p, :m], ref.gains, rtol=1e-5)
        assert torch.equal(res.weights[p, :m], ref.weights)


def test_batched_memory_groups_do_not_change_results():
    x = torch.randn(7, 15, 3, generator=gen(32))
    a = facility_location_batched(x, 4)
    b = facility_location_batched(x, 4, max_bytes=1)  # one problem per group
    assert torch.equal(a.ranking, b.ranking) and torch.equal(a.weights, b.weights)


def test_pack_groups_and_flat_round_trip():
    groups = torch.tensor([2, 0, 2, 1, 0, 2, 2])
    index, mask = pack_groups(groups)
    assert index.tolist() == [[1, 4, -1, -1], [3, -1, -1, -1], [0, 2, 5, 6]]
    assert torch.equal(mask, index >= 0)
    x = torch.randn(7, 3, generator=gen(33))
    res = facility_location_batched(x[index.clamp(min=0)], torch.tensor([1, 1, 2]), mask)
    ids, w, prob = res.flat(index)
    assert prob.tolist() == [0, 1, 2, 2]
    assert (groups[ids] == prob).all()
    assert w.sum() == 7


# ---------------------------------------------------------------------------------------------
# apricot backend (each fit pays numba compilation: ~1-1.5 s)


def test_apricot_matches_torch_objective_and_ranking():
    # one fit only (each pays numba compilation), through the dispatch strategies use
    x = rand_emb(12, 3, seed=40)
    ours = facility_location(similarity(x), 5, "lazy")
    theirs = select_facility_location(x, 5, backend="apricot", similarity="max_minus_dist")
    assert abs(theirs.objective - ours.objective) <= 1e-6 * max(1.0, ours.objective)
    assert theirs.ranking.tolist() == ours.ranking.tolist()
    assert np.allclose(theirs.gains.numpy(), ours.gains.numpy(), atol=1e-5)
    assert torch.equal(theirs.weights, ours.weights) and theirs.weights.sum() == 12


def test_import_does_not_load_apricot_or_numba():
    code = "import sys, subsetlab.submodular; sys.exit(int('apricot' in sys.modules or 'numba' in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


# ---------------------------------------------------------------------------------------------
# NN-OMP


def nnls_greedy_reference(A: np.ndarray, b: np.ndarray, k: int, lam: float, eps: float):
    """Greedy NN-OMP with scipy's NNLS on the support plus the new atom at every step."""
    from scipy.optimize import nnls

    S: list[int] = []
    x = np.zeros(0)
    r = b.copy()
    drops = 0
    while len(S) < k:
        if np.linalg.norm(r) < eps * np.linalg.norm(b):
            break
        p = A @ r
        p[S] = -np.inf
        j = int(np.argmax(p))
        if p[j] <= 0:
            break
        T = S + [j]
        M = np.vstack([A[T].T, math.sqrt(lam) * np.eye(len(T))])
        xt, _ = nnls(M, np.concatenate([b, np.zeros(len(T))]), maxiter=1000)
        S = [T[i] for i in range(len(T)) if xt[i] > 0]
        x = xt[xt > 0]
        drops += len(T) - len(S)
        r = b - A[S].T @ x
    return S, x, drops


@pytest.mark.parametrize("lam", [1e-9, 0.5])
def test_nn_omp_matches_scipy_nnls_greedy(lam):
    total_drops = 0
    for seed in range(12):
        rng = np.random.default_rng(seed)
        n, d, k = 16, 7, 6
        base = rng.standard_normal((4, d))
        A = rng.standard_normal((n, 4)) @ base + 0.3 * rng.standard_normal((n, d))  # correlated atoms
        b = rng.standard_normal(d) + A[:3].sum(0)
        S, x, drops = nnls_greedy_reference(A, b, k, lam, 1e-4)
        total_drops += drops
        idx, w = nn_omp(torch.from_numpy(A), torch.from_numpy(b), k, lam=lam, eps=1e-4)
        assert idx.tolist() == S, f"seed {seed}"
        assert np.allclose(w.numpy(), x, rtol=1e-7, atol=1e-9), f"seed {seed}"
    assert total_drops > 0  # the non-negativity path was exercised


def test_nn_omp_invariants_and_exact_recovery():
    g = gen(50)
    A = torch.randn(200, 30, generator=g)
    b = A[[3, 17, 42]].T @ torch.tensor([1.0, 2.0, 0.5])
    idx, w = nn_omp(A, b, 10, lam=0.0, eps=1e-4)
    assert sorted(idx.tolist()) == [3, 17, 42]  # stops once the residual vanishes
    order = idx.argsort()
    assert torch.allclose(w[order], torch.tensor([1.0, 2.0, 0.5]), atol=1e-4)
    b2 = torch.randn(30, generator=g)
    idx, w = nn_omp(A, b2, 12, lam=0.5)
    assert 0 < idx.numel() <= 12 and len(set(idx.tolist())) == idx.numel()
    assert (w > 0).all() and w.dtype == A.dtype and idx.dtype == torch.int64
    assert nn_omp(A, torch.zeros(30), 5)[0].numel() == 0
    assert nn_omp(A, b2, 0)[0].numel() == 0


def test_nn_omp_without_positivity_is_ridge_omp():
    rng = np.random.default_rng(3)
    A = rng.standard_normal((20, 8))
    b = rng.standard_normal(8)
    lam = 0.3
    S, r = [], b.copy()
    for _ in range(5):
        p = np.abs(A @ r)
        p[S] = -np.inf
        S.append(int(np.argmax(p)))
        AS = A[S]
        x = np.linalg.solve(AS @ AS.T + lam * np.eye(len(S)), AS @ b)
        r = b - AS.T @ x
    idx, w = nn_omp(torch.from_numpy(A), torch.from_numpy(b), 5, lam=lam, eps=0.0, positive=False)
    assert idx.tolist() == S
    assert np.allclose(w.numpy(), x, atol=1e-10)


# ---------------------------------------------------------------------------------------------
# errors


def test_errors_name_the_problem():
    x = rand_emb(5)
    with pytest.raises(ConfigError, match="similarity kind"):
        similarity(x, "cosine")
    with pytest.raises(ConfigError, match="optimizer"):
        facility_location(similarity(x), 2, "greedy")
    with pytest.raises(ConfigError, match="k must be"):
        facility_location(similarity(x), -1)
    with pytest.raises(ConfigError, match="backend"):
        select_facility_location(x, 2, backend="submodlib")
    with pytest.raises(ConfigError, match="epsilon"):
        facility_location(similarity(x), 2, "stochastic", epsilon=0.0, generator=gen(0))
    with pytest.raises(DataError, match="NaN"):
        facility_location_embeddings(torch.full((4, 2), float("nan")), 2)
    with pytest.raises(DataError, match="non-negative"):
        facility_location(-torch.ones(3, 3), 1)
    with pytest.raises(DataError, match="shape"):
        nn_omp(torch.ones(3, 4), torch.ones(5), 2)
    with pytest.raises(ConfigError, match="lam"):
        nn_omp(torch.ones(3, 4), torch.ones(4), 2, lam=-1.0)


# ---------------------------------------------------------------------------------------------
# pruned sparse phase (normally only for n >= 1024; forced here on small problems)


@pytest.fixture
def force_pruning(monkeypatch):
    from subsetlab.submodular import oracles

    monkeypatch.setattr(oracles, "_SPARSE_MIN_N", 1)
    monkeypatch.setattr(oracles, "_SPARSE_CHUNK", 64)  # several groups per sparse evaluation


@pytest.mark.parametrize("kind", ["max_minus_dist", "exp"])
def test_pruned_greedy_is_valid_and_naive_equals_lazy(force_pruning, kind):
    x = rand_emb(150, 3, seed=60)
    sim = similarity(x, kind)
    naive = facility_location(sim, 40, "naive")
    lazy = facility_location(sim, 40, "lazy")
    assert torch.equal(naive.ranking, lazy.ranking)
    assert torch.equal(naive.gains, lazy.gains)
    assert torch.equal(naive.weights, lazy.weights)
    # a valid greedy sequence (exact ties may be broken by rounding, so no brute-force order)
    gaps = greedy_gaps(sim, naive.ranking.tolist())
    assert all(chosen_gap <= 1e-5 for chosen_gap, _ in gaps)
    assert math.isclose(naive.objective, objective(sim, naive.ranking.tolist()), rel_tol=1e-6)
    assert naive.weights.sum() == 150 and (naive.weights >= 1).all()
    # on-the-fly rows round a few distances differently: the same up to exact ties
    chunked = facility_location_embeddings(x, 40, kind, "lazy", max_bytes=150 * 4 * 20)
    assert all(chosen_gap <= 1e-5 for chosen_gap, _ in greedy_gaps(sim, chunked.ranking.tolist()))
    assert math.isclose(chunked.objective, lazy.objective, rel_tol=1e-6)
    assert chunked.weights.sum() == 150


def test_pruned_stochastic_is_deterministic(force_pruning):
    sim = similarity(rand_emb(120, 3, seed=61))
    a = facility_location(sim, 30, "stochastic", generator=gen(5))
    b = facility_location(sim, 30, "stochastic", generator=gen(5))
    assert torch.equal(a.ranking, b.ranking) and a.weights.sum() == 120


# ------------------------------------------------------------------------ ground weights (GreeDi merge)


@pytest.mark.parametrize("optimizer", ["naive", "lazy"])
def test_ground_weights_equal_repeating_each_ground_element(optimizer: str):
    """F(S) = sum_i w_i max_j sim[i, j] with integer w is facility location on a ground set
    where element i appears w_i times (the candidates unchanged)."""
    g = torch.Generator().manual_seed(11)
    x = torch.randn(25, 3, generator=g, dtype=torch.float64)
    w = torch.randint(1, 5, (25,), generator=g)
    sim = similarity(x)
    weighted = facility_location(sim, 6, optimizer, ground_weights=w.double())
    # the repeated ground set: rows of sim repeated, candidates are still the 25 originals;
    # brute-force greedy on it (gains of every remaining candidate each step)
    rep = sim.repeat_interleave(w, dim=0)  # [sum w, 25]
    cur = torch.zeros(rep.shape[0], dtype=torch.float64)
    picked: list[int] = []
    for _ in range(6):
        gains = (rep - cur[:, None]).clamp(min=0).sum(0)
        gains[picked] = float("-inf")
        j = int(torch.argmax(gains))
        picked.append(j)
        cur = torch.maximum(cur, rep[:, j])
    assert weighted.ranking.tolist() == picked
    assert weighted.objective == pytest.approx(float(cur.sum()), rel=1e-12)
    nearest = torch.argmax(sim[:, weighted.ranking], dim=1)
    nearest[weighted.ranking] = torch.arange(6)
    assert weighted.weights.tolist() == torch.bincount(nearest, weights=w.double(), minlength=6).tolist()
    assert float(weighted.weights.sum()) == float(w.sum())
    ones = facility_location(sim, 6, optimizer, ground_weights=torch.ones(25, dtype=torch.float64))
    plain = facility_location(sim, 6, optimizer)
    assert ones.ranking.tolist() == plain.ranking.tolist() and ones.weights.tolist() == plain.weights.tolist()


def test_ground_weights_are_checked():
    sim = similarity(torch.randn(5, 2, dtype=torch.float64))
    with pytest.raises(DataError, match=r"ground_weights must have shape \[n\] = \[5\]"):
        facility_location(sim, 2, ground_weights=torch.ones(4))
    with pytest.raises(DataError, match="ground_weights must be > 0"):
        facility_location(sim, 2, ground_weights=torch.tensor([1.0, 0.0, 1.0, 1.0, 1.0]))
