"""Train-time augmentation of image batches with torch ops only: random crop and flip.

The whole batch is augmented with one gather: the batch is padded once, and each image's
crop offsets (and flip) become row and column index tensors, so there is no Python loop over
the images and the work stays on the batch's device.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from subsetlab.errors import ConfigError, DataError

__all__ = ["AugmentPolicy", "RandomCropFlip", "default_padding"]


@dataclass(frozen=True)
class AugmentPolicy:
    """How a data set is augmented when ``DataConfig.augment`` is True.

    Attributes:
        padding: Pixels of padding on each side before the random crop back to the input size
            (0 disables cropping).
        flip: Whether to flip images horizontally with probability 1/2 (only where a mirror
            image keeps its class, e.g. CIFAR; not for digits).
    """

    padding: int
    flip: bool = False


def default_padding(height: int) -> int:
    """The conventional crop padding for square images of side ``height``.

    4 px for 32x32 (CIFAR), 2 px for 28x28 (MNIST-type), 1 px for 8x8 (digits), and
    ``height // 8`` (at least 1) for any other size.
    """
    return {32: 4, 28: 2, 8: 1}.get(int(height), max(1, int(height) // 8))


class RandomCropFlip:
    """Random crop with padding and optional random horizontal flip of ``[B, C, H, W]`` batches.

    Each image is padded by ``padding`` pixels on every side with ``fill`` (per channel), a
    window of the original size is cut at a uniformly random offset, and, when ``flip`` is
    True, the result is mirrored left-right with probability 1/2. The output has the input's
    shape, dtype and device; the random draws come only from the generator passed in, so the
    same generator state gives the same batch.

    Args:
        padding: Padding in pixels on each side (>= 0).
        flip: Enable random horizontal flips.
        fill: Padding value, one float or one per channel (e.g. the normalised value of a black
            pixel, ``-mean / std``).

    Raises:
        ConfigError: when ``padding`` is negative.
    """

    def __init__(self, padding: int, flip: bool = False, fill: float | Sequence[float] = 0.0) -> None:
        if int(padding) < 0:
            raise ConfigError(f"RandomCropFlip padding must be >= 0. Got {padding} instead.")
        self.padding = int(padding)
        self.flip = bool(flip)
        self.fill = (float(fill),) if isinstance(fill, (int, float)) else tuple(float(v) for v in fill)

    def __repr__(self) -> str:
        return f"RandomCropFlip(padding={self.padding}, flip={self.flip}, fill={self.fill})"

    def sample(
        self, n: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Draw the crop offsets and flip flags of ``n`` images (on the generator's device).

        Returns:
            ``(dy, dx, flip)``: row and column offsets into the padded image, int64 in
            ``[0, 2 * padding]``, and a bool flip flag per image (all False when flips are off).
        """
        dev = generator.device
        hi = 2 * self.padding + 1
        dy = torch.randint(0, hi, (n,), generator=generator, device=dev)
        dx = torch.randint(0, hi, (n,), generator=generator, device=dev)
        if self.flip:
            flip = torch.rand(n, generator=generator, device=dev) < 0.5
        else:
            flip = torch.zeros(n, dtype=torch.bool, device=dev)
        return dy, dx, flip

    def apply(
        self, x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, flip: torch.Tensor
    ) -> torch.Tensor:
        """Crop (and flip) ``x`` with the given per-image offsets and flags.

        Args:
            x: Images ``[B, C, H, W]``.
            dy: Row offset of each crop in the padded image, ``[B]``.
            dx: Column offset of each crop in the padded image, ``[B]``.
            flip: Whether to mirror each crop left-right, ``[B]``.

        Returns:
            The augmented batch, same shape, dtype and device as ``x``.

        Raises:
            DataError: when ``x`` is not a 4-D batch or ``fill`` does not match its channels.
        """
        if x.dim() != 4:
            raise DataError(
                f"RandomCropFlip expects image batches of shape [B, C, H, W]. Got "
                f"{tuple(x.shape)} instead; disable augment for non-image data."
            )
        b, c, h, w = x.shape
        if len(self.fill) not in (1, c):
            raise DataError(
                f"RandomCropFlip fill has {len(self.fill)} values but the batch has {c} channels; "
                f"give one value or one per channel."
            )
        p = self.padding
        dev = x.device
        dy, dx, flip = dy.to(dev), dx.to(dev), flip.to(dev)
        fill = torch.tensor(self.fill, dtype=x.dtype, device=dev).view(1, -1, 1, 1)
        padded = fill.expand(b, c, h + 2 * p, w + 2 * p).clone()
        padded[:, :, p : p + h, p : p + w] = x
        ar_h = torch.arange(h, device=dev)
        ar_w = torch.arange(w, device=dev)
        rows = dy.view(b, 1) + ar_h  # [B, H]
        cols = dx.view(b, 1) + torch.where(flip.view(b, 1), (w - 1) - ar_w, ar_w)  # [B, W]
        bi = torch.arange(b, device=dev).view(b, 1, 1, 1)
        ci = torch.arange(c, device=dev).view(1, c, 1, 1)
        return padded[bi, ci, rows.view(b, 1, h, 1), cols.view(b, 1, 1, w)]

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Augment the batch ``x`` ``[B, C, H, W]`` with draws from ``generator``."""
        if x.shape[0] == 0:
            return x
        return self.apply(x, *self.sample(int(x.shape[0]), generator))
