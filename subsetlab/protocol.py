"""The strategy contract: what the trainer gives a strategy and what it gets back.

A strategy never owns the training loop. The :class:`~subsetlab.trainer.Trainer` calls, in
this order:

1. :meth:`SelectionStrategy.setup` once per run, with a :class:`SelectionContext`;
2. :meth:`SelectionStrategy.select` before step 0, then before every later step
   :meth:`SelectionStrategy.should_select` and, when it answers True, ``select`` again (a
   selection replaces the current one, or, with ``Selection.extends``, adds batches to it);
3. one weighted training step on the next batch of the current :class:`Selection`:
   forward, loss, backward, then :meth:`SelectionStrategy.on_after_backward` (the step's
   gradients are in the parameters' ``.grad``), then the optimiser step;
4. :meth:`SelectionStrategy.on_step_end` with the batch's per-example losses.

``state_dict`` / ``load_state_dict`` make a strategy resumable from a checkpoint.

A whole strategy, here one that trains on the budget's highest-loss examples and re-selects
every ``select_every`` pseudo-epochs (:class:`EpochwiseStrategy` answers ``should_select``)::

    from typing import Literal

    from subsetlab import EpochwiseConfig, EpochwiseStrategy, Selection, TrainState


    class TopLossConfig(EpochwiseConfig):
        '''Config of TopLoss: frozen, unknown keys rejected; `name` is the registered name.'''

        name: Literal["top-loss"] = "top-loss"


    class TopLoss(EpochwiseStrategy):
        '''The ceil(f * N) examples with the highest current loss, weight 1.'''

        name = "top-loss"
        Config = TopLossConfig

        def select(self, state: TrainState) -> Selection:
            ctx = self.ctx  # set by setup(); allocate any state of your own in setup()
            emb = ctx.embedder.embed(ctx.train)  # one no-grad forward pass over the data
            ctx.meters.add_forward(len(emb))  # report the extra work
            top = emb.losses.topk(ctx.budget.subset_size).indices
            return Selection.uniform(emb.indices[top])

It becomes usable by name (``registry.create("top-loss")``, ``--strategy top-loss``) once
registered: with the ``@subsetlab.register`` decorator, or, in a package, with an entry point
``top-loss = "your_package:TopLoss"`` in the group ``subsetlab.strategies`` (the guide "Write
a strategy" walks through one, with its tests).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
from torch import nn

from subsetlab.config_base import StrategyConfig, validate
from subsetlab.errors import SelectionError
from subsetlab.timing import Lap

if TYPE_CHECKING:
    from subsetlab.data.base import IndexedDataset
    from subsetlab.embeddings import GradientEmbedder

__all__ = [
    "Capabilities",
    "Budget",
    "Selection",
    "TrainState",
    "StepInfo",
    "WorkMeters",
    "DistView",
    "SelectionContext",
    "SelectionStrategy",
    "EpochwiseStrategy",
]


@dataclass(frozen=True)
class Capabilities:
    """What a strategy declares about itself; the trainer and runner act on it.

    Attributes:
        needs_validation: ``select`` uses ``ctx.val``; the trainer refuses a run without one.
        supports_distributed: the strategy is correct under ``torch.distributed``.
        distributed_note: Why a strategy does not support distributed runs (shown in the
            trainer's refusal), or how it behaves in one.
        stochastic: results depend on the seed (all built-ins draw from ``ctx.generator``).
        budget: ``"fraction"`` (the default: f*N per pseudo-epoch), ``"full"`` (the full-data
            reference: f is taken as 1), or ``"full_schedule"`` (SGD-truncated: the full run's
            schedule and epoch length, stopped when the fraction's budget is spent).
    """

    needs_validation: bool = False
    supports_distributed: bool = False
    distributed_note: str = ""
    stochastic: bool = True
    budget: Literal["fraction", "full", "full_schedule"] = "fraction"


@dataclass(frozen=True)
class Budget:
    """The budget arithmetic of one run.

    Attributes:
        n: Training examples N.
        fraction: f.
        batch_size: B.
        epochs: E (pseudo-epochs).
        subset_size: ``ceil(f * N)``, the examples a per-epoch selection should hold.
        steps_per_epoch: S = ``ceil(f * N / B)``.
        total_steps: ``E * S``, identical for every strategy of a comparison.
        schedule_steps_per_epoch: pseudo-epoch length the LR schedule uses (S, or the full
            run's ``ceil(N / B)`` for SGD-truncated).
    """

    n: int
    fraction: float
    batch_size: int
    epochs: int
    subset_size: int
    steps_per_epoch: int
    total_steps: int
    schedule_steps_per_epoch: int

    @classmethod
    def make(cls, n: int, fraction: float, batch_size: int, epochs: int, mode: str = "fraction") -> Budget:
        """Compute the budget for ``n`` examples; ``mode`` as in :class:`Capabilities`."""
        if n < 1:
            raise SelectionError(f"The training set is empty (N = {n}); nothing to train on.")
        f = 1.0 if mode == "full" else float(fraction)
        # round() guards against float noise such as 0.1 * 1290 = 129.00000000000003
        k = min(n, max(1, math.ceil(round(f * n, 6))))
        s = math.ceil(k / batch_size)
        sched = math.ceil(n / batch_size) if mode == "full_schedule" else s
        return cls(n, f, batch_size, epochs, k, s, epochs * s, sched)


@dataclass
class Selection:
    """A weighted subset to train on, as returned by :meth:`SelectionStrategy.select`.

    Attributes:
        indices: Example indices into the training set, int64, shape ``[k]``. Duplicates are
            allowed (overlapping mini-batch coresets); each row is its own training item.
        weights: Per-row weights, finite and > 0, shape ``[k]``. The trainer rescales them to
            mean 1 (``TrainerConfig.normalize_weights``).
        batches: Optional batch plan: a list of int64 tensors of *positions* into
            ``indices``/``weights``, one per mini-batch, for methods that define their own
            batches (CREST's mini-batch coresets, per-batch CRAIG). Every batch holds exactly
            the rows of one training step (``min(B, subset_size)``; for a ``rank_local``
            selection, this rank's share ``ctx.batch_size``), like the trainer's own batches,
            so that every method back-propagates the same number of examples
            (:meth:`validate` checks it when given ``batch_size``). Without a plan the
            trainer shuffles the rows into batches of B with the run's generator.
        diagnostics: Small, JSON-serialisable facts about this selection (recorded in the
            selection log of the run result).
        rank_local: Only for distributed runs: True when the selection holds this rank's own
            rows (each rank selected different examples; batches hold ``ctx.batch_size`` rows,
            the per-rank share). False (default): every rank returned the same selection and
            the trainer gives each rank its share of every global batch.
        extends: True when these rows and batches are *added* to the current selection
            instead of replacing it: a selection built lazily, a few batches at a time, as
            the trainer reaches them (CREST's mini-batch coresets). Needs a batch plan (its
            positions refer to this selection's own rows) and a current selection with a
            plan. The added batches are trained next, in order; once they are all served the
            trainer goes on serving the whole plan in a fresh random order per pass. An
            extension is not a new selection: the run's selection log adds its rows and
            seconds to the current entry (``extensions`` counts them), and its weights are
            rescaled to mean 1 on their own (``TrainerConfig.normalize_weights``).
    """

    indices: torch.Tensor
    weights: torch.Tensor
    batches: list[torch.Tensor] | None = None
    diagnostics: dict[str, Any] = field(default_factory=dict)
    rank_local: bool = False
    extends: bool = False

    @classmethod
    def uniform(cls, indices: torch.Tensor, **diagnostics: Any) -> Selection:
        """A selection of ``indices`` with all weights 1."""
        indices = torch.as_tensor(indices, dtype=torch.long).cpu()
        return cls(indices, torch.ones(len(indices)), None, dict(diagnostics))

    def __len__(self) -> int:
        return int(self.indices.shape[0])

    def validate(
        self, n: int, strategy: str = "strategy", max_size: int | None = None, batch_size: int | None = None
    ) -> Selection:
        """Check the contract and return a CPU copy with float32 weights.

        Args:
            n: Training examples N (indices must lie in ``[0, n)``).
            strategy: Name used in the errors.
            max_size: Most rows the selection may hold.
            batch_size: When given, every batch of a batch plan must hold exactly this many
                rows, so that a plan back-propagates as many examples per step as the
                trainer's own batches do. The trainer passes the rows one step trains:
                ``min(B, subset_size)`` for a replicated selection (a global batch, split over
                the ranks), that divided by the world size for a ``rank_local`` one (this
                rank's share, ``ctx.batch_size``).

        Raises:
            SelectionError: naming ``strategy`` and what is wrong.
        """
        who = f"Strategy {strategy!r} returned a selection whose"
        idx, w = self.indices, self.weights
        if not isinstance(idx, torch.Tensor) or not isinstance(w, torch.Tensor):
            raise SelectionError(f"{who} indices/weights are not torch tensors.")
        if idx.dtype != torch.int64:
            raise SelectionError(f"{who} indices have dtype {idx.dtype}; they must be int64.")
        if idx.dim() != 1 or w.dim() != 1 or idx.shape != w.shape:
            raise SelectionError(
                f"{who} indices {tuple(idx.shape)} and weights {tuple(w.shape)} are not two "
                f"1-D tensors of the same length."
            )
        k = int(idx.shape[0])
        if k == 0:
            raise SelectionError(f"{who} size is 0; select at least one example.")
        if max_size is not None and k > max_size:
            raise SelectionError(f"{who} size {k} exceeds the budget of {max_size} rows.")
        idx, w = idx.cpu(), w.detach().cpu().float()
        lo, hi = int(idx.min()), int(idx.max())
        if lo < 0 or hi >= n:
            raise SelectionError(f"{who} indices span [{lo}, {hi}], outside [0, {n}).")
        if not bool(torch.isfinite(w).all()):
            raise SelectionError(f"{who} weights contain NaN or infinite values.")
        if bool((w <= 0).any()):
            raise SelectionError(f"{who} weights include values <= 0 (min {float(w.min())}); weights must be > 0.")
        batches = None
        if self.batches is not None:
            batches = []
            for b in self.batches:
                b = torch.as_tensor(b, dtype=torch.long).cpu()
                if b.numel() == 0 or int(b.min()) < 0 or int(b.max()) >= k:
                    raise SelectionError(f"{who} batch plan has an empty batch or positions outside [0, {k}).")
                if batch_size is not None and b.numel() != batch_size:
                    raise SelectionError(
                        f"{who} batch plan has a batch of {b.numel()} rows (batch {len(batches)} of "
                        f"{len(self.batches)}); every planned batch must hold exactly {batch_size} rows, "
                        f"the rows of one training step, so that every method back-propagates the same "
                        f"number of examples. Complete short batches (e.g. with rows of other batches) "
                        f"or leave batching to the trainer (batches=None)."
                    )
                batches.append(b)
            if not batches:
                raise SelectionError(f"{who} batch plan is empty; return None to let the trainer batch.")
        if self.extends and batches is None:
            raise SelectionError(f"{who} extends=True needs a batch plan (the batches to add to the current selection).")
        return Selection(idx, w, batches, dict(self.diagnostics), bool(self.rank_local), bool(self.extends))


@dataclass
class TrainState:
    """The trainer's state as a strategy sees it before a step.

    Attributes:
        step: Index of the step about to be taken (0-based, global).
        epoch: Pseudo-epoch of that step.
        steps_per_epoch: S.
        total_steps: E * S.
        lr: Learning rate of that step.
        model: The model being trained (possibly DDP-wrapped; use ``ctx.model`` for the
            bare module).
        selections: Number of selections made so far.
    """

    step: int
    epoch: int
    steps_per_epoch: int
    total_steps: int
    lr: float
    model: nn.Module
    selections: int = 0

    @property
    def epoch_start(self) -> bool:
        """True when ``step`` is the first step of a pseudo-epoch."""
        return self.step % self.steps_per_epoch == 0


@dataclass
class StepInfo:
    """What :meth:`SelectionStrategy.on_step_end` receives about the step just taken.

    All tensors are detached and on the training device.

    Attributes:
        indices: Dataset indices of the batch.
        weights: Weights used for the batch (after normalisation).
        losses: Per-example (unweighted) losses.
        correct: Per-example correctness of the prediction (before the update).
        loss: The weighted batch loss that was back-propagated.
    """

    indices: torch.Tensor
    weights: torch.Tensor
    losses: torch.Tensor
    correct: torch.Tensor
    loss: float


class WorkMeters:
    """Counters and timers for the extra work a strategy does.

    The trainer counts training backprops itself; a strategy adds what it does on top:
    forward examples (embeddings, loss checks), backward and Hessian-vector-product examples,
    seconds per named component, and time series of named quantities.
    """

    def __init__(self, device: torch.device | None = None) -> None:
        self.forward_examples = 0
        self.backward_examples = 0
        self.hvp_examples = 0
        self.seconds: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        self.series: dict[str, list[tuple[int, float]]] = {}
        self._device = device

    def add_forward(self, n: int) -> None:
        """Count ``n`` extra forward examples."""
        self.forward_examples += int(n)

    def add_backward(self, n: int) -> None:
        """Count ``n`` extra backward (gradient) examples."""
        self.backward_examples += int(n)

    def add_hvp(self, n: int) -> None:
        """Count ``n`` Hessian-vector-product examples."""
        self.hvp_examples += int(n)

    @contextlib.contextmanager
    def timer(self, name: str) -> Iterator[None]:
        """Accumulate the wall seconds of the block under ``name`` (device-synchronised)."""
        lap = Lap(self._device)
        try:
            with lap:
                yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + lap.seconds
            self.counts[name] = self.counts.get(name, 0) + 1

    def record(self, name: str, step: int, value: float) -> None:
        """Append ``(step, value)`` to the time series ``name``."""
        self.series.setdefault(name, []).append((int(step), float(value)))

    def state_dict(self) -> dict[str, Any]:
        """Primitive copy of the meters (checkpointable)."""
        return {
            "forward_examples": self.forward_examples,
            "backward_examples": self.backward_examples,
            "hvp_examples": self.hvp_examples,
            "seconds": dict(self.seconds),
            "counts": dict(self.counts),
            "series": {k: [list(p) for p in v] for k, v in self.series.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict`."""
        self.forward_examples = int(state["forward_examples"])
        self.backward_examples = int(state["backward_examples"])
        self.hvp_examples = int(state["hvp_examples"])
        self.seconds = dict(state["seconds"])
        self.counts = dict(state["counts"])
        self.series = {k: [(int(a), float(b)) for a, b in v] for k, v in state["series"].items()}


@dataclass(frozen=True)
class DistView:
    """The distributed view of a run: rank, world size and collectives.

    In a single-process run ``world_size`` is 1 and the collectives return their input.
    :func:`subsetlab.distributed.view` builds the view of a ``torch.distributed`` process
    group. Every collective must be called by every rank in the same order (or the ranks
    wait for each other until the group's timeout).

    Attributes:
        rank: This process's rank.
        world_size: Number of processes W.
        all_reduce: ``all_reduce(t, op)`` with ``op`` one of ``"sum"``, ``"max"``, ``"min"``,
            ``"mean"``; returns a new tensor on ``t``'s device (``t`` is not modified).
        broadcast: ``broadcast(t, src)``: rank ``src``'s ``t`` on every rank (same shape and
            dtype everywhere).
        all_gather: ``all_gather(t)``: every rank's ``t`` (same shape everywhere), in rank order.
        barrier: Wait until every rank got here.
    """

    rank: int = 0
    world_size: int = 1
    all_reduce: Callable[[torch.Tensor, str], torch.Tensor] = field(
        default=lambda t, op="sum": t, repr=False
    )
    broadcast: Callable[[torch.Tensor, int], torch.Tensor] = field(default=lambda t, src=0: t, repr=False)
    all_gather: Callable[[torch.Tensor], list[torch.Tensor]] = field(default=lambda t: [t], repr=False)
    barrier: Callable[[], None] = field(default=lambda: None, repr=False)

    @property
    def is_main(self) -> bool:
        """True on rank 0 (the only rank that writes)."""
        return self.rank == 0


@dataclass
class SelectionContext:
    """What a strategy may use, handed to :meth:`SelectionStrategy.setup` once per run.

    Attributes:
        train: The training split (indexed view: ``len``, ``labels``, ``class_counts()``,
            ``get(indices)``).
        val: The validation split, or None.
        model: The bare model being trained (its last module is an ``nn.Linear``).
        loss_fn: Per-example loss, ``loss_fn(logits, y) -> [n]`` (cross-entropy).
        embedder: The shared :class:`~subsetlab.embeddings.GradientEmbedder`.
        device: Training device.
        generator: The strategy's seeded CPU generator; the only source of randomness.
        seed: The run seed (derive further seeds with :func:`subsetlab.seeding.derive_seed`).
        budget: The run's :class:`Budget`.
        dist: The :class:`DistView`.
        meters: The :class:`WorkMeters` to report extra work into.
        batch_size: Training mini-batch size B.
    """

    train: IndexedDataset
    val: IndexedDataset | None
    model: nn.Module
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    embedder: GradientEmbedder
    device: torch.device
    generator: torch.Generator
    seed: int
    budget: Budget
    dist: DistView
    meters: WorkMeters

    @property
    def batch_size(self) -> int:
        """Rows per training step on this rank: B, or k when the budget is smaller than one batch,
        divided by the world size in a distributed run.

        The trainer serves ``min(B, subset_size)`` rows per step (split evenly over the ranks);
        strategies that build their own mini-batches use this value so every method
        back-propagates the same count.
        """
        return min(self.budget.batch_size, self.budget.subset_size) // max(1, self.dist.world_size)


class SelectionStrategy:
    """Base class of every strategy. Subclass it, set ``name`` and ``Config``, and register.

    Example:
        >>> from typing import Literal
        >>> from subsetlab import SelectionStrategy, StrategyConfig, Selection, register
        >>> class Cfg(StrategyConfig):
        ...     name: Literal["first-k"] = "first-k"
        >>> class FirstK(SelectionStrategy):  # doctest: +SKIP
        ...     name, Config = "first-k", Cfg
        ...     def should_select(self, state): return False
        ...     def select(self, state):
        ...         return Selection.uniform(torch.arange(self.ctx.budget.subset_size))

    Attributes:
        name: Registered name; equals ``Config``'s ``name`` default.
        Config: The frozen pydantic config class.
        capabilities: Declared :class:`Capabilities`: on the class, those of every config (the
            default of :meth:`capabilities_for`); on an instance, those of its config.
        config: The validated config instance.
        ctx: The :class:`SelectionContext`, set by :meth:`setup`.
    """

    name: ClassVar[str]
    Config: ClassVar[type[StrategyConfig]]
    capabilities: Capabilities = Capabilities()

    @classmethod
    def capabilities_for(cls, config: StrategyConfig) -> Capabilities:
        """The :class:`Capabilities` of a run of this strategy with ``config``.

        The trainer, the suite and the conformance checks all ask here, so they agree. The
        default is the class attribute ``capabilities``; override this classmethod when a
        config changes what the strategy needs (GradMatch's ``target="val"`` needs the
        validation split).
        """
        return cls.capabilities

    def __init__(self, config: StrategyConfig | None = None, **overrides: Any) -> None:
        if config is None:
            config = validate(self.Config, {"name": self.name, **overrides}, self.Config.__name__)
        elif overrides:
            config = validate(self.Config, {**config.model_dump(), **overrides}, self.Config.__name__)
        elif not isinstance(config, self.Config):
            raise TypeError(
                f"{type(self).__name__} needs a {self.Config.__name__}. Got "
                f"{type(config).__name__} instead."
            )
        self.config = config
        self.capabilities = self.capabilities_for(config)
        self.ctx: SelectionContext | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config!r})"

    def setup(self, ctx: SelectionContext) -> None:
        """Called once per run before the first step. Store ``ctx``; allocate state here."""
        self.ctx = ctx

    def should_select(self, state: TrainState) -> bool:
        """Called before every step after the first; True triggers :meth:`select`. Keep it cheap."""
        raise NotImplementedError

    def select(self, state: TrainState) -> Selection:
        """Return the weighted subset (and optional batch plan) to train on from this step."""
        raise NotImplementedError

    def on_after_backward(self, state: TrainState) -> None:
        """Called after the backward pass of every training step, before the optimiser step.

        The ``.grad`` of ``ctx.model``'s parameters then hold the gradient of the step's
        weighted batch loss (``mean_i(w_i * loss_i)``, without weight decay; averaged over the
        ranks in a distributed run) at the parameters the step starts from. Read them, never
        modify them. No-op by default.
        """

    def on_step_end(self, state: TrainState, info: StepInfo) -> None:
        """Called after every optimiser step with the batch's per-example losses. No-op by default."""

    def state_dict(self) -> dict[str, Any]:
        """Checkpointable state (tensors and primitives only). Empty by default."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned. No-op by default."""


class EpochwiseStrategy(SelectionStrategy):
    """A strategy that re-selects at pseudo-epoch boundaries every ``config.select_every`` epochs."""

    def should_select(self, state: TrainState) -> bool:
        """True at the first step of every ``select_every``-th pseudo-epoch."""
        every = int(getattr(self.config, "select_every", 1))
        return state.epoch_start and state.epoch % every == 0
