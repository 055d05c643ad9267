"""Checks that a model fits subsetlab: logits of the right shape from its last ``nn.Linear``."""

from __future__ import annotations

import math

import torch
from torch import nn

from subsetlab.embeddings import find_last_linear
from subsetlab.errors import ConfigError

__all__ = ["check_model"]


def check_model(model: nn.Module, input_shape: tuple[int, ...], num_classes: int) -> None:
    """Check ``model`` on a dummy batch: logits ``[B, num_classes]`` from its last ``nn.Linear``.

    The gradient embedder hooks the last ``nn.Linear`` registered in the model, so that layer
    must produce the model's output, with no activation (softmax...) after it. The dummy
    forward runs in eval mode without gradients on the model's device; the model's training
    mode and batch-norm statistics are left unchanged.

    Args:
        model: The network.
        input_shape: Shape of one example (without the batch axis).
        num_classes: Number of classes the output must have.

    Raises:
        ConfigError: when the model is not an ``nn.Module``, has no ``nn.Linear``, fails on
            the dummy batch, returns something other than a ``[B, num_classes]`` tensor, or
            its output is not the output of its last ``nn.Linear``.
    """
    if not isinstance(model, nn.Module):
        raise ConfigError(f"A model must be a torch.nn.Module. Got {type(model).__name__} instead.")
    label = type(model).__name__
    try:
        last = find_last_linear(model)
    except ConfigError:
        raise ConfigError(
            f"{label} has no nn.Linear layer; subsetlab needs the output layer to be an "
            f"nn.Linear producing the logits (add one as the last layer)."
        ) from None
    if last.out_features != num_classes:
        raise ConfigError(
            f"The last nn.Linear of {label} has out_features={last.out_features}, but the data "
            f"has {num_classes} classes. Make the output layer nn.Linear(..., {num_classes})."
        )
    param = next(iter(model.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.dtype.is_floating_point else torch.float32
    shape = (2, *(int(s) for s in input_shape))
    # a deterministic, non-constant probe that needs no random numbers
    x = torch.linspace(-1.0, 1.0, math.prod(shape), device=device, dtype=dtype).reshape(shape)
    captured: list[torch.Tensor] = []
    handle = last.register_forward_hook(lambda _m, _i, out: captured.append(out))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            out = model(x)
    except Exception as exc:
        raise ConfigError(
            f"{label} failed on a dummy batch of shape {shape}: {type(exc).__name__}: {exc}. "
            f"Check that the model accepts inputs of shape {tuple(input_shape)}."
        ) from exc
    finally:
        handle.remove()
        model.train(was_training)
    if not isinstance(out, torch.Tensor):
        raise ConfigError(
            f"{label} returned a {type(out).__name__}; it must return the logits tensor "
            f"[batch, {num_classes}] (no tuples or dicts)."
        )
    if tuple(out.shape) != (2, num_classes):
        raise ConfigError(
            f"{label} returned output of shape {tuple(out.shape)} for a batch of 2 inputs of "
            f"shape {tuple(input_shape)}; expected (2, {num_classes}) logits."
        )
    if not captured:
        raise ConfigError(
            f"The last nn.Linear of {label} (out_features={last.out_features}) was not called "
            f"in forward; the output layer must be the last nn.Linear registered in the model."
        )
    hooked = captured[-1]
    if hooked is not out and not (hooked.shape == out.shape and torch.equal(hooked, out)):
        raise ConfigError(
            f"The output of {label} is not the output of its last registered nn.Linear: "
            f"something (an activation, softmax or another layer) follows it, or the output "
            f"layer is registered before other nn.Linear modules. Return the logits of the last "
            f"nn.Linear directly (apply softmax in the loss, not in the model)."
        )
