"""Selection analytics: what a strategy selects, when, and how hard it is to learn.

Recorded cheaply during training by :class:`SelectionAnalytics`, which the
:class:`~subsetlab.trainer.Trainer` calls at every selection and after every step through
:class:`AnalyticsObserver` (see ``TrainerConfig.analytics``). The arithmetic lives in small pure functions, tested on
hand-made cases:

- forgetting events (Toneva et al., 2019; the CREST paper's learning-difficulty measure): an
  example is *forgotten* when it was classified correctly the last time it was trained on and
  incorrectly this time; its *forgetting score* is the number of such events so far. Only the
  trained batches are observed (``StepInfo.correct``, the prediction before the update), so
  the score counts transitions between consecutive presentations of the example. An example
  is *learned* once it was ever classified correctly; never-correct and first-seen-wrong
  examples have no events;
- :func:`jaccard` of the distinct index sets of two consecutive selections;
- :func:`coverage`: the share of the training set trained on at least once;
- :func:`weight_stats`: min / max / mean weight and the effective sample size
  ``ESS = (sum w)^2 / sum w^2`` over the selection's rows, also relative to the row count k;
- :func:`class_balance`: normalised entropy, total-variation distance and min/max ratio of the
  selection's class distribution against the training set's.

Nothing here makes a pass over the full training set; the per-example state (last correctness,
learned, trained-on, forgetting count: four tensors of size N on the training device) stays on
the device and is read back only at the end of the run.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch.nn import functional as F

from subsetlab.distributed import all_gather_cat
from subsetlab.protocol import StepInfo

if TYPE_CHECKING:
    from torch import nn

    from subsetlab.data.base import IndexedDataset
    from subsetlab.protocol import Budget, DistView, Selection
    from subsetlab.trainer import RunResult

__all__ = [
    "AnalyticsMode",
    "AnalyticsObserver",
    "ForgettingCounter",
    "SelectionAnalytics",
    "class_balance",
    "count_forgetting",
    "coverage",
    "effective_sample_size",
    "forgetting_events",
    "jaccard",
    "quarter_means",
    "weight_stats",
]

#: ``"off"``: nothing recorded; ``"basic"``: everything from the trained batches and the
#: selections themselves; ``"full"``: also forward the selected examples at selection time.
AnalyticsMode = Literal["off", "basic", "full"]

#: Class counts of a selection are stored in the results only up to this many classes.
MAX_STORED_CLASSES = 32


# ------------------------------------------------------------------------------ pure arithmetic


def forgetting_events(prev_correct: torch.Tensor, correct: torch.Tensor) -> torch.Tensor:
    """Forgetting events of one presentation: correct last time and wrong now.

    Args:
        prev_correct: Bool, per example: classified correctly at its previous presentation
            (False for an example never presented before).
        correct: Bool, per example: classified correctly at this presentation.

    Returns:
        Bool tensor, True where a forgetting event happened.
    """
    return prev_correct & ~correct


def count_forgetting(history: torch.Tensor | Sequence[Sequence[bool]]) -> torch.Tensor:
    """Forgetting scores from whole correctness histories (the reference the counter matches).

    Args:
        history: ``[T, n]`` booleans: the correctness of each of ``n`` examples at each of its
            ``T`` presentations, in order.

    Returns:
        int64 ``[n]``: the number of correct-then-wrong transitions of each example. For
        example ``[correct, wrong, correct, wrong]`` gives 2; never correct gives 0.
    """
    h = torch.as_tensor(history, dtype=torch.bool)
    if h.dim() == 1:
        h = h[:, None]
    if h.shape[0] < 2:
        return torch.zeros(h.shape[1], dtype=torch.long)
    return forgetting_events(h[:-1], h[1:]).sum(0).long()


def jaccard(a: torch.Tensor, b: torch.Tensor) -> float:
    """Jaccard index ``|A ∩ B| / |A ∪ B|`` of the distinct values of two index tensors.

    Two empty sets give 1.0.
    """
    a, b = torch.unique(a.cpu()), torch.unique(b.cpu())
    inter = int(torch.isin(a, b).sum())
    union = int(a.numel()) + int(b.numel()) - inter
    return 1.0 if union == 0 else inter / union


def coverage(seen: torch.Tensor) -> float:
    """Share of examples trained on at least once: ``seen.sum() / len(seen)`` (bool mask)."""
    n = int(seen.numel())
    return float(seen.sum()) / n if n else float("nan")


def effective_sample_size(weights: torch.Tensor) -> float:
    """Kish's effective sample size ``(sum w)^2 / sum w^2`` of non-negative weights.

    Equal weights give the number of weights; one dominant weight gives about 1.
    """
    w = weights.detach().double()
    s2 = float((w * w).sum())
    return float(w.sum()) ** 2 / s2 if s2 > 0 else 0.0


def weight_stats(weights: torch.Tensor) -> dict[str, float]:
    """``w_min``, ``w_max``, ``w_mean``, ``ess`` and ``ess_ratio`` (= ESS / k) of k row weights."""
    w = weights.detach().double().cpu()
    k = int(w.numel())
    if k == 0:
        return {"w_min": float("nan"), "w_max": float("nan"), "w_mean": float("nan"), "ess": 0.0, "ess_ratio": float("nan")}
    ess = effective_sample_size(w)
    return {"w_min": float(w.min()), "w_max": float(w.max()), "w_mean": float(w.mean()), "ess": ess, "ess_ratio": ess / k}


def class_balance(counts: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
    """How the class distribution ``p`` of a selection compares with the training set's ``q``.

    Only classes present in the training set (``reference > 0``) count; ``C`` is their number.

    Args:
        counts: Examples per class in the selection, ``[num_classes]``.
        reference: Examples per class in the training set, ``[num_classes]``.

    Returns:
        ``class_entropy``: ``H(p) / log C`` in [0, 1], 1 when the selection is uniform over the
        classes (1.0 when ``C <= 1``); ``class_tv``: total-variation distance
        ``0.5 * sum |p_c - q_c|`` in [0, 1], 0 when the selection has the training set's
        proportions; ``class_ratio``: ``min_c (p_c / q_c) / max_c (p_c / q_c)`` in [0, 1],
        1 when every class is represented in proportion and 0 when a class is missing.
    """
    c = counts.detach().double().cpu()
    r = reference.detach().double().cpu()
    keep = r > 0
    c, r = c[keep], r[keep]
    n_cls = int(c.numel())
    if n_cls == 0 or float(c.sum()) <= 0:
        return {"class_entropy": float("nan"), "class_tv": float("nan"), "class_ratio": float("nan")}
    p, q = c / c.sum(), r / r.sum()
    nz = p[p > 0]
    h = float(-(nz * nz.log()).sum())
    entropy = h / math.log(n_cls) if n_cls > 1 else 1.0
    tv = 0.5 * float((p - q).abs().sum())
    rel = p / q
    ratio = float(rel.min() / rel.max())
    return {"class_entropy": entropy, "class_tv": tv, "class_ratio": ratio}


def quarter_means(rows: Sequence[dict[str, Any]], key: str, total_steps: int) -> tuple[float | None, float | None]:
    """Mean of ``row[key]`` over the rows of the first and of the last quarter of training.

    A row belongs to the first quarter when ``row["step"] < total_steps / 4`` and to the last
    when ``row["step"] >= 3 * total_steps / 4``; rows whose value is None are left out. A
    quarter without values gives None.
    """
    def mean(sel: list[float]) -> float | None:
        return sum(sel) / len(sel) if sel else None

    vals = [(r["step"], r.get(key)) for r in rows]
    vals = [(s, float(v)) for s, v in vals if isinstance(v, (int, float)) and math.isfinite(v)]
    first = [v for s, v in vals if s < total_steps / 4]
    last = [v for s, v in vals if s >= 3 * total_steps / 4]
    return mean(first), mean(last)


# ------------------------------------------------------------------------------ state on the device


class ForgettingCounter:
    """Per-example forgetting state of a training set, kept on the training device.

    Attributes:
        last_correct: Bool ``[N]``: correct at the example's latest presentation.
        learned: Bool ``[N]``: ever classified correctly.
        seen: Bool ``[N]``: trained on at least once.
        forgets: int32 ``[N]``: forgetting events so far (the forgetting score).

    Args:
        n: Training examples N.
        device: Where the state lives.
    """

    def __init__(self, n: int, device: torch.device | str = "cpu") -> None:
        self.last_correct = torch.zeros(n, dtype=torch.bool, device=device)
        self.learned = torch.zeros(n, dtype=torch.bool, device=device)
        self.seen = torch.zeros(n, dtype=torch.bool, device=device)
        self.forgets = torch.zeros(n, dtype=torch.int32, device=device)

    def update(self, indices: torch.Tensor, correct: torch.Tensor) -> torch.Tensor:
        """Record one presentation of ``indices`` with correctness ``correct``; no host sync.

        An index repeated within one call is counted once (the copies see the same model).

        Returns:
            The forgetting scores of ``indices`` *before* this update (int32, on the device).
        """
        idx = indices.to(self.forgets.device)
        correct = correct.to(self.forgets.device, torch.bool)
        before = self.forgets.index_select(0, idx)
        events = forgetting_events(self.last_correct.index_select(0, idx), correct)
        self.forgets.index_put_((idx,), before + events.to(torch.int32))
        self.learned.index_put_((idx,), self.learned.index_select(0, idx) | correct)
        self.last_correct.index_put_((idx,), correct)
        self.seen.index_fill_(0, idx, True)
        return before

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The four state tensors (checkpointable)."""
        return {"last_correct": self.last_correct, "learned": self.learned, "seen": self.seen, "forgets": self.forgets}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore :meth:`state_dict` (onto this counter's device)."""
        dev = self.forgets.device
        for k in ("last_correct", "learned", "seen", "forgets"):
            setattr(self, k, state[k].to(dev))


# ------------------------------------------------------------------------------ the recorder


class SelectionAnalytics:
    """Records the selection analytics of one run; the trainer drives it.

    Per selection (a row of ``summary()["selections"]``):

    - ``step``, ``epoch``, ``size`` (rows k), ``unique`` (distinct examples u);
    - ``jaccard`` with the previous selection's distinct indices (None for the first);
    - ``w_min``, ``w_max``, ``w_mean``, ``ess``, ``ess_ratio`` (:func:`weight_stats`, over the
      k rows, after the trainer's weight normalisation);
    - ``class_entropy``, ``class_tv``, ``class_ratio`` (:func:`class_balance` of the distinct
      examples against the training set) and ``class_counts`` (up to 32 classes);
    - ``forget``: mean forgetting score of the distinct selected examples at selection time
      (events accumulated so far); ``learned``: share of them ever classified correctly;
      ``unseen``: share of them never trained on before;
    - ``loss``: mean unweighted loss of the *first training batch* after the selection. The
      model has not changed since the selection, so this is an unbiased sample of the
      selection's loss at selection time, from a forward pass the training step makes anyway
      (the whole following pseudo-epoch would mix in the learning on those examples and favour
      methods that re-select often);
    - ``loss_full`` (``mode="full"`` only): exact mean loss of the distinct selected examples,
      forwarded in eval mode at selection time; counted in :attr:`forward_examples`.

    Per pseudo-epoch (``summary()["epochs"]``): ``epoch``, ``step`` (steps done),
    ``coverage`` (share of N trained on so far), ``learned`` (share of N ever correct),
    ``forgetting_events`` (total so far), ``forget`` and ``loss`` (row means over the batches
    trained in that pseudo-epoch; forgetting scores taken before each step).

    ``summary()["summary"]`` holds the per-run figures the report tabulates: ``selections``,
    ``jaccard`` (mean over consecutive pairs), ``coverage`` (final), ``learned`` (final),
    ``forgetting_events``, ``ess_ratio``, ``class_entropy``, ``class_tv``, ``class_ratio``
    (means over selections), and ``forget_q1`` / ``forget_q4``, ``loss_q1`` / ``loss_q4``
    (and ``loss_full_q1`` / ``loss_full_q4``): means over the selections made in the first and
    the last quarter of the steps (:func:`quarter_means`).

    In a distributed run each rank records the batches it trained; rank 0's are reported.

    Args:
        train: The training split (its labels give the class distribution).
        budget: The run's budget (steps per pseudo-epoch, total steps).
        device: Training device (where the per-example state lives).
        mode: ``"basic"`` or ``"full"``.
        model: The model; needed for ``mode="full"``.
        batch_size: Forward batch size of ``mode="full"``.
    """

    def __init__(
        self,
        train: IndexedDataset,
        budget: Budget,
        device: torch.device | str = "cpu",
        mode: AnalyticsMode = "basic",
        model: nn.Module | None = None,
        batch_size: int = 1024,
    ) -> None:
        if mode not in ("basic", "full"):
            raise ValueError(f"The 'mode' parameter of SelectionAnalytics must be 'basic' or 'full'. Got {mode!r} instead.")
        if mode == "full" and model is None:
            raise ValueError("SelectionAnalytics(mode='full') needs the model to forward the selected examples.")
        self.mode = mode
        self.train = train
        self.model = model
        self.batch_size = int(batch_size)
        self.device = torch.device(device)
        self.n = len(train)
        self.steps_per_epoch = int(budget.steps_per_epoch)
        self.total_steps = int(budget.total_steps)
        self.labels_ = train.labels.detach().cpu()
        self.class_reference_ = torch.bincount(self.labels_, minlength=train.num_classes)
        self.counter_ = ForgettingCounter(self.n, self.device)
        #: Examples forwarded by ``mode="full"`` (the trainer reports them apart from the strategy's).
        self.forward_examples = 0
        self.rows_: list[dict[str, Any]] = []
        self.epochs_: list[dict[str, Any]] = []
        self._prev: torch.Tensor | None = None  # distinct indices of the selection before the current one
        self._last: torch.Tensor | None = None  # distinct indices of the current selection (as it grows)
        self._pending_first = False
        self._acc = torch.zeros(2, device=self.device)  # loss sum, forgetting-score sum
        self._acc_rows = 0  # rows trained this pseudo-epoch (known on the host)
        self._deferred: list[tuple[dict[str, Any], str, torch.Tensor]] = []

    # ------------------------------------------------------------------ hooks
    def _describe(self, row: dict[str, Any], selection: Selection) -> torch.Tensor:
        """Fill the fields of ``row`` that depend on the selection alone; return its distinct indices."""
        idx = selection.indices.detach().cpu()
        uniq = torch.unique(idx)
        row["size"] = int(idx.numel())
        row["unique"] = int(uniq.numel())
        row["jaccard"] = None if self._prev is None else jaccard(self._prev, uniq)
        row.update(weight_stats(selection.weights))
        counts = torch.bincount(self.labels_.index_select(0, uniq), minlength=int(self.class_reference_.numel()))
        row.update(class_balance(counts, self.class_reference_))
        if counts.numel() <= MAX_STORED_CLASSES:
            row["class_counts"] = counts.tolist()
        return uniq

    def on_extend(self, step: int, selection: Selection) -> None:
        """The current selection grew (``Selection.extends``): ``selection`` is the whole of it now.

        Its size, distinct examples, Jaccard index with the previous selection, weight and
        class statistics are recomputed on the grown selection; the difficulty figures
        (``forget``, ``learned``, ``unseen``, ``loss``) stay those measured when it began.
        """
        if not self.rows_:
            self.on_selection(step, selection)
            return
        self._last = self._describe(self.rows_[-1], selection)

    def on_selection(self, step: int, selection: Selection) -> None:
        """Record a new selection; called by the trainer right after ``select``, before step ``step``."""
        if self._last is not None:
            self._prev = self._last  # the previous selection as it ended (extensions included)
        row: dict[str, Any] = {"step": int(step), "epoch": int(step) // self.steps_per_epoch}
        uniq = self._describe(row, selection)
        dev_idx = uniq.to(self.device)
        c = self.counter_
        u = max(1, int(uniq.numel()))
        self._defer(row, "forget", c.forgets.index_select(0, dev_idx).sum() / u)
        self._defer(row, "learned", c.learned.index_select(0, dev_idx).sum() / u)
        self._defer(row, "unseen", (~c.seen.index_select(0, dev_idx)).sum() / u)
        row["loss"] = None
        if self.mode == "full":
            self._defer(row, "loss_full", self._forward_loss(dev_idx))
        self.rows_.append(row)
        self._last = uniq
        self._pending_first = True

    def on_step(self, step: int, info: StepInfo) -> None:
        """Record the batch just trained (step ``step``); called after every step. No host sync."""
        before = self.counter_.update(info.indices, info.correct)
        losses = info.losses.detach().float()
        if self._pending_first and self.rows_:
            self._defer(self.rows_[-1], "loss", losses.mean())
            self._pending_first = False
        self._acc += torch.stack([losses.sum(), before.sum().float()]).to(self._acc.device)
        self._acc_rows += int(losses.numel())
        done = int(step) + 1
        if done % self.steps_per_epoch == 0 or done == self.total_steps:
            c = self.counter_
            ep: dict[str, Any] = {"epoch": int(step) // self.steps_per_epoch, "step": done}
            rows = max(1, self._acc_rows)
            self._defer(ep, "coverage", c.seen.sum() / max(1, self.n))
            self._defer(ep, "learned", c.learned.sum() / max(1, self.n))
            self._defer(ep, "forgetting_events", c.forgets.sum())
            self._defer(ep, "forget", self._acc[1] / rows)
            self._defer(ep, "loss", self._acc[0] / rows)
            self.epochs_.append(ep)
            self._acc = torch.zeros_like(self._acc)
            self._acc_rows = 0

    def summary(self) -> dict[str, Any]:
        """The run's analytics as a small JSON-serialisable dict (no per-example arrays).

        Keys: ``mode``, ``n``, ``steps_per_epoch``, ``total_steps``, the ``selections`` rows,
        the ``epochs`` rows and the per-run ``summary`` (see the class docstring); non-finite
        values become None. Reads the device state back once.
        """
        self._flush()
        rows, eps = self.rows_, self.epochs_
        c = self.counter_

        def mean(key: str) -> float | None:
            xs = [r[key] for r in rows if isinstance(r.get(key), (int, float))]
            return sum(xs) / len(xs) if xs else None

        s: dict[str, Any] = {
            "selections": len(rows),
            "jaccard": mean("jaccard"),
            "coverage": _finite(coverage(c.seen)),
            "learned": _finite(float(c.learned.sum()) / self.n if self.n else float("nan")),
            "forgetting_events": int(c.forgets.sum()),
            "ess_ratio": mean("ess_ratio"),
            "class_entropy": mean("class_entropy"),
            "class_tv": mean("class_tv"),
            "class_ratio": mean("class_ratio"),
        }
        keys = ["forget", "loss"] + (["loss_full"] if self.mode == "full" else [])
        for key in keys:
            s[f"{key}_q1"], s[f"{key}_q4"] = quarter_means(rows, key, self.total_steps)
        out: dict[str, Any] = {
            "mode": self.mode,
            "n": self.n,
            "steps_per_epoch": self.steps_per_epoch,
            "total_steps": self.total_steps,
            "selections": [{k: _finite(v) for k, v in r.items()} for r in rows],
            "epochs": [{k: _finite(v) for k, v in e.items()} for e in eps],
            "summary": {k: _finite(v) for k, v in s.items()},
        }
        if self.mode == "full":
            out["forward_examples"] = self.forward_examples
        return out

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Checkpointable state (tensors and primitives)."""
        self._flush()
        return {
            "counter": self.counter_.state_dict(),
            "rows": [dict(r) for r in self.rows_],
            "epochs": [dict(e) for e in self.epochs_],
            "prev": self._prev,
            "last": self._last,
            "pending_first": self._pending_first,
            "acc": self._acc,
            "acc_rows": self._acc_rows,
            "forward_examples": self.forward_examples,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.counter_.load_state_dict(state["counter"])
        self.rows_ = [dict(r) for r in state["rows"]]
        self.epochs_ = [dict(e) for e in state["epochs"]]
        self._prev = None if state["prev"] is None else state["prev"].cpu()
        last = state.get("last", state["prev"])
        self._last = None if last is None else last.cpu()
        self._pending_first = bool(state["pending_first"])
        self._acc = state["acc"].to(self.device)
        self._acc_rows = int(state["acc_rows"])
        self.forward_examples = int(state["forward_examples"])
        self._deferred = []

    # ------------------------------------------------------------------ internals
    def _defer(self, row: dict[str, Any], key: str, value: torch.Tensor) -> None:
        """Fill ``row[key]`` from a device scalar later, in one read-back (no sync now)."""
        row[key] = None
        self._deferred.append((row, key, value.detach().float().reshape(())))

    def _flush(self) -> None:
        if not self._deferred:
            return
        vals = torch.stack([t.to(self.device) for _, _, t in self._deferred]).cpu().tolist()
        for (row, key, _), v in zip(self._deferred, vals):
            row[key] = int(v) if key == "forgetting_events" else v
        self._deferred = []

    def _forward_loss(self, idx: torch.Tensor) -> torch.Tensor:
        model = self.model
        was = model.training
        model.eval()
        total = torch.zeros((), device=self.device)
        try:
            with torch.no_grad():
                for s in range(0, int(idx.numel()), self.batch_size):
                    x, y = self.train.get(idx[s : s + self.batch_size])
                    x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
                    total += F.cross_entropy(model(x).float(), y, reduction="sum")
        finally:
            model.train(was)
        self.forward_examples += int(idx.numel())
        return total / max(1, int(idx.numel()))


class AnalyticsObserver:
    """Drives :class:`SelectionAnalytics` from the training loop (a :class:`~subsetlab.hooks.LoopObserver`).

    Every rank of a distributed run has one: the step's rows are joined over the ranks (a
    collective), and rank 0's analytics record them. Its calls are timed as ``analytics``.

    Args:
        analytics: The analytics to record into; None on the ranks that do not record.
        dist: The distributed view.
    """

    name = "analytics"

    def __init__(self, analytics: SelectionAnalytics | None, dist: DistView) -> None:
        self.analytics = analytics
        self.dist = dist

    def on_selection(self, step: int, selection: Selection, extended: bool) -> None:
        """Record a new selection, or the growth of the current one."""
        if self.analytics is None:
            return
        if extended:
            self.analytics.on_extend(step, selection)
        else:
            self.analytics.on_selection(step, selection)

    def on_step(self, step: int, info: StepInfo) -> None:
        """Record the batch every rank trained at step ``step`` (a collective when distributed)."""
        merged = _union_step(self.dist, info)
        if self.analytics is not None:
            self.analytics.on_step(step, merged)

    def finish(self, result: RunResult) -> None:
        """Set ``result.analytics`` (and, in ``"full"`` mode, ``work["analytics_forward_examples"]``)."""
        if self.analytics is None:
            return
        result.analytics = self.analytics.summary()
        if self.analytics.mode == "full":
            result.work["analytics_forward_examples"] = self.analytics.forward_examples

    def state_dict(self) -> dict[str, Any] | None:
        """The analytics' checkpointable state (None on a rank that does not record)."""
        return None if self.analytics is None else self.analytics.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        if self.analytics is not None:
            self.analytics.load_state_dict(state)


def _union_step(dv: DistView, info: StepInfo) -> StepInfo:
    """The step as the union of every rank's rows (a collective in a distributed run)."""
    if dv.world_size == 1:
        return info
    dev = info.losses.device
    packed = torch.stack(
        [info.indices.double().cpu(), info.weights.double().cpu(), info.losses.double().cpu(), info.correct.double().cpu()], 1
    )
    rows = all_gather_cat(dv, packed)
    loss = float(dv.all_reduce(torch.tensor([info.loss], dtype=torch.float64), "mean"))
    return StepInfo(
        rows[:, 0].long().to(dev), rows[:, 1].float().to(dev), rows[:, 2].float().to(dev), rows[:, 3].bool().to(dev), loss
    )


def _finite(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v
