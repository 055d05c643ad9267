"""CIFAR-style residual networks: ``resnet20`` and ``resnet18``.

``resnet20`` follows He et al. (2016): 3 stages of 3 basic blocks, 16/32/64 channels.
``resnet18`` is the usual CIFAR variant: 3x3 stem, no max-pool, 4 stages of 64..512 channels.
Channel changes use 1x1 conv + BatchNorm projection shortcuts.
"""

from __future__ import annotations

from pydantic import Field
from torch import Tensor, nn
from torch.nn import functional as F

from subsetlab.config import FrozenConfig
from subsetlab.errors import ConfigError
from subsetlab.models.registry import register_model

__all__ = ["BasicBlock", "CifarResNet", "ResNetOptions", "build_resnet18", "build_resnet20"]


class ResNetOptions(FrozenConfig):
    """Options of the ``resnet20`` and ``resnet18`` models."""

    width: float = Field(
        1.0, gt=0.0, le=16.0, description="Channel multiplier (1 = the standard 16/32/64 or 64..512)."
    )


class BasicBlock(nn.Module):
    """Two 3x3 conv + BatchNorm layers with a residual connection.

    The shortcut is the identity, or a 1x1 conv + BatchNorm projection when the stride or the
    channel count changes.

    Args:
        in_channels: Input channels.
        out_channels: Output channels.
        stride: Stride of the first conv (2 halves the resolution).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        if stride != 1 or in_channels != out_channels:
            self.shortcut: nn.Module = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        """``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """A residual network for small images, ending in an ``nn.Linear`` (the last module).

    A 3x3 stem, stages of :class:`BasicBlock`, global average pooling, the output layer.

    Args:
        in_channels: Channels of the input images.
        num_classes: Number of output logits.
        widths: Channels of each stage.
        blocks: Blocks per stage.
        strides: Stride of the first block of each stage.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        widths: tuple[int, ...],
        blocks: tuple[int, ...],
        strides: tuple[int, ...],
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
        )
        stages = []
        cin = widths[0]
        for width, n, stride in zip(widths, blocks, strides, strict=True):
            layers = []
            for i in range(n):
                layers.append(BasicBlock(cin, width, stride if i == 0 else 1))
                cin = width
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``[B, num_classes]`` of images ``[B, C, H, W]``."""
        return self.fc(self.pool(self.stages(self.stem(x))))


def _widths(base: tuple[int, ...], width: float) -> tuple[int, ...]:
    return tuple(max(1, round(b * width)) for b in base)


def _image_shape(name: str, input_shape: tuple[int, ...]) -> int:
    if len(input_shape) != 3:
        raise ConfigError(
            f"Model {name!r} needs image inputs of shape [C, H, W]. Got examples of shape "
            f"{tuple(input_shape)}; use 'mlp' for flat features."
        )
    return input_shape[0]


@register_model("resnet20", options=ResNetOptions)
def build_resnet20(opts: ResNetOptions, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """CIFAR ResNet-20: 3 stages of 3 basic blocks, 16/32/64 channels times ``width``."""
    c = _image_shape("resnet20", input_shape)
    return CifarResNet(c, num_classes, _widths((16, 32, 64), opts.width), (3, 3, 3), (1, 2, 2))


@register_model("resnet18", options=ResNetOptions)
def build_resnet18(opts: ResNetOptions, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """ResNet-18, CIFAR variant: 3x3 stem, no max-pool, 4 stages of 2 blocks, 64..512 channels."""
    c = _image_shape("resnet18", input_shape)
    return CifarResNet(c, num_classes, _widths((64, 128, 256, 512), opts.width), (2, 2, 2, 2), (1, 2, 2, 2))
