"""A restricted unpickler for data files that are plain containers of NumPy arrays.

``pickle`` runs whatever callable a file names, so a crafted file executes code on load. The
CIFAR batches need only dicts, lists, numbers, bytes and NumPy arrays; :class:`SafeUnpickler`
resolves exactly the NumPy globals that rebuilding an array needs and refuses every other
global before anything is called.
"""

from __future__ import annotations

import io
import os
import pickle
from typing import Any

import numpy as np

from subsetlab.errors import DataError

__all__ = ["ALLOWED_GLOBALS", "SafeUnpickler", "safe_load"]


def _numpy_internal(name: str) -> Any:
    # NumPy 2 moved numpy.core to numpy._core; resolve without touching the deprecated alias.
    try:
        from numpy._core import multiarray, numeric
    except ImportError:  # NumPy 1.x
        from numpy.core import multiarray, numeric
    return getattr(multiarray, name, None) or getattr(numeric, name)


def _allowed() -> dict[tuple[str, str], Any]:
    table: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    for pkg in ("numpy.core", "numpy._core"):
        table[(f"{pkg}.multiarray", "_reconstruct")] = _numpy_internal("_reconstruct")
        table[(f"{pkg}.multiarray", "scalar")] = _numpy_internal("scalar")  # NumPy scalars
        # protocol-5 pickles of contiguous arrays are rebuilt from a buffer
        table[(f"{pkg}.numeric", "_frombuffer")] = _numpy_internal("_frombuffer")
    return table


#: The (module, name) globals a data pickle may reference, and what they resolve to.
ALLOWED_GLOBALS: dict[tuple[str, str], Any] = _allowed()


class SafeUnpickler(pickle.Unpickler):
    """An unpickler that resolves only :data:`ALLOWED_GLOBALS` (NumPy array reconstruction).

    Any other global (``os.system``, ``builtins.eval``, a class...) raises
    :class:`~subsetlab.errors.DataError` before it is called.
    """

    source = "<pickle>"

    def find_class(self, module: str, name: str) -> Any:
        """Return the allowed global ``module.name`` or refuse it."""
        obj = ALLOWED_GLOBALS.get((module, name))
        if obj is None:
            raise DataError(
                f"Refused to load {self.source!r}: the pickle references {module}.{name}, which "
                f"a data file of plain arrays never needs (a crafted file could run code this "
                f"way). Use the original data files."
            )
        return obj


def safe_load(path: str | os.PathLike, encoding: str = "bytes") -> Any:
    """Unpickle the file at ``path`` with :class:`SafeUnpickler`.

    Args:
        path: The pickle file.
        encoding: How Python 2 ``str`` objects are decoded; ``"bytes"`` keeps them as bytes,
            as the CIFAR batches expect.

    Returns:
        The unpickled object.

    Raises:
        DataError: when the file references a forbidden global or is not a valid pickle.
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        raw = f.read()
    unpickler = SafeUnpickler(io.BytesIO(raw), encoding=encoding)
    unpickler.source = path
    try:
        return unpickler.load()
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure of a corrupt pickle is a data error
        raise DataError(
            f"Cannot read {path!r} as a pickle ({type(exc).__name__}: {exc}); the file is "
            f"corrupt or not a data batch. Replace it with a fresh copy."
        ) from None
