"""The one training loop every strategy runs under.

The trainer owns the budget, the weighted loss, the optimiser, the LR schedule, evaluation,
timing, checkpoints and failure handling; a strategy only answers ``should_select`` and
``select`` (see :mod:`subsetlab.protocol`).
"""

from __future__ import annotations

import math
import os
import resource
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from subsetlab.allocator import tune_cpu_allocator
from subsetlab.analytics import SelectionAnalytics
from subsetlab.config import TrainerConfig
from subsetlab.data.base import DataSplits, IndexedDataset
from subsetlab.embeddings import GradientEmbedder
from subsetlab.errors import (
    CheckpointError,
    DataError,
    SelectionError,
    StrategyFailure,
    SubsetlabError,
    TrainingDiverged,
)
from subsetlab.protocol import (
    Budget,
    DistView,
    Selection,
    SelectionContext,
    SelectionStrategy,
    StepInfo,
    TrainState,
    WorkMeters,
    _sync,
)
from subsetlab.schedule import lr_at
from subsetlab.seeding import derive_seed, torch_generator

__all__ = [
    "Trainer",
    "RunResult",
    "BatchStream",
    "evaluate",
    "resolve_device",
    "weighted_loss",
    "CHECKPOINT_FORMAT",
    "jsonable",
]

CHECKPOINT_FORMAT = 1
#: Datasets smaller than this are copied to the accelerator once instead of per batch.
DEVICE_DATA_LIMIT = 2 * 1024**3

Progress = Callable[[int, int, dict[str, Any]], None]


class RunTimeout(SubsetlabError, TimeoutError):
    """A run exceeded ``TrainerConfig.max_seconds``."""


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` → CUDA when available (then MPS), else CPU; other values as given."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DataError(f"device={device!r} was requested but CUDA is not available; use device='auto' or 'cpu'.")
    return dev


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


class BatchStream:
    """Turns a :class:`Selection` into an endless sequence of mini-batches (positions).

    With a batch plan, the plan's batches are served in a fresh random order on every pass;
    batches added by :meth:`extend` are served first, in the order they were added.
    Without one, rows are served from back-to-back random permutations, ``min(B, k)`` at a time,
    so every step trains on exactly the same number of examples.
    """

    def __init__(self, selection: Selection, batch_size: int, generator: torch.Generator) -> None:
        self.selection = selection
        self.batch_size = min(batch_size, len(selection))
        self.generator = generator
        self.order: torch.Tensor | None = None
        self.cursor = 0
        self.queue: list[int] = []  # plan batches to serve next (added by extend), in order

    def extend(self, selection: Selection, added: int) -> None:
        """Serve ``selection`` (the current one grown by ``added`` plan batches at its end).

        The added batches come next, in order; the random passes over the whole plan start
        afresh after them.
        """
        n = len(selection.batches)
        self.selection = selection
        self.queue.extend(range(n - added, n))
        self.order, self.cursor = None, 0

    def _refill(self) -> None:
        n = len(self.selection.batches) if self.selection.batches is not None else len(self.selection)
        self.order = torch.randperm(n, generator=self.generator)
        self.cursor = 0

    def next(self) -> torch.Tensor:
        """Positions (into the selection) of the next mini-batch."""
        plan = self.selection.batches
        if plan is not None:
            if self.queue:
                return plan[self.queue.pop(0)]
            if self.order is None or self.cursor >= len(plan):
                self._refill()
            b = plan[int(self.order[self.cursor])]
            self.cursor += 1
            return b
        parts, need = [], self.batch_size
        while need:
            if self.order is None or self.cursor >= len(self.order):
                self._refill()
            take = self.order[self.cursor : self.cursor + need]
            self.cursor += int(take.shape[0])
            need -= int(take.shape[0])
            parts.append(take)
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def state_dict(self) -> dict[str, Any]:
        """Checkpointable state."""
        return {"order": self.order, "cursor": self.cursor, "queue": list(self.queue)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.order, self.cursor = state["order"], int(state["cursor"])
        self.queue = [int(q) for q in state.get("queue", [])]


@dataclass
class RunResult:
    """Everything one run produced; ``to_dict()`` is what the results store writes.

    Attributes:
        strategy: Strategy name.
        status: ``"ok"`` or ``"failed"``.
        error: Failure reason (None when ok).
        failed_step: Step at which the run failed, if it did.
        metrics: ``final_acc``, ``best_acc``, ``final_loss`` on the test split.
        history: One row per evaluation: ``epoch``, ``step``, ``lr``, ``train_loss``,
            ``test_acc``, ``test_loss``, ``wall`` (seconds since start), ``selections``.
        timings: Wall seconds: ``total``, ``setup`` (before the first step: data and model to
            the device, the optimiser (the first one a process creates imports
            ``torch._dynamo``, about 2 s on 2 CPU cores), the strategy's ``setup``, a
            checkpoint's loading), ``train`` (training steps), ``select`` (every strategy
            hook), ``eval``, ``checkpoint``, ``analytics`` (when on), ``other`` (the rest:
            bookkeeping between the parts); ``strategy`` holds the strategy's own components.
        work: ``steps``, ``backprop_examples`` (the budget), the strategy's extra
            ``forward_examples``, ``backward_examples``, ``hvp_examples``; with
            ``analytics="full"`` also ``analytics_forward_examples``.
        selections: ``count``, ``sizes``, and ``log`` (one entry per selection: ``step``,
            ``epoch``, ``size``, ``unique``, ``seconds``, ``diagnostics``).
        series: Time series the strategy recorded (``name -> [(step, value), ...]``).
        budget: The :class:`~subsetlab.protocol.Budget` as a dict.
        peak_memory_bytes: Peak accelerator memory, or the process's peak RSS on CPU.
        analytics: Selection analytics (``TrainerConfig.analytics``; empty when ``"off"``):
            ``mode``, per-selection ``selections`` rows, per-pseudo-epoch ``epochs`` rows and
            a per-run ``summary`` (see :class:`~subsetlab.analytics.SelectionAnalytics`).
        world_size: Processes that trained the run (1 unless distributed). In a distributed
            run ``work`` sums every rank's examples, ``timings`` and ``peak_memory_bytes`` are
            this rank's, and ``selections``/``analytics`` describe the union of the ranks'
            selections (a failed distributed run's ``work`` is this rank's alone).
    """

    strategy: str
    status: str = "ok"
    error: str | None = None
    failed_step: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    timings: dict[str, Any] = field(default_factory=dict)
    work: dict[str, int] = field(default_factory=dict)
    selections: dict[str, Any] = field(default_factory=dict)
    series: dict[str, list] = field(default_factory=dict)
    budget: dict[str, Any] = field(default_factory=dict)
    peak_memory_bytes: int = 0
    analytics: dict[str, Any] = field(default_factory=dict)
    world_size: int = 1

    @property
    def ok(self) -> bool:
        """True when the run finished."""
        return self.status == "ok"

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict."""
        return asdict(self)


class Trainer:
    """Train a model under a strategy with a fixed budget and schedule.

    Args:
        config: The :class:`~subsetlab.config.TrainerConfig`.
        checkpoint_path: Where to write checkpoints (every ``config.checkpoint_every``
            pseudo-epochs) and resume from.
        progress: Optional callback ``progress(step_done, total_steps, info)`` called after
            every step; ``info`` carries ``loss`` and, at evaluations, ``test_acc``.
        dist: The distributed view (single process by default).
    """

    def __init__(
        self,
        config: TrainerConfig | None = None,
        *,
        checkpoint_path: str | os.PathLike | None = None,
        progress: Progress | None = None,
        dist: DistView | None = None,
    ) -> None:
        self.config = config or TrainerConfig()
        self.checkpoint_path = Path(checkpoint_path) if checkpoint_path is not None else None
        self.progress = progress
        self.dist = dist or DistView()

    # ------------------------------------------------------------------ public
    def fit(
        self,
        strategy: SelectionStrategy,
        model: nn.Module,
        data: DataSplits,
        seed: int = 0,
        *,
        run_key: str = "",
        resume: bool = True,
        stop_after_steps: int | None = None,
    ) -> RunResult:
        """Train ``model`` on ``data.train`` under ``strategy``; return a :class:`RunResult`.

        Divergence (NaN/inf loss), a failing strategy hook, an invalid selection and a timeout
        end the run with ``status="failed"`` and the reason; nothing is raised for those.
        A model that does not fit subsetlab (its output is not the logits of its last
        ``nn.Linear``, e.g. it ends in a softmax) raises :class:`~subsetlab.errors.ConfigError`
        from :func:`~subsetlab.models.check_model` before training starts.
        Invalid inputs raise :class:`~subsetlab.errors.DataError` before training starts: an
        empty training or test split, a validation or test split whose feature shape differs
        from the training split's or whose labels reach past its classes, a missing or empty
        validation split for a strategy that needs one, a CUDA device that is not there.
        (Non-finite features and non-integer or out-of-range labels are already refused by
        :class:`~subsetlab.data.base.IndexedDataset`.)

        Documented fallbacks, not errors:

        * A budget smaller than one batch (``ceil(f*N) < B``): each pseudo-epoch is one step on
          ``min(B, ceil(f*N))`` examples; every strategy trains that many per step.
        * A budget smaller than the number of classes: per-class strategies give the
          largest-remainder classes one example each, so some classes go unselected in that
          selection.
        * A class with no training example (possible with hand-built splits;
          :func:`~subsetlab.data.load_data` and :func:`~subsetlab.data.make_splits` refuse
          it): per-class strategies skip the class. A class with fewer examples than its
          proportional quota gets all its examples and the remainder goes to other classes.
        * A validation split that misses some classes, even one of a single example: a
          strategy that needs one (Glister) still runs; its validation objective only sees
          the classes present.

        Args:
            strategy: A strategy instance (fresh: ``setup`` is called here).
            model: The model, initialised (the same initial weights for every strategy).
            data: Train / val / test splits.
            seed: Run seed; batches, augmentation and the strategy's generator derive from it.
            run_key: Identifies the run in checkpoints (a checkpoint of another run is ignored).
            resume: Resume from ``checkpoint_path`` when a matching checkpoint exists. It is
                read with ``torch.load(weights_only=True)``; a file that cannot be read that way
                (tampered with, corrupt, not subsetlab's) raises
                :class:`~subsetlab.errors.CheckpointError` before anything in it runs, and a
                checkpoint of another run (``run_key``) is ignored.
            stop_after_steps: Stop (as if interrupted) after this many global steps; for tests
                of checkpoint/resume.
        """
        cfg = self.config
        caps = strategy.capabilities_for(strategy.config)
        name = strategy.name
        _check_splits(data)
        from subsetlab.models.check import check_model  # logits from the last nn.Linear, no softmax

        check_model(model, data.train.input_shape, data.train.num_classes)
        if caps.needs_validation and (data.val is None or len(data.val) == 0):
            raise DataError(
                f"Strategy {name!r} needs a validation split, but the data has none. Set "
                f"data.val_fraction > 0 (e.g. 0.1)."
            )
        world = self.dist.world_size
        if world > 1:
            if not caps.supports_distributed:
                why = f" {caps.distributed_note.rstrip('.')}." if caps.distributed_note else ""
                raise SelectionError(
                    f"Strategy {name!r} does not support distributed training (world size "
                    f"{world}).{why} Run it in a single process (without --nproc / torchrun)."
                )
            b = Budget.make(len(data.train), cfg.fraction, cfg.batch_size, cfg.epochs, caps.budget)
            rows = min(b.batch_size, b.subset_size)
            if rows % world:
                raise DataError(
                    f"In a distributed run the global batch of {rows} rows per step is split evenly "
                    f"over the {world} ranks, and {rows} is not a multiple of {world}. Use a "
                    f"trainer.batch_size divisible by {world}."
                )
        device = resolve_device(cfg.device)
        if device.type == "cpu" and cfg.cpu_allocator == "tuned":
            tune_cpu_allocator()
        cuda_devices = [device.index or 0] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda_devices):
            torch.manual_seed(derive_seed(seed, "torch-global"))
            return self._fit(strategy, model, data, seed, device, run_key, resume, stop_after_steps)

    # ----------------------------------------------------------------- internals
    def _fit(self, strategy, model, data, seed, device, run_key, resume, stop_after_steps) -> RunResult:
        cfg = self.config
        name = strategy.name
        t_start = time.perf_counter()
        on_device = device.type != "cpu" and data.train.nbytes() < DEVICE_DATA_LIMIT
        train = data.train.to(device) if on_device else data.train
        val = data.val.to(device) if (on_device and data.val is not None) else data.val
        test = data.test.to(device) if on_device else data.test
        budget = Budget.make(len(train), cfg.fraction, cfg.batch_size, cfg.epochs, strategy.capabilities_for(strategy.config).budget)
        S, total = budget.steps_per_epoch, budget.total_steps
        # rows per step: B, or the whole budget when it is smaller than one batch, so that every
        # strategy (SGD-truncated's full-size selection included) spends f*N*E backprops
        step_rows = min(cfg.batch_size, budget.subset_size)
        model.to(device)
        dv = self.dist
        world, rank = dv.world_size, dv.rank
        net: nn.Module = model
        if world > 1:
            from torch.nn.parallel import DistributedDataParallel

            ids = None
            if device.type == "cuda":  # "cuda" means the rank's current device (set by distributed.init)
                ids = [device.index if device.index is not None else torch.cuda.current_device()]
            net = DistributedDataParallel(model, device_ids=ids)
        rank_rows = step_rows // world

        def new_stream(sel: Selection) -> BatchStream:
            # replicated selections: global batches of step_rows, each rank takes its share;
            # rank-local ones: this rank's rows only
            return BatchStream(sel, rank_rows if (world > 1 and sel.rank_local) else step_rows, gens["batches"])

        optimizer = torch.optim.SGD(
            model.parameters(),
            lr=cfg.lr,
            momentum=cfg.momentum,
            weight_decay=cfg.weight_decay,
            nesterov=cfg.nesterov,
        )
        dtype = torch.float16 if cfg.embed_dtype == "float16" else torch.float32
        meters = WorkMeters(device)
        gens = {
            "strategy": torch_generator(seed, "strategy"),
            "batches": torch_generator(seed, "batches"),
            "augment": torch_generator(seed, "augment"),
        }
        ctx = SelectionContext(
            train=train,
            val=val,
            model=model,
            loss_fn=lambda z, y: F.cross_entropy(z, y, reduction="none"),
            embedder=GradientEmbedder(model, device, cfg.embed_batch_size, dtype),
            device=device,
            generator=gens["strategy"],
            seed=seed,
            budget=budget,
            dist=self.dist,
            meters=meters,
        )
        result = RunResult(strategy=name, budget=asdict(budget))
        times = {"setup": 0.0, "train": 0.0, "select": 0.0, "eval": 0.0, "checkpoint": 0.0}
        analytics = None if (cfg.analytics == "off" or not dv.is_main) else SelectionAnalytics(
            train, budget, device, cfg.analytics, model, cfg.eval_batch_size
        )
        if cfg.analytics != "off":
            times["analytics"] = 0.0
        counters = {"backprop_examples": 0, "steps": 0}
        history: list[dict[str, Any]] = []
        sel_log: list[dict[str, Any]] = []
        state = TrainState(0, 0, S, total, cfg.lr, model, 0)
        selection: Selection | None = None
        everyone: Selection | None = None  # the selection's union over the ranks (selection itself on one)
        after_backward = type(strategy).on_after_backward is not SelectionStrategy.on_after_backward
        hook_s = 0.0  # seconds in on_after_backward during the current step (strategy time, not training)
        stream: BatchStream | None = None
        start_step, elapsed_before = 0, 0.0
        loss_sum, loss_n = 0.0, 0
        step = 0
        try:
            self._hook(name, "setup", strategy.setup, ctx)
            ckpt = self._load_checkpoint(run_key, device) if resume else None
            if ckpt is not None:
                model.load_state_dict(ckpt["model"])
                optimizer.load_state_dict(ckpt["optimizer"])
                self._hook(name, "load_state_dict", strategy.load_state_dict, ckpt["strategy"])
                for k, g in gens.items():
                    g.set_state(ckpt["generators"][k])
                torch.set_rng_state(ckpt["torch_rng"])
                meters.load_state_dict(ckpt["meters"])
                s = ckpt["selection"]
                if s is not None:
                    selection = Selection(s["indices"], s["weights"], s["batches"], s["diagnostics"])
                    selection.rank_local = bool(s.get("rank_local", False))
                    stream = new_stream(selection)
                    stream.load_state_dict(ckpt["stream"])
                    everyone = _union_selection(dv, selection)
                history, sel_log = list(ckpt["history"]), list(ckpt["selection_log"])
                if analytics is not None and ckpt.get("analytics") is not None:
                    analytics.load_state_dict(ckpt["analytics"])
                times.update(ckpt["times"])
                counters.update(ckpt["counters"])
                start_step, elapsed_before = int(ckpt["step"]), float(ckpt["elapsed"])
                state.selections = len(sel_log)
            times["setup"] = times.get("setup", 0.0) + time.perf_counter() - t_start  # resumed: both runs' setups
            for step in range(start_step, total):
                if stop_after_steps is not None and step >= stop_after_steps:
                    break
                lr = lr_at(step, budget.schedule_steps_per_epoch, cfg)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                state.step, state.epoch, state.lr = step, step // S, lr

                # --- strategy: decide and select (timed as "select")
                _sync(device)
                t0 = time.perf_counter()
                new_sel = extended = False
                if selection is None or self._hook(name, "should_select", strategy.should_select, state):
                    sel = self._select(strategy, state, len(train), budget)
                    part = _union_selection(dv, sel)
                    if sel.extends:
                        if selection is None or selection.batches is None:
                            raise SelectionError(
                                f"Strategy {name!r} returned a selection with extends=True, but the "
                                f"current selection has no batch plan to extend; return a new "
                                f"selection with a batch plan first."
                            )
                        selection = _merge(selection, sel)
                        stream.extend(selection, len(sel.batches))
                        everyone = selection if world == 1 else _merge(everyone, part)
                        extended = True
                    else:
                        selection, everyone = sel, part
                        stream = new_stream(selection)
                        state.selections += 1
                        new_sel = True
                    _sync(device)
                    secs = time.perf_counter() - t0
                    if new_sel:
                        sel_log.append(
                            {
                                "step": step,
                                "epoch": state.epoch,
                                "size": len(everyone),
                                "unique": int(torch.unique(everyone.indices).numel()),
                                "seconds": secs,
                                "diagnostics": jsonable(selection.diagnostics),
                            }
                        )
                    else:
                        entry = sel_log[-1]
                        entry["size"] = len(everyone)
                        entry["unique"] = int(torch.unique(everyone.indices).numel())
                        entry["seconds"] += secs
                        entry["extensions"] = entry.get("extensions", 0) + 1
                        if sel.diagnostics:
                            entry["diagnostics"] = {**entry["diagnostics"], **jsonable(sel.diagnostics)}
                _sync(device)
                t1 = time.perf_counter()
                times["select"] += t1 - t0
                if analytics is not None and (new_sel or extended):
                    if new_sel:
                        analytics.on_selection(step, everyone)
                    else:
                        analytics.on_extend(step, everyone)
                    _sync(device)
                    times["analytics"] += time.perf_counter() - t1
                    t1 = time.perf_counter()

                # --- one weighted training step
                pos = stream.next()
                if world > 1 and not selection.rank_local:
                    pos = pos.tensor_split(world)[rank]
                idx = selection.indices.index_select(0, pos)
                w = selection.weights.index_select(0, pos).to(device, non_blocking=True)
                x, y = train.get(idx)
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                if train.augment is not None:
                    x = train.augment(x, gens["augment"])
                if not model.training:  # hooks and evaluation restore the mode they found; 0.4 ms a call
                    model.train()
                logits = net(x)
                losses = F.cross_entropy(logits.float(), y, reduction="none")
                loss = weighted_loss(losses, w)
                # every rank must see the same value to take the same branch (no hang)
                loss_value = float(dv.all_reduce(loss.detach().double().reshape(1), "mean")) if world > 1 else float(loss.detach())
                if not math.isfinite(loss_value):
                    raise TrainingDiverged(
                        f"Training loss became {loss_value} at step {step} (pseudo-epoch "
                        f"{state.epoch}, lr {lr:.4g}); lower the learning rate or check the data.",
                        step,
                    )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if after_backward:
                    _sync(device)
                    t6 = time.perf_counter()
                    self._hook(name, "on_after_backward", strategy.on_after_backward, state)
                    _sync(device)
                    hook_s += time.perf_counter() - t6
                optimizer.step()
                counters["backprop_examples"] += int(idx.shape[0])
                counters["steps"] += 1
                loss_sum += loss_value
                loss_n += 1
                _sync(device)
                t2 = time.perf_counter()
                times["train"] += t2 - t1 - hook_s
                times["select"] += hook_s
                hook_s = 0.0

                # --- strategy: per-step feedback (timed as "select")
                info = StepInfo(
                    idx.to(device),
                    w,
                    losses.detach(),
                    (logits.detach().argmax(1) == y),
                    float(loss.detach()),
                )
                self._hook(name, "on_step_end", strategy.on_step_end, state, info)
                _sync(device)
                times["select"] += time.perf_counter() - t2
                if cfg.analytics != "off":
                    t5 = time.perf_counter()
                    merged = _union_step(dv, info)  # a collective: every rank takes part
                    if analytics is not None:
                        analytics.on_step(step, merged)
                    _sync(device)
                    times["analytics"] += time.perf_counter() - t5

                done = step + 1
                elapsed = elapsed_before + time.perf_counter() - t_start
                over = cfg.max_seconds is not None and elapsed > cfg.max_seconds
                if world > 1 and cfg.max_seconds is not None:
                    over = bool(dv.all_reduce(torch.tensor([float(over)]), "max") > 0)
                if over:
                    raise RunTimeout(f"Run exceeded max_seconds={cfg.max_seconds} at step {step}.")
                info_d: dict[str, Any] = {"loss": loss_value}
                if done % S == 0 or done == total:
                    epoch = step // S
                    if (epoch + 1) % cfg.eval_every == 0 or done == total:
                        t3 = time.perf_counter()
                        acc, tloss = evaluate(model, test, device, cfg.eval_batch_size, dv)
                        _sync(device)
                        times["eval"] += time.perf_counter() - t3
                        history.append(
                            {
                                "epoch": epoch,
                                "step": done,
                                "lr": lr,
                                "train_loss": loss_sum / max(1, loss_n),
                                "test_acc": acc,
                                "test_loss": tloss,
                                "wall": elapsed_before + time.perf_counter() - t_start,
                                "selections": state.selections,
                            }
                        )
                        loss_sum, loss_n = 0.0, 0
                        info_d["test_acc"] = acc
                    if (
                        self.checkpoint_path is not None
                        and cfg.checkpoint_every is not None
                        and (epoch + 1) % cfg.checkpoint_every == 0
                        and done < total
                    ):
                        t4 = time.perf_counter()
                        self._save_checkpoint(
                            run_key, done, model, optimizer, strategy, gens, meters, selection,
                            stream, history, sel_log, times, counters,
                            elapsed_before + time.perf_counter() - t_start, analytics,
                        )
                        times["checkpoint"] += time.perf_counter() - t4
                if self.progress is not None and self.dist.is_main:
                    self.progress(done, total, info_d)
        except TrainingDiverged as exc:
            result.status, result.error, result.failed_step = "failed", f"diverged: {exc}", exc.step
        except (StrategyFailure, SelectionError) as exc:
            result.status, result.error, result.failed_step = "failed", f"{type(exc).__name__}: {exc}", step
        except RunTimeout as exc:
            result.status, result.error, result.failed_step = "failed", f"timeout: {exc}", step
        total_time = elapsed_before + time.perf_counter() - t_start
        final = history[-1] if history else {}
        result.metrics = {
            "final_acc": final.get("test_acc", float("nan")),
            "best_acc": max((h["test_acc"] for h in history), default=float("nan")),
            "final_loss": final.get("test_loss", float("nan")),
        }
        result.history = history
        accounted = sum(times.values())
        result.timings = {
            "total": total_time,
            **times,
            "other": max(0.0, total_time - accounted),
            "strategy": dict(meters.seconds),
            "strategy_counts": dict(meters.counts),
        }
        result.work = {
            **counters,
            "forward_examples": meters.forward_examples,
            "backward_examples": meters.backward_examples,
            "hvp_examples": meters.hvp_examples,
        }
        result.world_size = world
        # every rank's examples; steps are the same on every rank. A failed run issues no more
        # collectives: a failure may be this rank's alone, its peers still inside a training step
        if world > 1 and result.status == "ok":
            summed = ("backprop_examples", "forward_examples", "backward_examples", "hvp_examples")
            tot = dv.all_reduce(torch.tensor([result.work[k] for k in summed], dtype=torch.float64), "sum")
            result.work.update({k: int(round(float(v))) for k, v in zip(summed, tot)})
        result.selections = {"count": len(sel_log), "sizes": [s["size"] for s in sel_log], "log": sel_log}
        if analytics is not None:
            result.analytics = analytics.summary()
            if cfg.analytics == "full":
                result.work["analytics_forward_examples"] = analytics.forward_examples
        result.series = {k: [list(p) for p in v] for k, v in meters.series.items()}
        result.peak_memory_bytes = _peak_memory(device)
        return result

    def _hook(self, name: str, hook: str, fn: Callable, *args: Any) -> Any:
        try:
            return fn(*args)
        except (SubsetlabError, KeyboardInterrupt):
            raise
        except (Exception, SystemExit) as exc:  # a plugin's sys.exit() fails its run, not the suite
            tb = traceback.format_exc(limit=-3)
            raise StrategyFailure(
                f"Strategy {name!r} raised {type(exc).__name__} in {hook}(): {exc}\n{tb}", name
            ) from exc

    def _select(self, strategy: SelectionStrategy, state: TrainState, n: int, budget: Budget) -> Selection:
        sel = self._hook(strategy.name, "select", strategy.select, state)
        if not isinstance(sel, Selection):
            raise SelectionError(
                f"Strategy {strategy.name!r} returned {type(sel).__name__} from select(); it "
                f"must return a subsetlab.Selection."
            )
        # A selection may hold at most the whole training set per pseudo-epoch's worth of rows,
        # counting repeats (CREST's overlapping mini-batch coresets may exceed N slightly).
        # a plan's batches hold exactly the rows of one step (this rank's share when rank-local),
        # so every method back-propagates the same number of examples
        rows = min(budget.batch_size, budget.subset_size)
        if self.dist.world_size > 1 and sel.rank_local:
            rows //= self.dist.world_size
        sel = sel.validate(n, strategy.name, max_size=max(n, budget.total_steps * budget.batch_size), batch_size=rows)
        if self.config.normalize_weights:
            sel.weights = sel.weights * (len(sel) / sel.weights.sum())
        return sel

    # --------------------------------------------------------------- checkpoints
    def _save_checkpoint(self, run_key, step, model, optimizer, strategy, gens, meters, selection, stream,
                         history, sel_log, times, counters, elapsed, analytics=None) -> None:
        path = self._rank_checkpoint_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "format": CHECKPOINT_FORMAT,
            "run_key": run_key,
            "step": step,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "strategy": self._hook(strategy.name, "state_dict", strategy.state_dict),
            "generators": {k: g.get_state() for k, g in gens.items()},
            "torch_rng": torch.get_rng_state(),
            "meters": meters.state_dict(),
            "selection": None
            if selection is None
            else {
                "indices": selection.indices,
                "weights": selection.weights,
                "batches": selection.batches,
                "diagnostics": selection.diagnostics,
                "rank_local": selection.rank_local,
            },
            "stream": stream.state_dict() if stream is not None else None,
            "history": history,
            "selection_log": sel_log,
            "times": dict(times),
            "counters": dict(counters),
            "analytics": None if analytics is None else analytics.state_dict(),
            "elapsed": elapsed,
        }
        tmp = path.with_name(path.name + ".tmp")
        torch.save(payload, tmp)
        os.replace(tmp, path)

    def _rank_checkpoint_path(self) -> Path:
        """``checkpoint_path``, or one file per rank in a distributed run (ranks differ in state)."""
        path = self.checkpoint_path
        if self.dist.world_size > 1:
            path = path.with_name(f"{path.name}.rank{self.dist.rank}-of-{self.dist.world_size}")
        return path

    def _load_checkpoint(self, run_key: str, device: torch.device) -> dict[str, Any] | None:
        if self.dist.world_size == 1:
            return self._read_checkpoint(run_key, device)
        # Distributed: resume only if every rank holds a checkpoint of the same step, else every
        # rank starts afresh; a refused file on any rank fails every rank (nobody waits forever).
        error: CheckpointError | None = None
        try:
            ckpt = self._read_checkpoint(run_key, device)
        except CheckpointError as exc:
            ckpt, error = None, exc
        step = -2.0 if error is not None else (float(ckpt["step"]) if ckpt is not None else -1.0)
        lo = float(self.dist.all_reduce(torch.tensor([step]), "min"))
        hi = float(self.dist.all_reduce(torch.tensor([step]), "max"))
        if lo == -2.0:
            raise error or CheckpointError(
                f"Another rank refused its checkpoint next to {str(self.checkpoint_path)!r}; see its error."
            )
        return ckpt if (lo == hi and lo >= 0) else None

    def _read_checkpoint(self, run_key: str, device: torch.device) -> dict[str, Any] | None:
        path = self._rank_checkpoint_path() if self.checkpoint_path is not None else None
        if path is None or not path.exists():
            return None
        try:
            # weights_only: tensors and primitive containers only; a global named in the file
            # (a crafted __reduce__) is refused before it is called
            ckpt = torch.load(path, map_location=device, weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unreadable checkpoint is refused the same way
            first = str(exc).strip().splitlines()
            raise CheckpointError(
                f"Refused to resume from checkpoint {str(path)!r}: it cannot be loaded safely "
                f"with weights_only=True ({type(exc).__name__}: {first[0] if first else ''}). It "
                f"was not written by subsetlab, is corrupt, or was tampered with; nothing from it "
                f"was run or used. Delete it to start the run afresh, or pass resume=False."
            ) from None
        if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT or ckpt.get("run_key") != run_key:
            return None
        for k in ("generators", "torch_rng"):
            if k == "torch_rng":
                ckpt[k] = ckpt[k].cpu()
            else:
                ckpt[k] = {n: s.cpu() for n, s in ckpt[k].items()}
        if ckpt["selection"] is not None:
            s = ckpt["selection"]
            s["indices"], s["weights"] = s["indices"].cpu(), s["weights"].cpu()
            s["batches"] = None if s["batches"] is None else [b.cpu() for b in s["batches"]]
        if ckpt["stream"] is not None and ckpt["stream"]["order"] is not None:
            ckpt["stream"]["order"] = ckpt["stream"]["order"].cpu()
        return ckpt


def _check_splits(data: DataSplits) -> None:
    """Refuse splits that would fail (or silently mislead) only after training started."""
    train = data.train
    if len(train) == 0:
        raise DataError(f"The training split {train.name!r} is empty; there is nothing to train on.")
    for role, ds in (("validation", data.val), ("test", data.test)):
        if ds is None:
            continue
        if len(ds) == 0:
            if role == "test":
                raise DataError(
                    f"The test split {ds.name!r} is empty; every run is evaluated on it. Give at "
                    f"least one test example."
                )
            continue
        if ds.input_shape != train.input_shape:
            raise DataError(
                f"The {role} split {ds.name!r} has examples of shape {ds.input_shape} but the "
                f"training split {train.input_shape}; all splits must have the same feature shape."
            )
        top = int(ds.labels.max())
        if top >= train.num_classes:
            raise DataError(
                f"The {role} split {ds.name!r} has label {top} but the training split has "
                f"{train.num_classes} classes (labels 0..{train.num_classes - 1}); build every "
                f"split with the same num_classes."
            )


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


def _peak_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


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


def _union_selection(dv: DistView, selection: Selection) -> Selection:
    """The selection of the whole run: this one, or the ranks' rank-local selections joined.

    Every rank takes part (a collective) when the run is distributed.
    """
    if dv.world_size == 1:
        return selection
    from subsetlab.distributed import all_gather_cat

    flag = float(dv.all_reduce(torch.tensor([float(selection.rank_local)]), "max"))
    if flag == 0.0:
        return selection
    idx = all_gather_cat(dv, selection.indices.cpu())
    w = all_gather_cat(dv, selection.weights.cpu().float())
    return Selection(idx, w, None, dict(selection.diagnostics))


def _union_step(dv: DistView, info: StepInfo) -> StepInfo:
    """The step as the union of every rank's rows (a collective in a distributed run)."""
    if dv.world_size == 1:
        return info
    from subsetlab.distributed import all_gather_cat

    dev = info.losses.device
    packed = torch.stack(
        [info.indices.double().cpu(), info.weights.double().cpu(), info.losses.double().cpu(), info.correct.double().cpu()], 1
    )
    rows = all_gather_cat(dv, packed)
    loss = float(dv.all_reduce(torch.tensor([info.loss], dtype=torch.float64), "mean"))
    return StepInfo(
        rows[:, 0].long().to(dev), rows[:, 1].float().to(dev), rows[:, 2].float().to(dev), rows[:, 3].bool().to(dev), loss
    )
