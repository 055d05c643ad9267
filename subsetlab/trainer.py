"""The one training loop every strategy runs under.

The trainer owns the budget, the weighted loss, the optimiser, the LR schedule, evaluation,
timing, checkpoints and failure handling; a strategy only answers ``should_select`` and
``select`` (see :mod:`subsetlab.protocol`). :meth:`Trainer.fit` checks its inputs and runs the
algorithm; the parts it calls live in modules of their own: the run's steps and state in
:mod:`subsetlab.loop`, the strategy's hooks and the observers in :mod:`subsetlab.hooks`,
checkpoints in :mod:`subsetlab.checkpoint`, timing in :mod:`subsetlab.timing` and the batch
order in :mod:`subsetlab.batches`.
"""

from __future__ import annotations

import os
import resource
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from subsetlab.allocator import tune_cpu_allocator
from subsetlab.analytics import AnalyticsObserver, SelectionAnalytics
from subsetlab.batches import BatchStream
from subsetlab.checkpoint import CHECKPOINT_FORMAT, load_checkpoint, save_checkpoint
from subsetlab.config import TrainerConfig
from subsetlab.data.base import DataSplits
from subsetlab.errors import DataError, SelectionError, StrategyFailure, TrainingDiverged
from subsetlab.loop import Loop, RunTimeout, evaluate, jsonable, weighted_loss
from subsetlab.protocol import Budget, DistView, SelectionStrategy
from subsetlab.seeding import derive_seed
from subsetlab.timing import Stopwatch

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

#: The parts of a run's ``timings`` (observers add their own, e.g. ``analytics``).
TIMED_PARTS = ("setup", "train", "select", "eval", "checkpoint")

Progress = Callable[[int, int, dict[str, Any]], None]


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
        self._check_run(strategy, model, data)
        device = resolve_device(cfg.device)
        if device.type == "cpu" and cfg.cpu_allocator == "tuned":
            tune_cpu_allocator()
        cuda_devices = [device.index or 0] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda_devices):
            torch.manual_seed(derive_seed(seed, "torch-global"))
            return self._fit(strategy, model, data, seed, device, run_key, resume, stop_after_steps)

    # ----------------------------------------------------------------- internals
    def _fit(self, strategy, model, data, seed, device, run_key, resume, stop_after_steps) -> RunResult:
        """Set up (or resume); then per step: select when due, train, the strategy's feedback, the
        time limit; at the end of a pseudo-epoch evaluate and checkpoint when due."""
        cfg, dist = self.config, self.dist
        clock = Stopwatch(device, TIMED_PARTS)
        with clock.part("setup"):
            loop = Loop(cfg, dist, strategy, model, data, seed, device, clock)
            if cfg.analytics != "off":
                recorder = SelectionAnalytics(loop.train, loop.budget, device, cfg.analytics, model, cfg.eval_batch_size)
                loop.observe(AnalyticsObserver(recorder if dist.is_main else None, dist))
        state, view = loop.state, loop.state.view
        steps_per_epoch, total = loop.budget.steps_per_epoch, loop.budget.total_steps
        failure: tuple[str, int] | None = None
        try:
            with clock.part("setup"):  # a resumed run's setup adds to the saved one's
                loop.hooks.call("setup", loop.context)
                saved = load_checkpoint(self.checkpoint_path, run_key, device, dist) if resume else None
                if saved is not None:
                    state.load_state_dict(saved)
            for step in range(state.step, total):
                if stop_after_steps is not None and step >= stop_after_steps:
                    break
                loop.begin_step(step)
                loop.select_if_due()
                info, loss = loop.train_step()
                loop.feedback(info)
                loop.check_time()
                state.step = done = step + 1
                report: dict[str, Any] = {"loss": loss}
                if done % steps_per_epoch == 0 or done == total:  # a pseudo-epoch ends
                    if (view.epoch + 1) % cfg.eval_every == 0 or done == total:
                        report["test_acc"] = loop.evaluate()
                    if self._checkpoint_due(view.epoch, done, total):
                        with clock.part("checkpoint"):
                            save_checkpoint(self.checkpoint_path, run_key, state, dist)
                if self.progress is not None and dist.is_main:
                    self.progress(done, total, report)
        except TrainingDiverged as exc:
            failure = (f"diverged: {exc}", exc.step)
        except (StrategyFailure, SelectionError) as exc:
            failure = (f"{type(exc).__name__}: {exc}", view.step)
        except RunTimeout as exc:
            failure = (f"timeout: {exc}", view.step)
        return self._result(loop, failure)

    def _checkpoint_due(self, epoch: int, done: int, total: int) -> bool:
        every = self.config.checkpoint_every
        return self.checkpoint_path is not None and every is not None and (epoch + 1) % every == 0 and done < total

    def _result(self, loop: Loop, failure: tuple[str, int] | None) -> RunResult:
        """The run's :class:`RunResult`, from its state after the last step (or the failure)."""
        state, dist = loop.state, self.dist
        timings = loop.clock.report()
        result = RunResult(strategy=loop.hooks.name, budget=asdict(loop.budget), world_size=dist.world_size)
        if failure is not None:
            result.status, result.error, result.failed_step = "failed", *failure
        history, meters, log = state.history, state.meters, state.selection_log
        final = history[-1] if history else {}
        result.metrics = {
            "final_acc": final.get("test_acc", float("nan")),
            "best_acc": max((h["test_acc"] for h in history), default=float("nan")),
            "final_loss": final.get("test_loss", float("nan")),
        }
        result.history = history
        result.timings = {**timings, "strategy": dict(meters.seconds), "strategy_counts": dict(meters.counts)}
        result.work = {
            **state.counters,
            "forward_examples": meters.forward_examples,
            "backward_examples": meters.backward_examples,
            "hvp_examples": meters.hvp_examples,
        }
        # every rank's examples; steps are the same on every rank. A failed run issues no more
        # collectives: a failure may be this rank's alone, its peers still inside a training step
        if dist.world_size > 1 and result.status == "ok":
            summed = ("backprop_examples", "forward_examples", "backward_examples", "hvp_examples")
            tot = dist.all_reduce(torch.tensor([result.work[k] for k in summed], dtype=torch.float64), "sum")
            result.work.update({k: int(round(float(v))) for k, v in zip(summed, tot)})
        result.selections = {"count": len(log), "sizes": [s["size"] for s in log], "log": log}
        for obs in loop.observers:
            obs.finish(result)
        result.series = {k: [list(p) for p in v] for k, v in meters.series.items()}
        result.peak_memory_bytes = _peak_memory(loop.device)
        return result

    def _check_run(self, strategy: SelectionStrategy, model: nn.Module, data: DataSplits) -> None:
        """Refuse, before anything runs, a model, data or world size the run would fail on."""
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


def _peak_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
