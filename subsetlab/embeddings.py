"""The one shared gradient-embedding extractor.

For softmax cross-entropy the gradient of an example's loss with respect to its logits ``z``
is ``softmax(z) - onehot(y)``: the gradient of the last linear layer's bias (C values). The
weight gradient is its outer product with the penultimate features ``h`` (C*D values). Both
come in closed form from one no-grad forward pass; the features are captured by a forward
hook on the model's last ``nn.Linear``, so models need no special ``forward`` signature.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from subsetlab.errors import ConfigError

__all__ = ["Embeddings", "GradientEmbedder", "find_last_linear", "last_layer_grads"]

Kind = Literal["bias", "bias_weight"]


def find_last_linear(model: nn.Module) -> nn.Linear:
    """The last ``nn.Linear`` registered in ``model`` (its output layer by convention).

    Raises:
        ConfigError: when the model has no ``nn.Linear``.
    """
    last = None
    for m in model.modules():
        if isinstance(m, nn.Linear):
            last = m
    if last is None:
        raise ConfigError(
            f"{type(model).__name__} has no nn.Linear layer; gradient embeddings need the "
            f"model's output layer to be an nn.Linear producing the logits (add one as the last layer)."
        )
    return last


def last_layer_grads(
    logits: torch.Tensor, y: torch.Tensor, features: torch.Tensor | None = None, kind: Kind = "bias"
) -> torch.Tensor:
    """Closed-form per-example gradients of cross-entropy w.r.t. the last linear layer.

    Args:
        logits: ``[n, C]``.
        y: ``[n]`` labels.
        features: ``[n, D]`` inputs of the last layer (needed for ``kind="bias_weight"``).
        kind: ``"bias"`` for ``softmax - onehot`` (C values) or ``"bias_weight"`` for the bias
            gradient followed by the flattened weight gradient (C + C*D values, row-major in
            the layout of ``weight``: ``[C, D]``).
    """
    return _grads_and_losses(logits, y, features, kind)[0]


def _grads_and_losses(
    logits: torch.Tensor, y: torch.Tensor, features: torch.Tensor | None, kind: Kind
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradient embedding and per-example cross-entropy from one log-softmax."""
    lsm = torch.log_softmax(logits.float(), dim=1)
    losses = -lsm.gather(1, y.unsqueeze(1)).squeeze(1)
    g = lsm.exp_()
    g[torch.arange(g.shape[0], device=g.device), y] -= 1.0
    if kind == "bias":
        return g, losses
    if features is None:
        raise ValueError("kind='bias_weight' needs the penultimate features")
    w = (g.unsqueeze(2) * features.float().unsqueeze(1)).flatten(1)
    return torch.cat([g, w], dim=1), losses


@dataclass
class Embeddings:
    """Result of :meth:`GradientEmbedder.embed`.

    Attributes:
        grads: ``[n, C]`` or ``[n, C + C*D]`` gradient embeddings.
        losses: ``[n]`` per-example cross-entropy.
        preds: ``[n]`` predicted classes.
        labels: ``[n]`` labels.
        indices: ``[n]`` dataset indices the rows belong to (row i is example ``indices[i]``).
        features: ``[n, D]`` penultimate features when requested, else None.
        logits: ``[n, C]`` logits when requested, else None.
    """

    grads: torch.Tensor
    losses: torch.Tensor
    preds: torch.Tensor
    labels: torch.Tensor
    indices: torch.Tensor
    features: torch.Tensor | None = None
    logits: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.indices.shape[0])


class GradientEmbedder:
    """Batched, no-grad, device-aware last-layer gradient embeddings.

    Args:
        model: Any module whose output layer is an ``nn.Linear`` producing the logits.
        device: Where to compute; defaults to the model's device.
        batch_size: Examples per forward pass (bounds activation memory).
        dtype: Storage dtype of ``grads``; ``torch.float16`` halves memory on CUDA (ignored on
            CPU, where half precision is slow).
        last_layer: The output ``nn.Linear``; found with :func:`find_last_linear` if omitted.
    """

    def __init__(
        self,
        model: nn.Module,
        device: torch.device | str | None = None,
        batch_size: int = 1024,
        dtype: torch.dtype = torch.float32,
        last_layer: nn.Linear | None = None,
    ) -> None:
        if batch_size < 1:
            raise ConfigError(f"The 'batch_size' of GradientEmbedder must be >= 1. Got {batch_size} instead.")
        self.model = model
        self.last_layer = last_layer if last_layer is not None else find_last_linear(model)
        if device is None:
            p = next(model.parameters(), None)
            device = p.device if p is not None else torch.device("cpu")
        self.device = torch.device(device)
        self.batch_size = int(batch_size)
        self.dtype = dtype if self.device.type == "cuda" else torch.float32
        self._checked = False

    @property
    def num_classes(self) -> int:
        """C, the output width of the last layer."""
        return int(self.last_layer.out_features)

    @property
    def feature_dim(self) -> int:
        """D, the input width of the last layer."""
        return int(self.last_layer.in_features)

    def dim(self, kind: Kind = "bias") -> int:
        """Embedding length for ``kind``: C or C + C*D."""
        c, d = self.num_classes, self.feature_dim
        return c if kind == "bias" else c + c * d

    def forward_with_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One forward pass returning ``(logits, penultimate features)`` via a forward hook."""
        captured: dict[str, torch.Tensor] = {}

        def hook(_m: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            captured["h"] = inputs[0]
            captured["z"] = output

        handle = self.last_layer.register_forward_hook(hook)
        try:
            logits = self.model(x)
        finally:
            handle.remove()
        if "h" not in captured:
            raise ConfigError(
                f"The last nn.Linear of {type(self.model).__name__} was not called in forward; "
                f"register the output layer last, or, building a GradientEmbedder yourself, pass "
                f"it as GradientEmbedder(model, last_layer=...)."
            )
        if not self._checked:
            same = captured["z"] is logits or (
                captured["z"].shape == logits.shape and torch.equal(captured["z"], logits)
            )
            if not same:
                raise ConfigError(
                    f"The output of {type(self.model).__name__} is not the output of its last "
                    f"nn.Linear (shapes {tuple(captured['z'].shape)} vs {tuple(logits.shape)}); "
                    f"closed-form embeddings need raw logits from that layer. Remove any final "
                    f"activation such as a softmax (the loss applies it), or, building a "
                    f"GradientEmbedder yourself, pass the logits layer as "
                    f"GradientEmbedder(model, last_layer=...)."
                )
            self._checked = True
        return logits, captured["h"].flatten(1)

    def embed(
        self,
        dataset,
        indices: torch.Tensor | None = None,
        kind: Kind = "bias",
        train_mode: bool = False,
        return_features: bool = False,
        return_logits: bool = False,
        out_device: torch.device | str | None = None,
    ) -> Embeddings:
        """Embed ``dataset[indices]`` (all examples when ``indices`` is None).

        The model runs in eval mode unless ``train_mode`` (its mode is restored afterwards),
        under ``torch.no_grad``, in batches of ``batch_size``. Outputs are preallocated on
        ``out_device`` (default: the compute device), so peak memory is one batch of
        activations plus the result.
        """
        if indices is None:
            indices = torch.arange(len(dataset))
        indices = torch.as_tensor(indices, dtype=torch.long)
        n = int(indices.shape[0])
        out_dev = torch.device(out_device) if out_device is not None else self.device
        c, d = self.num_classes, self.feature_dim
        grads = torch.empty((n, self.dim(kind)), dtype=self.dtype, device=out_dev)
        losses = torch.empty(n, device=out_dev)
        preds = torch.empty(n, dtype=torch.long, device=out_dev)
        labels = torch.empty(n, dtype=torch.long, device=out_dev)
        feats = torch.empty((n, d), device=out_dev) if return_features else None
        logits_out = torch.empty((n, c), device=out_dev) if return_logits else None
        was_training = self.model.training
        self.model.train(train_mode)
        try:
            with torch.no_grad():
                for s in range(0, n, self.batch_size):
                    idx = indices[s : s + self.batch_size]
                    x, y = dataset.get(idx)
                    x = x.to(self.device, non_blocking=True)
                    y = y.to(self.device, non_blocking=True)
                    z, h = self.forward_with_features(x)
                    z = z.float()
                    e = s + idx.shape[0]
                    g, loss = _grads_and_losses(z, y, h, kind)
                    grads[s:e] = g.to(out_dev, self.dtype)
                    losses[s:e] = loss.to(out_dev)
                    preds[s:e] = z.argmax(1).to(out_dev)
                    labels[s:e] = y.to(out_dev)
                    if feats is not None:
                        feats[s:e] = h.float().to(out_dev)
                    if logits_out is not None:
                        logits_out[s:e] = z.to(out_dev)
        finally:
            self.model.train(was_training)
        return Embeddings(grads, losses, preds, labels, indices.to(out_dev), feats, logits_out)
