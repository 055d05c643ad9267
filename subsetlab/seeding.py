"""Seeds derived from a run seed and a purpose, never from global or salted state."""

from __future__ import annotations

import hashlib

import numpy as np
import torch

__all__ = ["derive_seed", "torch_generator", "numpy_generator"]


def derive_seed(seed: int, *purpose: object) -> int:
    """A 63-bit seed derived from ``seed`` and a purpose path, stable across processes.

    ``derive_seed(0, "split", "digits")`` is the same in every process and Python version
    (SHA-256, not Python's salted ``hash``).
    """
    text = "/".join([str(int(seed)), *map(str, purpose)])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


def torch_generator(seed: int, *purpose: object, device: str | torch.device = "cpu") -> torch.Generator:
    """A ``torch.Generator`` seeded with :func:`derive_seed` of ``seed`` and ``purpose``."""
    g = torch.Generator(device=device)
    g.manual_seed(derive_seed(seed, *purpose))
    return g


def numpy_generator(seed: int, *purpose: object) -> np.random.Generator:
    """A NumPy ``Generator`` seeded with :func:`derive_seed` of ``seed`` and ``purpose``."""
    return np.random.default_rng(derive_seed(seed, *purpose))
