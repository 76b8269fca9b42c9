"""The paper's three models, with batch norm, and batch-norm-free variants for exact checks.

* ``MLP``: a 4-layer ReLU MLP (three hidden layers and the output layer), batch norm after each hidden linear
  layer (the paper's Fashion-MNIST model; the paper does not give the width, 256 here by default).
* ``VGG11``: configuration A of Simonyan & Zisserman with batch norm, adapted to 32×32 images as is usual for CIFAR
  (five poolings leave 1×1×512; one linear classifier).
* ``ResNet56``: the CIFAR ResNet of He et al. (2016): three stages of nine basic blocks with 16, 32 and 64 channels
  and parameter-free (option A) shortcuts; 0.85 M parameters.

``width`` scales the channel counts (and the MLP's hidden size), so that the same architectures run at small
scale on a CPU. ``batch_norm=False`` replaces every batch norm by the identity.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["MLP", "VGG11", "ResNet56", "build_model", "MODELS", "count_parameters"]

MODELS = ("mlp", "vgg11", "resnet56")


def _bn1d(n, on):
    return nn.BatchNorm1d(n) if on else nn.Identity()


def _bn2d(n, on):
    return nn.BatchNorm2d(n) if on else nn.Identity()


class MLP(nn.Module):
    """Flatten → [Linear → BN → ReLU] × 3 → Linear."""

    def __init__(self, input_shape, num_classes=10, *, hidden=256, depth=4, batch_norm=True):
        super().__init__()
        if depth < 2:
            raise ValueError(f"depth must be >= 2 (hidden layers plus the output), got {depth}")
        d_in = math.prod(input_shape)
        layers: list[nn.Module] = [nn.Flatten()]
        for _ in range(depth - 1):
            layers += [nn.Linear(d_in, hidden, bias=not batch_norm), _bn1d(hidden, batch_norm), nn.ReLU()]
            d_in = hidden
        layers.append(nn.Linear(d_in, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        """Logits of the batch ``x``."""
        return self.net(x)


_VGG11 = [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"]


class VGG11(nn.Module):
    """VGG11 (configuration A) with batch norm for 32×32 inputs; ``width`` scales every channel count."""

    def __init__(self, input_shape=(3, 32, 32), num_classes=10, *, width=1.0, batch_norm=True):
        super().__init__()
        c, h, w = input_shape
        if h % 32 or w % 32:
            raise ValueError(f"VGG11 needs images whose sides are multiples of 32 (pad 28x28 to 32), got {h}x{w}")
        layers: list[nn.Module] = []
        for v in _VGG11:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                out = max(1, int(round(v * width)))
                layers += [nn.Conv2d(c, out, 3, padding=1, bias=not batch_norm), _bn2d(out, batch_norm),
                           nn.ReLU(inplace=False)]
                c = out
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(c * (h // 32) * (w // 32), num_classes)

    def forward(self, x):
        """Logits of the batch ``x``."""
        return self.classifier(torch.flatten(self.features(x), 1))


class _Block(nn.Module):
    #: How many networks are packed side by side in the channels (``nets.packed``): the shortcut pads each
    #: member's channels, not the packed whole. 1 for an ordinary network.
    members = 1

    def __init__(self, c_in, c_out, stride, batch_norm):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=not batch_norm)
        self.bn1 = _bn2d(c_out, batch_norm)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=not batch_norm)
        self.bn2 = _bn2d(c_out, batch_norm)
        self.stride = stride
        self.pad = c_out - c_in

    def shortcut(self, x):
        # Option A: subsample and zero-pad the channels (no parameters).
        if self.stride != 1:
            x = x[:, :, ::self.stride, ::self.stride]
        if self.pad:
            b, c, h, w = x.shape
            x = F.pad(x.reshape(b, self.members, c // self.members, h, w),
                      (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2)).reshape(b, -1, h, w)
        return x

    def forward(self, x):
        """The block's output (feature maps) for the batch ``x``."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet56(nn.Module):
    """CIFAR ResNet with ``blocks`` basic blocks per stage (9 → ResNet56, 3 → ResNet20)."""

    def __init__(self, input_shape=(3, 32, 32), num_classes=10, *, width=1.0, blocks=9, batch_norm=True):
        super().__init__()
        widths = [max(1, int(round(16 * width * k))) for k in (1, 2, 4)]
        self.conv = nn.Conv2d(input_shape[0], widths[0], 3, padding=1, bias=not batch_norm)
        self.bn = _bn2d(widths[0], batch_norm)
        stages, c = [], widths[0]
        for i, w in enumerate(widths):
            for j in range(blocks):
                stages.append(_Block(c, w, 2 if (i > 0 and j == 0) else 1, batch_norm))
                c = w
        self.stages = nn.Sequential(*stages)
        self.fc = nn.Linear(c, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")

    def forward(self, x):
        """Logits of the batch ``x``."""
        out = self.stages(F.relu(self.bn(self.conv(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))


def build_model(name: str, input_shape, num_classes=10, *, seed: int, width=1.0, batch_norm=True) -> nn.Module:
    """``name`` is one of ``MODELS``; ``width`` scales the channels (MLP: hidden size 256·width); ``seed`` (required:
    no model's initialisation comes from an unstated state) fixes the initialisation without touching the caller's
    random state (torch's modules draw their initial weights from the global generator, so it is seeded inside
    ``torch.random.fork_rng``, which restores it afterwards)."""
    if width <= 0:
        raise ValueError(f"width must be > 0, got {width}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _build(name, input_shape, num_classes, width, batch_norm)


def _build(name: str, input_shape, num_classes, width, batch_norm) -> nn.Module:
    if name == "mlp":
        return MLP(input_shape, num_classes, hidden=max(1, int(round(256 * width))), batch_norm=batch_norm)
    if name == "vgg11":
        return VGG11(input_shape, num_classes, width=width, batch_norm=batch_norm)
    if name == "resnet56":
        return ResNet56(input_shape, num_classes, width=width, batch_norm=batch_norm)
    raise ValueError(f"model must be one of {MODELS}, got {name!r}")


def count_parameters(model: nn.Module) -> int:
    """The number of trainable parameters P."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
