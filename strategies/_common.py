"""Pieces shared by the CREST paper's baselines (CRAIG, GradMatch, Glister).

One place for: the epoch-wise schedule with an optional full-data warm start, the embedding
pass (timed, counted, NaN-checked), per-class grouping and budgets, the random partition into
mini-batches and its mean embeddings, selections built from batches, weight clipping and
random fill. Index bookkeeping stays with :class:`~subsetlab.embeddings.Embeddings`: every
function here works on *rows* of an embedding, and a strategy maps the chosen rows to dataset
indices once, through ``Embeddings.indices``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from pydantic import Field

from subsetlab.config import EpochwiseConfig
from subsetlab.embeddings import Embeddings
from subsetlab.errors import SelectionError
from subsetlab.protocol import EpochwiseStrategy, Selection, SelectionContext, TrainState

__all__ = [
    "SINGLE_PROCESS_NOTE",
    "BaselineConfig",
    "BaselineStrategy",
    "embed",
    "check_finite",
    "class_members",
    "class_budgets",
    "bias_weight",
    "class_gradient_slice",
    "random_partition",
    "batch_means",
    "batch_selection",
    "clip_weights",
    "random_fill",
    "as_float",
]


#: Why CRAIG, GradMatch and Glister refuse distributed runs (their ``distributed_note`` ends with it).
SINGLE_PROCESS_NOTE = (
    "A distributed version needs per-shard selection merged by a second greedy pass (GreeDi), "
    "which is not implemented; repeating the whole selection on every rank would leave its cost, "
    "most of these methods' time, undivided and need bit-identical greedy choices on every rank. "
    "Run it in one process; spread a suite's runs with --workers or a Dask cluster (--cluster)"
)


class BaselineConfig(EpochwiseConfig):
    """Schedule fields shared by CRAIG, GradMatch and Glister (not registered by itself)."""

    select_every: int = Field(
        20,
        ge=1,
        description="Re-select every this many pseudo-epochs (R; CORDS default 20). The first "
        "selection is at step 0, or at the end of the warm start.",
    )
    warm_start: int = Field(
        0,
        ge=0,
        le=100_000,
        description="Pseudo-epochs trained on the full training set (weight 1, reshuffled every "
        "pass) before the first selection; their backprops count against the budget as usual. "
        "CORDS' kappa is warm_start / epochs. 0 (default) selects at step 0.",
    )


class BaselineStrategy(EpochwiseStrategy):
    """Schedule and state shared by the epoch-wise baselines.

    Selections happen at step 0 and then at the first step of pseudo-epochs ``W``, ``W + R``,
    ``W + 2R``, ... (``W = warm_start``, ``R = select_every``). With ``W > 0`` the selection
    at step 0 is the whole training set with weight 1, streamed by the trainer for ``W``
    pseudo-epochs (CORDS' ``kappa`` warm start: full-data training for the same number of
    backprops). Subclasses implement :meth:`select_subset`.

    Attributes:
        partition_: The fixed random order of the training rows that defines the mini-batches
            of per-batch variants (drawn at the first per-batch selection; checkpointed).
    """

    def setup(self, ctx: SelectionContext) -> None:
        """Store ``ctx``; per-batch partitions are drawn lazily at the first selection."""
        super().setup(ctx)
        self.partition_: torch.Tensor | None = None

    def in_warm_start(self, state: TrainState) -> bool:
        """True while ``state`` lies in the full-data warm start."""
        return state.epoch < self.config.warm_start

    def should_select(self, state: TrainState) -> bool:
        """True at the first step of pseudo-epochs ``W + j R`` (j >= 0)."""
        w, r = self.config.warm_start, self.config.select_every
        return state.epoch_start and state.epoch >= w and (state.epoch - w) % r == 0

    def select(self, state: TrainState) -> Selection:
        """The full training set during the warm start, else :meth:`select_subset`."""
        if self.in_warm_start(state):
            return Selection.uniform(torch.arange(self.ctx.budget.n), warm_start=True)
        return self.select_subset(state)

    def select_subset(self, state: TrainState) -> Selection:
        """The method's own selection (implemented by each strategy)."""
        raise NotImplementedError

    def partition(self, n: int, repartition: bool = False) -> torch.Tensor:
        """The random order of ``n`` rows that defines the mini-batches (chunks of B).

        Drawn from ``ctx.generator`` once and kept (CORDS keeps its batches fixed), or again
        at every call when ``repartition``.
        """
        p = getattr(self, "partition_", None)
        if repartition or p is None or p.shape[0] != n:
            p = random_partition(n, self.ctx.generator)
            self.partition_ = p
        return p

    def state_dict(self) -> dict[str, Any]:
        """The per-batch partition when one was drawn (else empty)."""
        p = getattr(self, "partition_", None)
        return {} if p is None else {"partition": p.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        p = state.get("partition")
        self.partition_ = None if p is None else torch.as_tensor(p, dtype=torch.long).cpu()


# ----------------------------------------------------------------------------------------------
# embeddings


def embed(
    ctx: SelectionContext,
    split: str = "train",
    kind: str = "bias",
    features: bool = False,
    logits: bool = False,
    who: str = "strategy",
) -> Embeddings:
    """Embed a whole split with ``ctx.embedder``: timed as ``"embedding"``, counted as forwards.

    Returns float32 tensors on ``ctx.device`` (the embedder may store float16 on CUDA).

    Raises:
        SelectionError: when the split is missing or an embedding is NaN or infinite.
    """
    data = ctx.train if split == "train" else ctx.val
    if data is None or len(data) == 0:
        raise SelectionError(
            f"Strategy {who!r} needs the {split} split, but it is empty or missing. Set "
            f"data.val_fraction > 0 (e.g. 0.1) or choose an option that does not use it."
        )
    with ctx.meters.timer("embedding"):
        emb = ctx.embedder.embed(data, kind=kind, return_features=features, return_logits=logits)
    ctx.meters.add_forward(len(emb))
    emb.grads = as_float(emb.grads)
    check_finite(emb, who, split)
    return emb


def check_finite(emb: Embeddings, who: str = "strategy", split: str = "train") -> None:
    """Raise a clear :class:`SelectionError` when any embedding, feature or logit is not finite.

    A diverged (NaN) model would otherwise feed NaN distances to the solvers (apricot's lazy
    greedy loops forever on them).
    """
    for name in ("grads", "features", "logits"):
        t = getattr(emb, name)
        if t is None:
            continue
        bad = ~torch.isfinite(t).reshape(t.shape[0], -1).all(dim=1)
        if bool(bad.any()):
            first = int(emb.indices[bad.nonzero()[0, 0]])
            raise SelectionError(
                f"Strategy {who!r}: the {name} of {int(bad.sum())} of {t.shape[0]} {split} "
                f"examples are NaN or infinite (first at dataset index {first}); the model has "
                f"probably diverged. Lower the learning rate (or the weight clipping "
                f"max_weight) and rerun."
            )


def as_float(t: torch.Tensor | None) -> torch.Tensor | None:
    """``t`` in a dtype fit for the solvers: half precision goes to float32, others unchanged."""
    if t is None or t.dtype in (torch.float32, torch.float64):
        return t
    return t.float()


def bias_weight(g: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """``[n, C + C*D]`` bias + weight gradient from bias gradients ``g`` and features ``h``.

    The layout of :func:`subsetlab.embeddings.last_layer_grads`: the bias block, then the
    weight gradient ``g h^T`` flattened row-major (row c of the weight at ``C + c*D``).
    """
    return torch.cat([g, (g.unsqueeze(2) * h.unsqueeze(1)).flatten(1)], dim=1)


def class_gradient_slice(g: torch.Tensor, h: torch.Tensor, c: int) -> torch.Tensor:
    """``[n, 1 + D]``: class ``c``'s bias entry and weight row of the bias + weight gradient.

    Equal to the columns ``[c] + [C + c*D, C + (c+1)*D)`` of :func:`bias_weight`, without
    building the ``C + C*D`` embedding (CORDS' "PerClassPerGradient").
    """
    gc = g[:, c : c + 1]
    return torch.cat([gc, gc * h], dim=1)


# ----------------------------------------------------------------------------------------------
# classes


def class_members(labels: torch.Tensor, num_classes: int) -> list[torch.Tensor]:
    """Rows of each class, in increasing order (one stable sort, no per-class scans)."""
    order = torch.argsort(labels, stable=True)
    counts = torch.bincount(labels, minlength=num_classes)
    return list(order.split(counts.tolist()))


def class_budgets(labels: torch.Tensor, num_classes: int, k: int) -> torch.Tensor:
    """Per-class budgets proportional to class sizes, summing exactly to ``min(k, n)`` (CPU).

    Largest-remainder rounding (:func:`strategies.random.stratified_quotas`).
    """
    # Imported here: importing strategies.random registers RandomStrategy, which must happen
    # while its own entry point loads, not while this module's importer's does.
    from strategies.random import stratified_quotas

    counts = torch.bincount(labels.cpu(), minlength=num_classes)
    return stratified_quotas(counts, k)


# ----------------------------------------------------------------------------------------------
# mini-batches


def random_partition(n: int, generator: torch.Generator) -> torch.Tensor:
    """A random order of ``n`` rows (CPU int64); consecutive chunks of B are the mini-batches."""
    return torch.randperm(n, generator=generator)


def batch_means(
    g: torch.Tensor, h: torch.Tensor | None, order: torch.Tensor, batch_size: int, kind: str = "bias"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean gradient embedding of each mini-batch of ``order`` (chunks of ``batch_size``).

    Args:
        g: ``[n, C]`` bias gradients.
        h: ``[n, D]`` features (needed for ``kind="bias_weight"``).
        order: ``[n]`` row order; batch ``b`` is ``order[b*B : (b+1)*B]`` (the last may be short).
        batch_size: B.
        kind: ``"bias"`` (``[nb, C]``) or ``"bias_weight"`` (``[nb, C + C*D]``, the mean of the
            per-example outer products, computed batch by batch with one ``bmm``).

    Returns:
        ``(means, sizes)``: ``[nb, dim]`` means and ``[nb]`` int64 batch sizes.
    """
    n, C = g.shape
    B = int(batch_size)
    nb = math.ceil(n / B)
    order = order.to(g.device)
    pad = torch.full((nb * B,), -1, dtype=torch.int64, device=g.device)
    pad[:n] = order
    valid = (pad >= 0).to(g.dtype).view(nb, B, 1)
    gp = g.index_select(0, pad.clamp(min=0)).view(nb, B, C) * valid
    sizes = valid.view(nb, B).sum(1)
    mean_g = gp.sum(1) / sizes.unsqueeze(1)
    if kind == "bias":
        return mean_g, sizes.long()
    hp = h.index_select(0, pad.clamp(min=0)).view(nb, B, -1)
    w = torch.bmm(gp.transpose(1, 2), hp).flatten(1) / sizes.unsqueeze(1)
    return torch.cat([mean_g, w], dim=1), sizes.long()


def batch_selection(
    indices: torch.Tensor,
    order: torch.Tensor,
    batch_size: int,
    chosen: torch.Tensor,
    weights: torch.Tensor,
    **diagnostics: Any,
) -> Selection:
    """A selection with a batch plan: each chosen mini-batch is one training batch.

    Args:
        indices: ``[n]`` dataset index of each row (``Embeddings.indices``).
        order: The row order that defines the batches (see :func:`batch_means`).
        batch_size: B.
        chosen: ``[m]`` chosen batch ids.
        weights: ``[m]`` weight of each chosen batch, given to every example of the batch.
        **diagnostics: Recorded with the selection.
    """
    B = int(batch_size)
    order = order.cpu()
    idx_cpu = indices.cpu()
    parts = [order[int(b) * B : (int(b) + 1) * B] for b in chosen.cpu().tolist()]
    sizes = [p.shape[0] for p in parts]
    rows = torch.cat(parts)
    w = torch.repeat_interleave(weights.detach().cpu().float(), torch.tensor(sizes))
    plan = list(torch.arange(rows.shape[0]).split(sizes))
    return Selection(idx_cpu[rows], w, plan, dict(diagnostics))


# ----------------------------------------------------------------------------------------------
# weights and fills


def clip_weights(weights: torch.Tensor, max_weight: float | None) -> tuple[torch.Tensor, int]:
    """Cap weights at ``max_weight`` times their mean; return the weights and how many were cut.

    ``None`` leaves them unchanged. The trainer rescales the result to mean 1 afterwards.
    """
    if max_weight is None or weights.numel() == 0:
        return weights, 0
    cap = float(max_weight) * float(weights.double().mean())
    over = weights > cap
    return weights.clamp(max=cap), int(over.sum())


def random_fill(pool: torch.Tensor, taken: torch.Tensor, count: int, generator: torch.Generator) -> torch.Tensor:
    """``count`` rows of ``pool`` not in ``taken``, uniformly without replacement (fewer if short).

    Randomness from ``generator`` (CPU); the result is on ``pool``'s device.
    """
    if count <= 0:
        return pool[:0]
    free = pool[~torch.isin(pool, taken)]
    perm = torch.randperm(free.shape[0], generator=generator)[:count]
    return free[perm.to(free.device)]
