"""The parts of one training run, which :meth:`subsetlab.trainer.Trainer.fit` calls in order.

- :class:`Loop`: the run's fixed parts (the data on the device, the model and its DDP
  wrapper, the optimiser, the strategy's context) and its steps: select when due, one
  weighted training step, the strategy's feedback, the time limit, evaluation.
- :class:`LoopState`: everything the run carries from step to step; its ``state_dict`` is a
  checkpoint's body (written and read by :mod:`subsetlab.checkpoint`).

The strategy's hooks and the observers are called through :mod:`subsetlab.hooks`; the parts
of the run are timed by a :class:`~subsetlab.timing.Stopwatch`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from subsetlab.batches import BatchStream
from subsetlab.config import TrainerConfig
from subsetlab.data.base import DataSplits, IndexedDataset
from subsetlab.distributed import all_gather_cat
from subsetlab.embeddings import GradientEmbedder
from subsetlab.errors import RunTimeout, SelectionError, TrainingDiverged
from subsetlab.hooks import LoopObserver, StrategyHooks
from subsetlab.protocol import Budget, DistView, Selection, SelectionContext, SelectionStrategy, StepInfo, TrainState, WorkMeters
from subsetlab.schedule import lr_at
from subsetlab.seeding import torch_generator
from subsetlab.timing import Stopwatch

__all__ = [
    "Loop",
    "LoopState",
    "RunTimeout",
    "evaluate",
    "jsonable",
    "union_selection",
    "weighted_loss",
]

#: Datasets smaller than this are copied to the accelerator once instead of per batch.
DEVICE_DATA_LIMIT = 2 * 1024**3


def weighted_loss(losses: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The training objective of one batch: ``mean_i(w_i * loss_i)``."""
    return (weights * losses).mean()


def evaluate(
    model: nn.Module,
    dataset: IndexedDataset,
    device: torch.device,
    batch_size: int = 1024,
    dist: DistView | None = None,
) -> tuple[float, float]:
    """Accuracy and mean cross-entropy of ``model`` on ``dataset`` (eval mode, no grad).

    In a distributed run (``dist`` with ``world_size`` > 1) rank ``r`` evaluates the examples
    ``r, r + W, ...``, the sums are all-reduced and every rank returns the same figures.
    Buffers (batch-norm statistics) are taken from rank 0 first, so the evaluated model is
    rank 0's.
    """
    dist = dist or DistView()
    world = dist.world_size
    if world > 1:
        with torch.no_grad():
            for buf in model.buffers():
                buf.copy_(dist.broadcast(buf, 0))
    was = model.training
    model.eval()
    correct, loss_sum, n = 0, 0.0, len(dataset)
    rows = torch.arange(dist.rank, n, world) if world > 1 else None
    m = n if rows is None else int(rows.shape[0])
    try:
        with torch.no_grad():
            for s in range(0, m, batch_size):
                idx = torch.arange(s, min(m, s + batch_size)) if rows is None else rows[s : s + batch_size]
                x, y = dataset.get(idx)
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                z = model(x).float()
                loss_sum += float(F.cross_entropy(z, y, reduction="sum"))
                correct += int((z.argmax(1) == y).sum())
    finally:
        model.train(was)
    if world > 1:
        tot = dist.all_reduce(torch.tensor([float(correct), loss_sum], dtype=torch.float64), "sum")
        correct, loss_sum = int(round(float(tot[0]))), float(tot[1])
    return (correct / n, loss_sum / n) if n else (float("nan"), float("nan"))


def jsonable(obj: Any) -> Any:
    """``obj`` with tensors and NumPy values turned into Python numbers and lists."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().tolist()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


@dataclass(eq=False)
class LoopState:
    """Everything a run carries from one step to the next; :meth:`state_dict` is its checkpoint.

    The model, the optimiser, the strategy, the generators, the work meters, the clock and the
    observers keep state of their own; the loop's own is the rest.

    Attributes:
        model: The bare model.
        optimizer: The optimiser.
        strategy: The strategy's hooks.
        generators: The run's generators: ``strategy``, ``batches``, ``augment``.
        meters: The strategy's work meters.
        clock: The run's timings.
        observers: The run's observers.
        dist: The distributed view.
        step_rows: Rows of one global training step.
        view: The strategy's view of the run (step, pseudo-epoch, LR, selections made).
        step: Steps done (the next step to take).
        selection: The current selection (this rank's when rank-local).
        union: The current selection of the whole run (the ranks' joined; ``selection`` on one).
        stream: The current selection's batches.
        history: One row per evaluation (``RunResult.history``).
        selection_log: One entry per selection (``RunResult.selections["log"]``).
        counters: ``backprop_examples`` and ``steps``.
        loss_sum: Sum of the training losses since the last evaluation (not checkpointed).
        loss_n: Their number (not checkpointed).
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    strategy: StrategyHooks
    generators: dict[str, torch.Generator]
    meters: WorkMeters
    clock: Stopwatch
    observers: list[LoopObserver]
    dist: DistView
    step_rows: int
    view: TrainState
    step: int = 0
    selection: Selection | None = None
    union: Selection | None = None
    stream: BatchStream | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    selection_log: list[dict[str, Any]] = field(default_factory=list)
    counters: dict[str, int] = field(default_factory=lambda: {"backprop_examples": 0, "steps": 0})
    loss_sum: float = 0.0
    loss_n: int = 0

    # ------------------------------------------------------------------ selections
    def adopt(self, sel: Selection) -> bool:
        """Make ``sel`` the current selection, or grow the current one by it (``sel.extends``).

        Returns True when the current selection grew. Every rank takes part (a collective).
        """
        part = union_selection(self.dist, sel)
        if not sel.extends:
            self.selection, self.union, self.stream = sel, part, self._stream(sel)
            self.view.selections += 1
            return False
        if self.selection is None or self.selection.batches is None:
            raise SelectionError(
                f"Strategy {self.strategy.name!r} returned a selection with extends=True, but the "
                f"current selection has no batch plan to extend; return a new "
                f"selection with a batch plan first."
            )
        self.selection = _merge(self.selection, sel)
        self.stream.extend(self.selection, len(sel.batches))
        self.union = self.selection if self.dist.world_size == 1 else _merge(self.union, part)
        return True

    def log_selection(self, sel: Selection, extended: bool, seconds: float) -> None:
        """Record the selection just adopted (or the growth of the current one) in the log."""
        union = self.union
        if not extended:
            self.selection_log.append(
                {
                    "step": self.view.step,
                    "epoch": self.view.epoch,
                    "size": len(union),
                    "unique": int(torch.unique(union.indices).numel()),
                    "seconds": seconds,
                    "diagnostics": jsonable(sel.diagnostics),
                }
            )
            return
        entry = self.selection_log[-1]
        entry["size"] = len(union)
        entry["unique"] = int(torch.unique(union.indices).numel())
        entry["seconds"] += seconds
        entry["extensions"] = entry.get("extensions", 0) + 1
        if sel.diagnostics:
            entry["diagnostics"] = {**entry["diagnostics"], **jsonable(sel.diagnostics)}

    def _stream(self, sel: Selection) -> BatchStream:
        # replicated selections: global batches of step_rows, each rank takes its share;
        # rank-local ones: this rank's rows only
        world = self.dist.world_size
        rows = self.step_rows // world if (world > 1 and sel.rank_local) else self.step_rows
        return BatchStream(sel, rows, self.generators["batches"])

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """The checkpoint's body: the loop's state and that of every part it holds."""
        sel = self.selection
        out = {
            "step": self.step,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "strategy": self.strategy.call("state_dict"),
            "generators": {k: g.get_state() for k, g in self.generators.items()},
            "torch_rng": torch.get_rng_state(),
            "meters": self.meters.state_dict(),
            "selection": None
            if sel is None
            else {
                "indices": sel.indices,
                "weights": sel.weights,
                "batches": sel.batches,
                "diagnostics": sel.diagnostics,
                "rank_local": sel.rank_local,
            },
            "stream": self.stream.state_dict() if self.stream is not None else None,
            "history": self.history,
            "selection_log": self.selection_log,
            "times": dict(self.clock.times),
            "counters": dict(self.counters),
            "analytics": None,  # always present (format 1); the observer of that name fills it
            "elapsed": self.clock.total(),
        }
        out.update({obs.name: obs.state_dict() for obs in self.observers})
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from :meth:`state_dict` (every rank takes part in a distributed run)."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.strategy.call("load_state_dict", state["strategy"])
        for k, g in self.generators.items():
            g.set_state(state["generators"][k].cpu())
        torch.set_rng_state(state["torch_rng"].cpu())
        self.meters.load_state_dict(state["meters"])
        s = state["selection"]
        if s is not None:
            batches = None if s["batches"] is None else [b.cpu() for b in s["batches"]]
            self.selection = Selection(s["indices"].cpu(), s["weights"].cpu(), batches, s["diagnostics"])
            self.selection.rank_local = bool(s.get("rank_local", False))
            self.stream = self._stream(self.selection)
            stream = dict(state["stream"])
            stream["order"] = None if stream["order"] is None else stream["order"].cpu()
            self.stream.load_state_dict(stream)
            self.union = union_selection(self.dist, self.selection)
        self.history, self.selection_log = list(state["history"]), list(state["selection_log"])
        for obs in self.observers:
            if state.get(obs.name) is not None:
                obs.load_state_dict(state[obs.name])
        self.clock.load_state_dict(state)
        self.counters.update(state["counters"])
        self.step = int(state["step"])
        self.view.selections = len(self.selection_log)


class Loop:
    """One run's fixed parts and the steps :meth:`subsetlab.trainer.Trainer.fit` takes.

    Builds, in order: the data on the device (when it fits), the budget, the model on the
    device (DDP-wrapped in a distributed run), the optimiser, the work meters, the run's
    generators, the strategy's :class:`~subsetlab.protocol.SelectionContext` and the
    :class:`LoopState`.

    Args:
        config: The trainer's config.
        dist: The distributed view.
        strategy: The strategy (its ``setup`` is not called here).
        model: The model.
        data: Train / val / test splits.
        seed: The run seed.
        device: The training device.
        clock: The run's timings.
    """

    def __init__(
        self,
        config: TrainerConfig,
        dist: DistView,
        strategy: SelectionStrategy,
        model: nn.Module,
        data: DataSplits,
        seed: int,
        device: torch.device,
        clock: Stopwatch,
    ) -> None:
        cfg = self.config = config
        self.dist, self.device, self.clock = dist, device, clock
        on_device = device.type != "cpu" and data.train.nbytes() < DEVICE_DATA_LIMIT
        self.train = data.train.to(device) if on_device else data.train
        val = data.val.to(device) if (on_device and data.val is not None) else data.val
        self.test = data.test.to(device) if on_device else data.test
        caps = strategy.capabilities_for(strategy.config)
        self.budget = budget = Budget.make(len(self.train), cfg.fraction, cfg.batch_size, cfg.epochs, caps.budget)
        model.to(device)
        self.net = _ddp(model, device) if dist.world_size > 1 else model
        optimizer = torch.optim.SGD(
            model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=cfg.nesterov
        )
        meters = WorkMeters(device)
        gens = {name: torch_generator(seed, name) for name in ("strategy", "batches", "augment")}
        dtype = torch.float16 if cfg.embed_dtype == "float16" else torch.float32
        self.context = SelectionContext(
            train=self.train,
            val=val,
            model=model,
            loss_fn=lambda z, y: F.cross_entropy(z, y, reduction="none"),
            embedder=GradientEmbedder(model, device, cfg.embed_batch_size, dtype),
            device=device,
            generator=gens["strategy"],
            seed=seed,
            budget=budget,
            dist=dist,
            meters=meters,
        )
        self.hooks = StrategyHooks(strategy, budget, len(self.train), dist, cfg.normalize_weights)
        view = TrainState(0, 0, budget.steps_per_epoch, budget.total_steps, cfg.lr, model, 0)
        # rows per step: B, or the whole budget when it is smaller than one batch, so that every
        # strategy (SGD-truncated's full-size selection included) spends f*N*E backprops
        step_rows = min(cfg.batch_size, budget.subset_size)
        self.state = LoopState(model, optimizer, self.hooks, gens, meters, clock, [], dist, step_rows, view)

    @property
    def observers(self) -> list[LoopObserver]:
        """The run's observers, in the order they are called."""
        return self.state.observers

    def observe(self, observer: LoopObserver) -> None:
        """Add an observer; its calls are timed as the part ``observer.name``."""
        self.state.observers.append(observer)
        self.clock.times.setdefault(observer.name, 0.0)

    def begin_step(self, step: int) -> None:
        """Set step ``step``'s learning rate and the strategy's view of the run."""
        lr = lr_at(step, self.budget.schedule_steps_per_epoch, self.config)
        for group in self.state.optimizer.param_groups:
            group["lr"] = lr
        view = self.state.view
        view.step, view.epoch, view.lr = step, step // self.budget.steps_per_epoch, lr

    def select_if_due(self) -> None:
        """Select before the first step and whenever the strategy asks to; log the selection, tell the observers."""
        state = self.state
        with self.clock.part("select") as lap:
            if state.selection is not None and not self.hooks.call("should_select", state.view):
                return
            sel = self.hooks.select(state.view)
            extended = state.adopt(sel)
            state.log_selection(sel, extended, lap.elapsed())
        for obs in self.observers:
            with self.clock.part(obs.name):
                obs.on_selection(state.view.step, state.union, extended)

    def train_step(self) -> tuple[StepInfo, float]:
        """One weighted step on the next batch: this rank's batch and the step's loss (the ranks' mean).

        Raises :class:`~subsetlab.errors.TrainingDiverged` on a non-finite loss.
        """
        state, dist, device = self.state, self.dist, self.device
        with self.clock.part("train"):
            pos = state.stream.next()
            if dist.world_size > 1 and not state.selection.rank_local:
                pos = pos.tensor_split(dist.world_size)[dist.rank]
            idx = state.selection.indices.index_select(0, pos)
            w = state.selection.weights.index_select(0, pos).to(device, non_blocking=True)
            x, y = self.train.get(idx)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if self.train.augment is not None:
                x = self.train.augment(x, state.generators["augment"])
            if not state.model.training:  # hooks and evaluation restore the mode they found; 0.4 ms a call
                state.model.train()
            logits = self.net(x)
            losses = F.cross_entropy(logits.float(), y, reduction="none")
            loss = weighted_loss(losses, w)
            local = float(loss.detach())
            value = self._check_loss(loss, local)
            state.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if self.hooks.after_backward:
                with self.clock.part("select"):  # the strategy's time, not training's
                    self.hooks.call("on_after_backward", state.view)
            state.optimizer.step()
            state.counters["backprop_examples"] += int(idx.shape[0])
            state.counters["steps"] += 1
            state.loss_sum += value
            state.loss_n += 1
        info = StepInfo(idx.to(device), w, losses.detach(), logits.detach().argmax(1) == y, local)
        return info, value

    def _check_loss(self, loss: torch.Tensor, local: float) -> float:
        """The step's loss (``local`` on one process, the ranks' mean otherwise), checked finite."""
        # every rank must see the same value to take the same branch (no hang)
        value = float(self.dist.all_reduce(loss.detach().double().reshape(1), "mean")) if self.dist.world_size > 1 else local
        if not math.isfinite(value):
            view = self.state.view
            raise TrainingDiverged(
                f"Training loss became {value} at step {view.step} (pseudo-epoch "
                f"{view.epoch}, lr {view.lr:.4g}); lower the learning rate or check the data.",
                view.step,
            )
        return value

    def feedback(self, info: StepInfo) -> None:
        """The strategy's ``on_step_end``, then the observers' ``on_step``."""
        with self.clock.part("select"):
            self.hooks.call("on_step_end", self.state.view, info)
        for obs in self.observers:
            with self.clock.part(obs.name):
                obs.on_step(self.state.view.step, info)

    def check_time(self) -> None:
        """Raise :class:`RunTimeout` past ``max_seconds`` (every rank agrees)."""
        limit = self.config.max_seconds
        if limit is None:
            return
        over = self.clock.total() > limit
        if self.dist.world_size > 1:
            over = bool(self.dist.all_reduce(torch.tensor([float(over)]), "max") > 0)
        if over:
            raise RunTimeout(f"Run exceeded max_seconds={limit} at step {self.state.view.step}.")

    def evaluate(self) -> float:
        """Evaluate on the test split, add a row to the history; the test accuracy."""
        state, view = self.state, self.state.view
        with self.clock.part("eval"):
            acc, loss = evaluate(state.model, self.test, self.device, self.config.eval_batch_size, self.dist)
        state.history.append(
            {
                "epoch": view.epoch,
                "step": view.step + 1,
                "lr": view.lr,
                "train_loss": state.loss_sum / max(1, state.loss_n),
                "test_acc": acc,
                "test_loss": loss,
                "wall": self.clock.total(),
                "selections": view.selections,
            }
        )
        state.loss_sum, state.loss_n = 0.0, 0
        return acc


def _ddp(model: nn.Module, device: torch.device) -> nn.Module:
    from torch.nn.parallel import DistributedDataParallel

    ids = None
    if device.type == "cuda":  # "cuda" means the rank's current device (set by distributed.init)
        ids = [device.index if device.index is not None else torch.cuda.current_device()]
    return DistributedDataParallel(model, device_ids=ids)


def _merge(selection: Selection, ext: Selection) -> Selection:
    """``selection`` grown by the rows and batches of ``ext`` (positions offset past its rows)."""
    k0 = len(selection)
    batches = None
    if selection.batches is not None and ext.batches is not None:
        batches = list(selection.batches) + [b + k0 for b in ext.batches]
    return Selection(
        torch.cat([selection.indices, ext.indices]),
        torch.cat([selection.weights, ext.weights.to(selection.weights.dtype)]),
        batches,
        dict(selection.diagnostics),
        selection.rank_local,
    )


def union_selection(dv: DistView, selection: Selection) -> Selection:
    """The selection of the whole run: this one, or the ranks' rank-local selections joined.

    Every rank takes part (a collective) when the run is distributed.
    """
    if dv.world_size == 1:
        return selection
    flag = float(dv.all_reduce(torch.tensor([float(selection.rank_local)]), "max"))
    if flag == 0.0:
        return selection
    idx = all_gather_cat(dv, selection.indices.cpu())
    w = all_gather_cat(dv, selection.weights.cpu().float())
    return Selection(idx, w, None, dict(selection.diagnostics))
