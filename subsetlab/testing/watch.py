"""Watch a strategy's hooks during a run, for the contract checks of :mod:`subsetlab.testing.checks`.

:class:`HookWatch` wraps the hooks of one strategy instance (``setup``, ``should_select``,
``select``, ``on_after_backward``, ``on_step_end``, ``state_dict``, ``load_state_dict``) and,
around every call the trainer makes, compares what the contract says a hook leaves alone:

* the global random state: torch's CPU generator, Python's ``random`` and numpy's legacy
  global ``RandomState`` (a strategy draws only from ``ctx.generator`` and generators derived
  from ``ctx.seed``);
* the model: its parameters and buffers, bitwise, and the parameter objects themselves (the
  optimiser holds them); in ``on_after_backward`` also the gradients the step is about to
  apply ("read them, never modify them");
* the model's ``training`` flag (of every module): a hook returns the model in the mode it
  found it in. With ``mode_phase`` set, the watch puts the model in train mode before some
  calls and in eval mode before others, so that a hook that forgets to restore ``eval()`` and
  one that ends with an unconditional ``train()`` are both seen;
* which hooks read the validation split (:meth:`HookWatch.watch_split`), to compare with
  ``capabilities.needs_validation``.

What the watch finds is recorded, never corrected, except the training mode, which is put back
to the trainer's after each call so that the run goes on as it would have.
"""

from __future__ import annotations

import functools
import random
from collections import Counter
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["HOOKS", "HookWatch", "global_rng_state", "changed_rng", "model_snapshot", "changed_tensors"]

#: The strategy hooks the watch wraps (the ones the trainer calls).
HOOKS = ("setup", "should_select", "select", "on_after_backward", "on_step_end", "state_dict", "load_state_dict")

#: Most violations of one kind kept (the first ones of the run).
_KEEP = 5


def global_rng_state() -> dict[str, Any]:
    """The global random state a strategy must leave alone: torch (CPU), ``random``, numpy."""
    return {"torch": torch.get_rng_state(), "random": random.getstate(), "numpy": np.random.get_state()}


def changed_rng(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """Names of the global generators (``"torch"``, ``"random"``, ``"numpy"``) whose state changed."""
    changed = []
    if not torch.equal(before["torch"], after["torch"]):
        changed.append("torch")
    if before["random"] != after["random"]:
        changed.append("random")
    nb, na = before["numpy"], after["numpy"]
    if nb[0] != na[0] or not np.array_equal(nb[1], na[1]) or tuple(nb[2:]) != tuple(na[2:]):
        changed.append("numpy")
    return changed


def model_snapshot(model: nn.Module, grads: bool = False) -> dict[str, Any]:
    """Copies of the model's parameters and buffers (and gradients when ``grads``), by name, and
    the identity of each parameter object."""
    tensors = {f"parameter {n}": p.detach().clone() for n, p in model.named_parameters()}
    tensors.update({f"buffer {n}": b.detach().clone() for n, b in model.named_buffers()})
    if grads:
        for n, p in model.named_parameters():
            tensors[f"gradient of {n}"] = None if p.grad is None else p.grad.detach().clone()
    return {"tensors": tensors, "ids": {n: id(p) for n, p in model.named_parameters()}}


def _bitwise_equal(a: torch.Tensor | None, b: torch.Tensor | None) -> bool:
    if a is None or b is None:
        return a is b
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return torch.equal(a.contiguous().reshape(-1).view(torch.uint8), b.contiguous().reshape(-1).view(torch.uint8))


def changed_tensors(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """What differs between two :func:`model_snapshot` s: tensors not bitwise equal, tensors
    added or removed, parameter objects replaced."""
    tb, ta = before["tensors"], after["tensors"]
    changed = [k for k in tb if k not in ta or not _bitwise_equal(tb[k], ta[k])]
    changed += [f"{k} (added)" for k in ta if k not in tb]
    changed += [
        f"parameter {n} (replaced by another tensor object)"
        for n, i in before["ids"].items()
        if n in after["ids"] and after["ids"][n] != i
    ]
    return changed


def _modes(model: nn.Module) -> list[bool]:
    return [m.training for m in model.modules()]


def _mode(modes: list[bool]) -> str:
    if all(modes):
        return "train mode"
    return "eval mode" if not any(modes) else "mixed modes (some modules in train, some in eval)"


class HookWatch:
    """Wraps a strategy instance's hooks and records what each call changed.

    Args:
        strategy: The strategy instance (its hooks are replaced by wrappers on the instance).
        model: The bare model the strategy is set up with.
        mode_phase: ``None``: leave the training mode as the trainer set it. 0 or 1: before
            the k-th call of each hook put the model in eval mode when ``k + mode_phase`` is
            even and in train mode when it is odd (run once with each phase to see both).

    Attributes:
        calls: Calls per hook.
        rng: Violations of the global random state (``"select() at step 0: torch"``).
        model_changes: Parameters, buffers or gradients a hook changed.
        mode_changes: Hooks that left the model in another training mode than they found.
        val_reads: Hooks that read the watched validation split, with the attribute read.
    """

    def __init__(self, strategy: Any, model: nn.Module, mode_phase: int | None = None) -> None:
        self.model = model
        self.mode_phase = mode_phase
        self.calls: Counter[str] = Counter()
        self.rng: list[str] = []
        self.model_changes: list[str] = []
        self.mode_changes: list[str] = []
        self.val_reads: list[str] = []
        self._current: str | None = None
        for hook in HOOKS:
            fn = getattr(strategy, hook, None)
            if callable(fn):
                setattr(strategy, hook, self._wrap(hook, fn))

    def _wrap(self, hook: str, fn: Any) -> Any:
        @functools.wraps(fn)
        def watched(*args: Any, **kwargs: Any) -> Any:
            if self._current is not None:  # a hook calling another: watched as part of the outer one
                return fn(*args, **kwargs)
            step = getattr(args[0], "step", None) if args else None
            where = f"{hook}()" + (f" at step {step}" if step is not None else "")
            return self._call(hook, where, fn, args, kwargs)

        return watched

    def _call(self, hook: str, where: str, fn: Any, args: tuple, kwargs: dict) -> Any:
        trainer_modes = _modes(self.model)
        if self.mode_phase is not None:
            self.model.train(bool((self.calls[hook] + self.mode_phase) % 2))
        self.calls[hook] += 1
        found = _modes(self.model)
        rng = global_rng_state()
        snap = model_snapshot(self.model, grads=hook == "on_after_backward")
        self._current = where
        try:
            return fn(*args, **kwargs)
        finally:
            self._current = None
            self._note(self.rng, where, changed_rng(rng, global_rng_state()))
            after = model_snapshot(self.model, grads=hook == "on_after_backward")
            self._note(self.model_changes, where, changed_tensors(snap, after))
            left = _modes(self.model)
            if left != found:
                self._note(self.mode_changes, where, [f"found the model in {_mode(found)} and left it in {_mode(left)}"])
            for m, was in zip(self.model.modules(), trainer_modes):
                m.training = was

    @staticmethod
    def _note(into: list[str], where: str, what: list[str]) -> None:
        if what and len(into) < _KEEP:
            into.append(f"{where}: {', '.join(what)}")

    def watch_split(self, split: Any) -> Any:
        """A copy of ``split`` (a dataset object) that records every attribute a hook reads on it
        into :attr:`val_reads`; reads outside the hooks (the trainer's own) are not recorded."""
        if split is None:
            return None
        base = type(split)
        watch = self

        class Watched(base):  # type: ignore[misc, valid-type]
            def __getattribute__(self, attr: str) -> Any:
                if watch._current is not None:
                    read = f"{watch._current} read ctx.val.{attr}"
                    if read not in watch.val_reads and len(watch.val_reads) < _KEEP:
                        watch.val_reads.append(read)
                return base.__getattribute__(self, attr)

        Watched.__name__, Watched.__qualname__ = base.__name__, base.__qualname__
        copy = base.__new__(Watched)
        copy.__dict__.update(split.__dict__)
        return copy
