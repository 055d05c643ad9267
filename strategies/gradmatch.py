"""GradMatch: a weighted subset whose gradient sum matches the full gradient (NN-OMP).

Killamsetty et al., "GRAD-MATCH: Gradient Matching based Data Subset Selection for Efficient
Deep Model Training", ICML 2021; a baseline of the CREST paper, with CORDS' defaults.

Choose ``S``, ``|S| <= k``, and weights ``w >= 0`` so that ``sum_{j in S} w_j g_j`` matches a
target gradient, by orthogonal matching pursuit with non-negativity and ridge ``lam``
(:func:`subsetlab.submodular.nn_omp`). The target is the **sum** of the ground set's
gradients (``target="train"``), so weights come out around ``n / k`` (the trainer rescales
them to mean 1); with ``target="val"`` it is the validation set's mean gradient times the
number of atoms the training target would sum (class size, or number of batches), so both
targets live on the same scale and classes keep their relative weight.

Variants (one selection, :func:`gradmatch_selection`):

* ``per_class_per_gradient`` (default; CORDS "PerClassPerGradient"): per class c, the atoms
  are the class members' entries of the bias + weight gradient that belong to class c: the
  bias entry c and the weight row c (``1 + D`` values); target = their sum (or the
  validation class-c gradients'). Budgets proportional to class sizes, summing exactly to k.
* ``per_class``: the same per class, on the whole embedding (``embedding``).
* ``per_batch``: the atoms are the mean embeddings of the mini-batches of a seeded random
  partition into batches of B; ``ceil(k / B)`` batches are chosen, each one training batch
  (batch plan of ``ceil(k / B)`` batches of exactly B rows: the partition's last batch is
  completed with the first rows of the order, :func:`strategies._common.batch_rows`). CORDS
  re-selects per-batch GradMatch every epoch (R = 1, for 200-300 epochs); here its interval is
  relative to the run like the other variants', with about 20 selections per run instead of
  10 (``select_every_fraction`` 0.05: R = 1 for 20 epochs, 10 for 200), which measured better
  (see the method's page).

When OMP stops with fewer atoms than the budget (no atom correlates positively with the
residual any more, or the residual fell under ``eps``), the rest of the budget is filled with
random examples (same class; per batch: random unchosen batches) of weight 1, drawn from
``ctx.generator`` without duplicates; ``diagnostics["random_fill"]`` counts them. (CORDS' CPU
path ignored ``lam`` and ``eps`` and filled ~93% of the per-class subset at random.)
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Literal

import torch
from pydantic import Field, model_validator

from strategies._common import (
    DEFAULT_SELECT_EVERY_FRACTION,
    FREQUENT_SELECT_EVERY_FRACTION,
    GREEDI_NOTE,
    BaselineConfig,
    BaselineStrategy,
    as_float,
    batch_means,
    batch_rows,
    batch_selection,
    bias_weight,
    class_budgets,
    class_gradient_slice,
    class_members,
    clip_weights,
    completed_rows,
    embed,
    greedi_diagnostics,
    greedi_round,
    random_fill,
    shard_items,
    shard_rows,
    val_rows,
)
from subsetlab.config import StrategyConfig
from subsetlab.embeddings import Embeddings
from subsetlab.protocol import Capabilities, Selection, TrainState
from subsetlab.greedi import greedi_nn_omp
from subsetlab.submodular import nn_omp

__all__ = ["GradMatchConfig", "GradMatchStrategy", "gradmatch_selection"]



class GradMatchConfig(BaselineConfig):
    """Config of :class:`GradMatchStrategy` (CORDS' CIFAR-10 defaults unless noted)."""

    name: Literal["gradmatch"] = Field("gradmatch", description="Registered name of the strategy.")
    variant: Literal["per_class_per_gradient", "per_class", "per_batch"] = Field(
        "per_class_per_gradient",
        description="'per_class_per_gradient': per class, the class's bias entry and weight row "
        "(1 + D values; CORDS default); 'per_class': per class, the whole embedding; "
        "'per_batch': atoms are mini-batch mean embeddings, chosen batches become training "
        "batches.",
    )
    embedding: Literal["bias", "bias_weight"] = Field(
        "bias_weight",
        description="Gradient embedding of 'per_class' and 'per_batch': 'bias' (C values) or "
        "'bias_weight' (C + C*D, CORDS default). 'per_class_per_gradient' needs 'bias_weight'.",
    )
    target: Literal["train", "val"] = Field(
        "train",
        description="Gradient to match: the sum over the ground set ('train') or the validation "
        "set's mean gradient scaled to the same number of terms ('val'; needs a validation split).",
    )
    lam: float = Field(0.5, ge=0.0, le=1e6, description="Ridge coefficient lambda of NN-OMP (CORDS 0.5).")
    eps: float = Field(
        1e-100,
        ge=0.0,
        lt=1.0,
        description="Stop OMP once ||residual|| / ||target|| < eps (CORDS 1e-100: in effect only "
        "the budget, or no positively correlated atom, stops it).",
    )
    max_weight: float | None = Field(
        None,
        ge=1.0,
        description="Cap each weight at this multiple of the selection's mean weight before the "
        "trainer's renormalisation (None: OMP weights as they are).",
    )
    repartition: bool = Field(
        False,
        description="per_batch: draw a new random partition into mini-batches at every "
        "selection instead of keeping the first one (CORDS keeps its batches fixed).",
    )

    def default_select_every_fraction(self) -> float:
        """0.05 for ``per_batch`` (about 20 selections per run: every pseudo-epoch of 20, as
        CORDS re-selects per-batch GradMatch every epoch), else 0.1 (about 10).

        Measured on the Fashion-MNIST LeNet protocol (seeds 0, 1): per batch, R = 1 reached
        88.98 / 89.11% against 88.21 / 88.70% with R = 2 (docs/methods/gradmatch.md).
        """
        return FREQUENT_SELECT_EVERY_FRACTION if self.variant == "per_batch" else DEFAULT_SELECT_EVERY_FRACTION

    @model_validator(mode="after")
    def _check_embedding(self) -> GradMatchConfig:
        if self.variant == "per_class_per_gradient" and self.embedding != "bias_weight":
            raise ValueError(
                "variant='per_class_per_gradient' uses the bias entry and weight row of each class "
                "and needs embedding='bias_weight'; use variant='per_class' for embedding='bias'"
            )
        return self


def _atoms(g: torch.Tensor, h: torch.Tensor | None, variant: str, kind: str, c: int) -> torch.Tensor:
    if variant == "per_class_per_gradient":
        return class_gradient_slice(g, h, c)
    return g if kind == "bias" else bias_weight(g, h)


def _mean_atom(g: torch.Tensor, h: torch.Tensor | None, variant: str, kind: str, c: int) -> torch.Tensor:
    """Mean of :func:`_atoms` over the rows, without materialising them for bias + weight."""
    n = g.shape[0]
    if variant == "per_class_per_gradient":
        gc = g[:, c]
        return torch.cat([gc.mean().view(1), gc @ h / n])
    if kind == "bias":
        return g.mean(0)
    return torch.cat([g.mean(0), (g.T @ h).flatten() / n])


class _Omp:
    """NN-OMP of one selection's problems, summing their residuals for the diagnostics."""

    def __init__(self, lam: float, eps: float) -> None:
        self.lam, self.eps = lam, eps
        self.res_sq, self.tgt_sq = 0.0, 0.0

    def __call__(self, A: torch.Tensor, b: torch.Tensor, budget: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx, w = nn_omp(A, b, budget, lam=self.lam, eps=self.eps)
        r = b.double() - (w.double() @ A[idx].double() if idx.numel() else 0.0)
        self.res_sq += float(r @ r)
        self.tgt_sq += float(b.double() @ b.double())
        return idx, w.float()

    @property
    def residual(self) -> float:
        """Relative residual over every problem solved so far."""
        return _rel(self.res_sq, self.tgt_sq)


def _per_batch_selection(
    emb: Embeddings,
    g: torch.Tensor,
    h: torch.Tensor | None,
    k: int,
    batch_size: int,
    config: GradMatchConfig,
    generator: torch.Generator,
    order: torch.Tensor | None,
    val_mean: torch.Tensor | None,
    solve: _Omp,
) -> Selection:
    """The ``per_batch`` variant of :func:`gradmatch_selection` (``val_mean``: the mean
    validation atom when ``target="val"``)."""
    kind = config.embedding
    if order is None:
        order = torch.randperm(g.shape[0], generator=generator)
    rows = batch_rows(order, batch_size)
    A = batch_means(g, h, rows, kind)
    nb = A.shape[0]
    m = min(math.ceil(k / batch_size), nb)
    b = val_mean * nb if val_mean is not None else A.sum(0)
    idx, w = solve(A, b, m)
    fill = random_fill(torch.arange(nb, device=A.device), idx, m - idx.shape[0], generator)
    chosen = torch.cat([idx, fill])
    raw = torch.cat([w, torch.ones(fill.shape[0], device=w.device)])
    weights, clipped = clip_weights(raw, config.max_weight)
    return batch_selection(
        emb.indices, rows, chosen, weights,
        variant="per_batch", batches=int(m), omp_selected=int(idx.shape[0]),
        random_fill=int(fill.shape[0]), residual=solve.residual,
        max_weight_ratio=_ratio(raw), clipped=clipped,
        completed_rows=completed_rows(g.shape[0], batch_size),
    )


def gradmatch_selection(
    emb: Embeddings,
    k: int,
    batch_size: int,
    config: GradMatchConfig,
    generator: torch.Generator,
    val: Embeddings | None = None,
    order: torch.Tensor | None = None,
) -> Selection:
    """One GradMatch selection from precomputed embeddings (no forward pass).

    Args:
        emb: Bias gradients of the ground set (``[n, C]``), labels, dataset indices, and
            ``features`` unless ``config.embedding == "bias"`` with a variant other than
            ``per_class_per_gradient``.
        k: Budget (examples).
        batch_size: B (per-batch variant).
        config: The strategy's config.
        generator: Source of randomness (random fill, a missing ``order``).
        val: Validation embeddings (same kind), required when ``config.target == "val"``.
        order: ``per_batch``: the row order whose chunks of B are the mini-batches.

    Returns:
        The :class:`Selection` with OMP weights (fill examples weight 1) and diagnostics
        ``budgets``, ``omp_selected``, ``random_fill``, ``residual`` (relative, before the fill),
        ``max_weight_ratio``, ``clipped``, ``val_fallback`` (classes without validation
        examples, matched to their training sum instead).
    """
    variant, kind = config.variant, config.embedding
    g = as_float(emb.grads)
    h = as_float(emb.features)
    use_val = config.target == "val"
    if use_val and val is None:
        raise ValueError("target='val' needs the validation embeddings (val=)")
    gv = as_float(val.grads) if use_val else None
    hv = as_float(val.features) if use_val else None
    solve = _Omp(config.lam, config.eps)
    if variant == "per_batch":
        target = _mean_atom(gv, hv, variant, kind, 0) if use_val else None
        return _per_batch_selection(emb, g, h, k, batch_size, config, generator, order, target, solve)

    num_classes = g.shape[1]
    budgets = class_budgets(emb.labels, num_classes, k)
    val_members = class_members(val.labels, num_classes) if use_val else None
    rows, weights = [], []
    n_omp, n_fill, fallback = 0, 0, 0
    for c, members in enumerate(class_members(emb.labels, num_classes)):
        kc = int(budgets[c])
        if kc == 0:
            continue
        hc = h[members] if h is not None else None
        A = _atoms(g[members], hc, variant, kind, c)
        if use_val and val_members[c].numel() > 0:
            vm = val_members[c]
            b = _mean_atom(gv[vm], hv[vm] if hv is not None else None, variant, kind, c) * members.numel()
        else:
            fallback += int(use_val)
            b = A.sum(0)
        idx, w = solve(A, b, kc)
        fill = random_fill(torch.arange(members.numel(), device=members.device), idx, kc - idx.shape[0], generator)
        rows.append(members[torch.cat([idx, fill])])
        weights.append(torch.cat([w, torch.ones(fill.shape[0], device=w.device)]))
        n_omp += int(idx.shape[0])
        n_fill += int(fill.shape[0])
    raw = torch.cat(weights)
    w_all, clipped = clip_weights(raw, config.max_weight)
    diagnostics = {
        "variant": variant,
        "budgets": budgets.tolist(),
        "omp_selected": n_omp,
        "random_fill": n_fill,
        "residual": solve.residual,
        "max_weight_ratio": _ratio(raw),
        "clipped": clipped,
    }
    if use_val:
        diagnostics["val_fallback"] = fallback
    return Selection(emb.indices[torch.cat(rows)].cpu(), w_all.cpu(), None, diagnostics)


def _rel(res_sq: float, tgt_sq: float) -> float:
    return math.sqrt(res_sq / tgt_sq) if tgt_sq > 0 else 0.0


def _ratio(w: torch.Tensor) -> float:
    return float(w.max() / w.double().mean()) if w.numel() else 0.0


_GRADMATCH_NOTE = (
    "GradMatch's NN-OMP (per class, or over mini-batches) runs per shard against the shard's share "
    "of the target. "
    + GREEDI_NOTE
    + "; the merge is NN-OMP over the candidates against the exact whole target."
)


class GradMatchStrategy(BaselineStrategy):
    """GradMatch: non-negative OMP matching the (per-class or per-batch) gradient sum.

    Re-selects every R pseudo-epochs (``select_every``, or by default a tenth of the run, a
    twentieth per batch; after an optional full-data ``warm_start``). Under torchrun the
    selection is GreeDi's (:func:`subsetlab.greedi.greedi_nn_omp`). See
    :mod:`strategies.gradmatch`.
    """

    name = "gradmatch"
    Config = GradMatchConfig
    capabilities = Capabilities(
        needs_validation=False, supports_distributed=True, distributed_note=_GRADMATCH_NOTE, stochastic=True
    )

    @classmethod
    def capabilities_for(cls, config: StrategyConfig) -> Capabilities:
        """The class's capabilities, needing the validation split when ``target="val"``."""
        if getattr(config, "target", "train") == "val":
            return dataclasses.replace(cls.capabilities, needs_validation=True)
        return cls.capabilities

    def select_subset(self, state: TrainState) -> Selection:
        """Embed the training (and validation) set, then :func:`gradmatch_selection` (GreeDi
        across ranks)."""
        ctx, cfg = self.ctx, self.config
        if self.distributed:
            return self._select_greedi(state)
        features = cfg.embedding == "bias_weight"
        emb = embed(ctx, kind="bias", features=features, who=self.name)
        val = embed(ctx, "val", kind="bias", features=features, who=self.name) if cfg.target == "val" else None
        order = self.partition(len(emb), cfg.repartition) if cfg.variant == "per_batch" else None
        with ctx.meters.timer("selection"):
            return gradmatch_selection(emb, ctx.budget.subset_size, self.plan_batch_size(), cfg, ctx.generator, val, order)

    def _val_means(self, atom_sum: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean validation atom of each group (class) over every rank's validation share.

        ``atom_sum(gv, hv, labels)`` returns this rank's ``[groups, dim]`` sums and
        ``[groups]`` counts. Returns the all-reduced means (0 where a group has no example)
        and counts.
        """
        ctx = self.ctx
        features = self.config.embedding == "bias_weight"
        val = embed(ctx, "val", kind="bias", features=features, who=self.name, indices=val_rows(ctx))
        sums, counts = atom_sum(as_float(val.grads), as_float(val.features), val.labels)
        sums = ctx.dist.all_reduce(sums.double(), "sum")
        counts = ctx.dist.all_reduce(counts.double(), "sum")
        return sums / counts.clamp(min=1).unsqueeze(1), counts

    def _select_greedi(self, state: TrainState) -> Selection:
        """GreeDi: NN-OMP on this rank's shard, merged over the ranks' candidate atoms."""
        ctx, cfg = self.ctx, self.config
        dv, n, k = ctx.dist, ctx.budget.n, ctx.budget.subset_size
        variant, kind = cfg.variant, cfg.embedding
        features, use_val = kind == "bias_weight", cfg.target == "val"
        rnd = greedi_round(ctx, self.name, state.step)
        omp = {"lam": cfg.lam, "eps": cfg.eps, "merge_max_bytes": cfg.greedi_max_bytes,
               "oversample": cfg.greedi_oversample, "who": self.name}
        if variant == "per_batch":
            B = self.plan_batch_size()
            rows = batch_rows(self.partition(n, cfg.repartition), B)
            nb = rows.shape[0]
            mine = shard_items(nb, ctx, rnd.shard)
            need = rows[mine].reshape(-1).unique()
            emb = embed(ctx, kind="bias", features=features, who=self.name, indices=need)
            pos = torch.full((n,), -1, dtype=torch.long)
            pos[need] = torch.arange(need.shape[0])
            g, h = as_float(emb.grads), as_float(emb.features) if features else None
            A = batch_means(g, h, pos[rows[mine]], kind)
            m = min(math.ceil(k / B), nb)
            if use_val:
                dim = A.shape[1]

                def val_sum(gv, hv, _labels):
                    if gv.shape[0] == 0:
                        return torch.zeros(1, dim, dtype=A.dtype, device=A.device), torch.zeros(1)
                    return (_mean_atom(gv, hv, variant, kind, 0) * gv.shape[0]).view(1, -1), torch.tensor([gv.shape[0]])

                vmean, _ = self._val_means(val_sum)
            with ctx.meters.timer("selection"):
                b_local = (vmean[0].to(A.dtype) * A.shape[0]) if use_val else A.sum(0)
                (res,) = greedi_nn_omp(dv, [(A, mine, b_local, m)], **omp)
                fill = random_fill(torch.arange(nb), res.ids, m - res.ids.shape[0], rnd.fill)
                chosen = torch.cat([res.ids, fill])
                raw = torch.cat([res.weights.float(), torch.ones(fill.shape[0])])
                weights, clipped = clip_weights(raw, cfg.max_weight)
                return batch_selection(
                    torch.arange(n), rows, chosen, weights,
                    variant="per_batch", batches=int(m), omp_selected=int(res.ids.shape[0]),
                    random_fill=int(fill.shape[0]), residual=res.score, max_weight_ratio=_ratio(raw),
                    clipped=clipped, completed_rows=completed_rows(n, B), **greedi_diagnostics(ctx, [res]),
                )
        emb = embed(ctx, kind="bias", features=features, who=self.name, indices=shard_rows(ctx, rnd.shard))
        g, h = as_float(emb.grads), as_float(emb.features) if features else None
        num_classes = g.shape[1]
        labels_all = ctx.train.labels.cpu()
        dim = _atoms(g[:0], h[:0] if h is not None else None, variant, kind, 0).shape[1]
        if use_val:
            def class_sums(gv, hv, lab):
                sums = torch.zeros(num_classes, dim, dtype=g.dtype, device=g.device)
                for c, vm in enumerate(class_members(lab, num_classes)):
                    if vm.numel():
                        sums[c] = _mean_atom(gv[vm], hv[vm] if hv is not None else None, variant, kind, c) * vm.numel()
                return sums, torch.bincount(lab.cpu(), minlength=num_classes)
            vmean, vcount = self._val_means(class_sums)
        with ctx.meters.timer("selection"):
            budgets = class_budgets(labels_all, num_classes, k)
            problems, classes, fallback = [], [], 0
            for c, members in enumerate(class_members(emb.labels, num_classes)):
                kc = int(budgets[c])
                if kc == 0:  # the same classes on every rank (global budgets)
                    continue
                A = _atoms(g[members], h[members] if h is not None else None, variant, kind, c)
                if use_val and float(vcount[c]) > 0:
                    b_local = vmean[c].to(A.dtype) * members.numel()
                else:
                    fallback += int(use_val)
                    b_local = A.sum(0)
                problems.append((A, emb.indices[members].cpu(), b_local, kc))
                classes.append(c)
            ids, weights, results = [], [], greedi_nn_omp(dv, problems, **omp)
            n_fill, res_sq, tgt_sq = 0, 0.0, 0.0
            for c, res in zip(classes, results):
                kc = int(budgets[c])
                pool = (labels_all == c).nonzero().squeeze(1)
                fill = random_fill(pool, res.ids, kc - res.ids.shape[0], rnd.fill)
                ids.append(torch.cat([res.ids, fill]))
                weights.append(torch.cat([res.weights.float(), torch.ones(fill.shape[0])]))
                n_fill += int(fill.shape[0])
                res_sq += (res.score * res.target_norm) ** 2
                tgt_sq += res.target_norm**2
            raw = torch.cat(weights)
            w_all, clipped = clip_weights(raw, cfg.max_weight)
            diagnostics = {
                "variant": variant,
                "budgets": budgets.tolist(),
                "omp_selected": int(sum(r.ids.shape[0] for r in results)),
                "random_fill": n_fill,
                "residual": _rel(res_sq, tgt_sq),
                "max_weight_ratio": _ratio(raw),
                "clipped": clipped,
                **greedi_diagnostics(ctx, results),
            }
            if use_val:
                diagnostics["val_fallback"] = fallback
            return Selection(torch.cat(ids).cpu(), w_all.cpu(), None, diagnostics)

