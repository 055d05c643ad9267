"""Reader of the IDX format of MNIST and Fashion-MNIST (plain or gzip-compressed).

An IDX file is a 4-byte magic number ``00 00 <type> <ndim>``, ``ndim`` big-endian uint32
dimensions, then the values in C order, big-endian.
"""

from __future__ import annotations

import gzip
import os
import zlib

import numpy as np

from subsetlab.errors import DataError

__all__ = ["IDX_TYPES", "read_idx"]

#: IDX type byte -> numpy dtype (big-endian).
IDX_TYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

_GZIP_MAGIC = b"\x1f\x8b"


def _read_bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] != _GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(
            f"IDX file {path!r} looks gzip-compressed but cannot be decompressed ({exc}); the "
            f"file is corrupt or truncated. Replace it with a fresh copy."
        ) from None


def read_idx(path: str | os.PathLike, ndim: int | None = None) -> np.ndarray:
    """Read an IDX file (gzip-compressed or not, detected from its content).

    Args:
        path: The file.
        ndim: When given, the number of dimensions the file must have (3 for images, 1 for
            labels).

    Returns:
        The array, in native byte order, with the file's dtype and shape.

    Raises:
        DataError: on a bad magic number, an unknown type code, a wrong number of
            dimensions, or a size that does not match the header.
    """
    path = os.fspath(path)
    raw = _read_bytes(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_TYPES:
        raise DataError(
            f"{path!r} is not an IDX file: its magic number is {raw[:4].hex() or '(empty)'}, "
            f"expected 0000 followed by a type byte in "
            f"{{{', '.join(f'{t:02x}' for t in IDX_TYPES)}}} and the number of dimensions. "
            f"Replace it with a fresh copy of the data set."
        )
    dtype, nd = IDX_TYPES[raw[2]], raw[3]
    if ndim is not None and nd != ndim:
        raise DataError(
            f"IDX file {path!r} has {nd} dimensions where {ndim} were expected (magic number "
            f"{raw[:4].hex()}); check that images and label files are not swapped."
        )
    header = 4 + 4 * nd
    if len(raw) < header:
        raise DataError(f"IDX file {path!r} is truncated inside its header ({len(raw)} bytes).")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=nd, offset=4))
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        raise DataError(
            f"IDX file {path!r} has {len(raw)} bytes but its header {shape} of {dtype.name} "
            f"implies {expected}; the file is truncated or corrupt. Replace it."
        )
    arr = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return arr.astype(dtype.newbyteorder("="), copy=False) if dtype.itemsize > 1 else arr
