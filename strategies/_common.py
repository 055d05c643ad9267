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
from dataclasses import dataclass
from typing import Any

import torch
from pydantic import Field

from strategies.random import stratified_quotas
from subsetlab.config import EpochwiseConfig
from subsetlab.embeddings import Embeddings
from subsetlab.errors import SelectionError
from subsetlab.greedi import shard_of
from subsetlab.seeding import torch_generator
from subsetlab.protocol import EpochwiseStrategy, Selection, SelectionContext, TrainState

__all__ = [
    "GREEDI_NOTE",
    "DEFAULT_SELECT_EVERY_FRACTION",
    "FREQUENT_SELECT_EVERY_FRACTION",
    "BaselineConfig",
    "BaselineStrategy",
    "GreediRound",
    "greedi_round",
    "shard_rows",
    "shard_items",
    "val_rows",
    "greedi_diagnostics",
    "embed",
    "check_finite",
    "class_members",
    "class_budgets",
    "bias_weight",
    "class_gradient_slice",
    "random_partition",
    "batch_rows",
    "batch_means",
    "batch_selection",
    "completed_rows",
    "clip_weights",
    "random_fill",
    "as_float",
]


#: How CRAIG, GradMatch and Glister run under torch.distributed (their ``distributed_note`` ends with it).
GREEDI_NOTE = (
    "Under torchrun each rank selects on its own shard of the training set (a seeded, "
    "class-stratified random partition; it embeds only that shard), the ranks gather the shards' "
    "candidates, and a second pass over their union picks the final selection (GreeDi, "
    "Mirzasoleiman et al. 2013); every rank ends with the same (replicated) selection. The merge "
    "refuses to hold more than greedi_max_bytes"
)


#: Default ``select_every_fraction``: re-select every 10% of the selecting pseudo-epochs, so
#: about 10 selections per run (the CREST paper's baselines: R = 20 of 200 epochs).
DEFAULT_SELECT_EVERY_FRACTION = 0.1

#: ``select_every_fraction`` of the methods measured better with about 20 selections per run
#: (Glister, per-batch GradMatch): R = 1 for 20 epochs, 10 for 200.
FREQUENT_SELECT_EVERY_FRACTION = 0.05



class BaselineConfig(EpochwiseConfig):
    """Schedule and scale-out fields shared by CRAIG, GradMatch and Glister (not registered by itself).

    The re-selection interval ``R`` is relative to the run's length by default:
    ``R = max(1, round(select_every_fraction * (epochs - warm_start)))`` pseudo-epochs, about
    ``1 / select_every_fraction`` selections per run whatever the number of epochs, with the
    method's own fraction when ``select_every_fraction`` is None
    (:meth:`default_select_every_fraction`). An absolute ``select_every`` overrides it.
    """

    select_every: int | None = Field(
        None,
        ge=1,
        le=1_000_000,
        description="Re-select every this many pseudo-epochs (R, absolute; CORDS uses 20 for "
        "200-300 epochs). None (default): R follows the run's length through "
        "select_every_fraction. The first selection is at step 0, or at the end of the warm start.",
    )
    select_every_fraction: float | None = Field(
        None,
        gt=0.0,
        le=1.0,
        description="When select_every is None: R = max(1, round(select_every_fraction * "
        "(epochs - warm_start))) pseudo-epochs, i.e. about 1/select_every_fraction selections "
        "per run (1.0: a single selection). None (default): the method's own, 0.1 (about 10 "
        "selections per run, as in the CREST paper's baseline runs: R = 20 of 200 epochs) for "
        "CRAIG and per-class GradMatch, 0.05 (about 20) for Glister and per-batch GradMatch, "
        "where it measured better. Ignored when select_every is given.",
    )
    warm_start: int = Field(
        0,
        ge=0,
        le=100_000,
        description="Pseudo-epochs trained on the full training set (weight 1, reshuffled every "
        "pass) before the first selection; their backprops count against the budget as usual. "
        "CORDS' kappa is warm_start / epochs. 0 (default) selects at step 0.",
    )
    greedi_max_bytes: int = Field(
        2**30,
        ge=2**20,
        le=2**50,
        description="Distributed runs only: the most bytes the GreeDi merge may hold on one "
        "rank (the gathered candidates' embeddings plus the merge's similarity or solver "
        "state, per class). A merge that would need more raises a SelectionError before "
        "gathering anything. Default 1 GiB.",
    )

    greedi_oversample: float = Field(
        2.0,
        ge=1.0,
        le=1_000_000.0,
        description="Distributed runs only: each rank proposes min(k_c, its shard's n_c, "
        "ceil(greedi_oversample * k_c / world_size)) candidates per class to the GreeDi merge. "
        "2 (default): twice its share, so the union holds about 2k candidates whatever the "
        "number of ranks (with 2 ranks: k each, GreeDi's own choice); a value >= world_size "
        "proposes k per rank, a larger union (better merge, more merge work and memory).",
    )

    def default_select_every_fraction(self) -> float:
        """The fraction used when ``select_every_fraction`` is None (0.1 unless a method says otherwise)."""
        return DEFAULT_SELECT_EVERY_FRACTION

    def interval(self, epochs: int) -> int:
        """The re-selection interval R in pseudo-epochs for a run of ``epochs`` pseudo-epochs."""
        if self.select_every is not None:
            return int(self.select_every)
        frac = self.select_every_fraction
        if frac is None:
            frac = self.default_select_every_fraction()
        span = max(1, int(epochs) - int(self.warm_start))
        return max(1, math.floor(frac * span + 0.5))


class BaselineStrategy(EpochwiseStrategy):
    """Schedule and state shared by the epoch-wise baselines.

    Selections happen at step 0 and then at the first step of pseudo-epochs ``W``, ``W + R``,
    ``W + 2R``, ... (``W = warm_start``, ``R = config.interval(epochs)``: ``select_every``, or
    by default a fraction of the run's length). With ``W > 0`` the selection at step 0 is the
    whole training set with weight 1, streamed by the trainer for ``W`` pseudo-epochs (CORDS'
    ``kappa`` warm start: full-data training for the same number of backprops). Subclasses
    implement :meth:`select_subset`.

    Attributes:
        interval_: R, the re-selection interval of this run in pseudo-epochs (set by ``setup``).
        partition_: The fixed random order of the training rows that defines the mini-batches
            of per-batch variants (drawn at the first per-batch selection; checkpointed).
    """

    def setup(self, ctx: SelectionContext) -> None:
        """Store ``ctx`` and resolve R; per-batch partitions are drawn lazily at the first selection."""
        super().setup(ctx)
        self.interval_: int = self.config.interval(ctx.budget.epochs)
        self.partition_: torch.Tensor | None = None

    def in_warm_start(self, state: TrainState) -> bool:
        """True while ``state`` lies in the full-data warm start."""
        return state.epoch < self.config.warm_start

    def should_select(self, state: TrainState) -> bool:
        """True at the first step of pseudo-epochs ``W + j R`` (j >= 0)."""
        w = self.config.warm_start
        r = getattr(self, "interval_", None) or self.config.interval(state.total_steps // max(1, state.steps_per_epoch))
        return state.epoch_start and state.epoch >= w and (state.epoch - w) % r == 0

    def select(self, state: TrainState) -> Selection:
        """The full training set during the warm start, else :meth:`select_subset`."""
        if self.in_warm_start(state):
            return Selection.uniform(torch.arange(self.ctx.budget.n), warm_start=True)
        return self.select_subset(state)

    def select_subset(self, state: TrainState) -> Selection:
        """The method's own selection (implemented by each strategy)."""
        raise NotImplementedError

    @property
    def distributed(self) -> bool:
        """True in a run of more than one rank (the GreeDi path)."""
        return self.ctx is not None and self.ctx.dist.world_size > 1

    def plan_batch_size(self) -> int:
        """Rows of one batch of a per-batch plan: the *global* rows of one training step.

        ``min(B, subset_size)``: the trainer splits every batch of a replicated plan over the
        ranks, so it holds the rows of all ranks (``ctx.batch_size`` times the world size).
        """
        b = self.ctx.budget
        return min(b.batch_size, b.subset_size)

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
# GreeDi (distributed runs)


@dataclass
class GreediRound:
    """The generators of one distributed selection, derived from the run seed and the step.

    ``shard`` and ``fill`` are the same on every rank (the partition and any random fill are
    computed everywhere without communication); ``local`` differs per rank (the local pass's
    stochastic greedy); ``merge`` is used by rank 0 only. None of them touches
    ``ctx.generator``, which every rank must keep consuming identically.
    """

    shard: torch.Generator
    local: torch.Generator
    merge: torch.Generator
    fill: torch.Generator


def greedi_round(ctx: SelectionContext, name: str, step: int) -> GreediRound:
    """The :class:`GreediRound` of the selection at ``step``."""
    s, r = ctx.seed, ctx.dist.rank
    return GreediRound(
        shard=torch_generator(s, "greedi", name, step, "shard"),
        local=torch_generator(s, "greedi", name, step, "local", r),
        merge=torch_generator(s, "greedi", name, step, "merge"),
        fill=torch_generator(s, "greedi", name, step, "fill"),
    )


def shard_rows(ctx: SelectionContext, generator: torch.Generator) -> torch.Tensor:
    """This rank's training rows (sorted CPU int64): a class-stratified random shard."""
    owner = shard_of(ctx.budget.n, ctx.dist.world_size, generator, ctx.train.labels.cpu())
    return (owner == ctx.dist.rank).nonzero().squeeze(1)


def shard_items(n: int, ctx: SelectionContext, generator: torch.Generator) -> torch.Tensor:
    """This rank's share of ``n`` items (e.g. mini-batch ids; sorted CPU int64), at random."""
    owner = shard_of(n, ctx.dist.world_size, generator)
    return (owner == ctx.dist.rank).nonzero().squeeze(1)


def val_rows(ctx: SelectionContext) -> torch.Tensor:
    """This rank's validation rows: every ``W``-th from ``rank``."""
    n = len(ctx.val) if ctx.val is not None else 0
    return torch.arange(ctx.dist.rank, n, ctx.dist.world_size)


def greedi_diagnostics(ctx: SelectionContext, results: list[Any]) -> dict[str, Any]:
    """What a GreeDi selection records: world size, candidates gathered, which pass won."""
    merged = sum(1 for r in results if r.source == "merge")
    return {
        "greedi": {
            "world_size": ctx.dist.world_size,
            "candidates": int(sum(r.candidates for r in results)),
            "merge_won": merged,
            "shard_won": len(results) - merged,
        }
    }


# ----------------------------------------------------------------------------------------------
# embeddings


def embed(
    ctx: SelectionContext,
    split: str = "train",
    kind: str = "bias",
    features: bool = False,
    logits: bool = False,
    who: str = "strategy",
    indices: torch.Tensor | None = None,
) -> Embeddings:
    """Embed a split (or the rows ``indices`` of it) with ``ctx.embedder``: timed as
    ``"embedding"``, counted as forwards.

    Returns float32 tensors on ``ctx.device`` (the embedder may store float16 on CUDA); row i
    is example ``indices[i]`` (``Embeddings.indices``).

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
        emb = ctx.embedder.embed(data, indices, kind=kind, return_features=features, return_logits=logits)
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
    counts = torch.bincount(labels.cpu(), minlength=num_classes)
    return stratified_quotas(counts, k)


# ----------------------------------------------------------------------------------------------
# mini-batches


def random_partition(n: int, generator: torch.Generator) -> torch.Tensor:
    """A random order of ``n`` rows (CPU int64); consecutive chunks of B are the mini-batches."""
    return torch.randperm(n, generator=generator)


def batch_rows(order: torch.Tensor, batch_size: int) -> torch.Tensor:
    """``[nb, B]`` rows of the mini-batches of ``order``: every batch holds exactly B rows.

    Batch ``b`` is ``order[b*B : (b+1)*B]``, ``nb = ceil(n / B)``. When B does not divide n the
    last batch is completed with the first ``B - n % B`` rows of ``order`` (so those rows are in
    two batches), instead of being a short batch of ``n % B`` rows: every batch the trainer
    serves from a plan back-propagates B examples, as a batch of any other method does. (When
    B > n, rows repeat within the one batch.)
    """
    order = order.cpu()
    n, B = int(order.shape[0]), int(batch_size)
    nb = math.ceil(n / B)
    return order[torch.arange(nb * B) % n].view(nb, B)


def batch_means(
    g: torch.Tensor, h: torch.Tensor | None, rows: torch.Tensor, kind: str = "bias"
) -> torch.Tensor:
    """Mean gradient embedding of each mini-batch.

    Args:
        g: ``[n, C]`` bias gradients.
        h: ``[n, D]`` features (needed for ``kind="bias_weight"``).
        rows: ``[nb, B]`` rows of ``g`` in each batch (:func:`batch_rows`).
        kind: ``"bias"`` (``[nb, C]``) or ``"bias_weight"`` (``[nb, C + C*D]``, the mean of the
            per-example outer products, computed batch by batch with one ``bmm``).

    Returns:
        ``[nb, dim]`` means.
    """
    nb, B = rows.shape
    flat = rows.reshape(-1).to(g.device)
    gp = g.index_select(0, flat).view(nb, B, -1)
    mean_g = gp.mean(1)
    if kind == "bias":
        return mean_g
    hp = h.index_select(0, flat).view(nb, B, -1)
    w = torch.bmm(gp.transpose(1, 2), hp).flatten(1) / B
    return torch.cat([mean_g, w], dim=1)


def batch_selection(
    indices: torch.Tensor,
    rows: torch.Tensor,
    chosen: torch.Tensor,
    weights: torch.Tensor,
    **diagnostics: Any,
) -> Selection:
    """A selection with a batch plan: each chosen mini-batch is one training batch of B rows.

    Args:
        indices: ``[n]`` dataset index of each row (``Embeddings.indices``).
        rows: ``[nb, B]`` rows of each mini-batch (:func:`batch_rows`).
        chosen: ``[m]`` chosen batch ids.
        weights: ``[m]`` weight of each chosen batch, given to every example of the batch.
        **diagnostics: Recorded with the selection, with ``batch_rows`` (B) added.
    """
    nb, B = rows.shape
    chosen = chosen.cpu().long()
    picked = rows.index_select(0, chosen).reshape(-1)
    w = weights.detach().cpu().float().repeat_interleave(B)
    plan = list(torch.arange(picked.shape[0]).view(-1, B)) if picked.numel() else []
    return Selection(indices.cpu()[picked], w, plan, {**diagnostics, "batch_rows": int(B)})


def completed_rows(n: int, batch_size: int) -> int:
    """Rows the last mini-batch of a partition of ``n`` rows borrows to hold B (0 when B divides n)."""
    r = int(n) % int(batch_size)
    return 0 if r == 0 else int(batch_size) - r


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
