"""Model registry: ``create_model(name, num_classes=..., **kw)``.

CIFAR-style models (32x32 inputs) take a ``width`` multiplier so CPU experiments stay small.
Any torchvision classification model is reachable as ``torchvision:<name>``.
"""
from __future__ import annotations

from typing import Callable

import torch.nn as nn

__all__ = ["create_model", "list_models", "register_model"]

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str) -> Callable:
    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _REGISTRY[name] = fn
        return fn
    return deco


def list_models() -> list[str]:
    return sorted(_REGISTRY) + ["torchvision:<name>"]


def create_model(name: str, *, num_classes: int = 10, width: float = 1.0, pretrained: bool = False) -> nn.Module:
    """Build a model by registry name (``vgg16_cifar``, ``resnet56_cifar``, ``resnet50``, ``torchvision:<name>``)."""
    if name.startswith("torchvision:"):
        return _torchvision_model(name.split(":", 1)[1], num_classes=num_classes, pretrained=pretrained)
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r} (known: {', '.join(list_models())})")
    return _REGISTRY[name](num_classes=num_classes, width=width, pretrained=pretrained)


def _ch(c: int, width: float) -> int:
    return max(1, int(round(c * width)))


# ---------------------------------------------------------------- VGG16 (CIFAR)
_VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


class VGGCifar(nn.Module):
    """VGG16 for 32x32 inputs: 13 conv3x3+BN+ReLU, 5 max-pools, classifier 512-512-N (~313M FLOPs, 14.98M params)."""

    def __init__(self, num_classes: int = 10, width: float = 1.0):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for v in _VGG16:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                c = _ch(v, width)
                layers += [nn.Conv2d(c_in, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
                c_in = c
        self.features = nn.Sequential(*layers)
        hidden = _ch(512, width)
        self.classifier = nn.Sequential(
            nn.Linear(c_in, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, num_classes),
        )

    def forward(self, x):
        x = self.features(x)  # (B, C, 1, 1) after five 2x2 pools of a 32x32 input
        return self.classifier(x.flatten(1))


@register_model("vgg16_cifar")
def vgg16_cifar(*, num_classes: int = 10, width: float = 1.0, pretrained: bool = False) -> nn.Module:
    if pretrained:
        raise ValueError("vgg16_cifar has no pretrained weights: train a teacher (`cascade teacher`) or give a checkpoint")
    return VGGCifar(num_classes, width)


# ---------------------------------------------------------------- ResNet-56 (CIFAR)
class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        # Projection shortcut (option B) when the shape changes: it keeps every channel prunable by
        # Torch-Pruning, where the zero-padding shortcut (option A) would pin channel positions.
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNetCifar(nn.Module):
    def __init__(self, depth: int = 56, num_classes: int = 10, width: float = 1.0):
        super().__init__()
        assert (depth - 2) % 6 == 0, "depth must be 6n+2"
        n = (depth - 2) // 6
        widths = [_ch(16, width), _ch(32, width), _ch(64, width)]
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        stages, c_in = [], widths[0]
        for i, c in enumerate(widths):
            blocks = []
            for j in range(n):
                blocks.append(BasicBlock(c_in, c, 2 if (i > 0 and j == 0) else 1))
                c_in = c
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.avgpool(x).flatten(1))


@register_model("resnet56_cifar")
def resnet56_cifar(*, num_classes: int = 10, width: float = 1.0, pretrained: bool = False) -> nn.Module:
    if pretrained:
        raise ValueError("resnet56_cifar has no pretrained weights: train a teacher or give a checkpoint")
    return ResNetCifar(56, num_classes, width)


@register_model("resnet20_cifar")
def resnet20_cifar(*, num_classes: int = 10, width: float = 1.0, pretrained: bool = False) -> nn.Module:
    if pretrained:
        raise ValueError("resnet20_cifar has no pretrained weights: train a teacher or give a checkpoint")
    return ResNetCifar(20, num_classes, width)


# ---------------------------------------------------------------- ImageNet models (torchvision)
@register_model("resnet50")
def resnet50(*, num_classes: int = 1000, width: float = 1.0, pretrained: bool = False) -> nn.Module:
    if width != 1.0:
        raise ValueError("resnet50 takes no width multiplier")
    return _torchvision_model("resnet50", num_classes=num_classes, pretrained=pretrained)


def _torchvision_model(name: str, *, num_classes: int, pretrained: bool) -> nn.Module:
    import torchvision

    if name not in torchvision.models.list_models(module=torchvision.models):
        raise ValueError(f"unknown torchvision classification model {name!r}")
    if not pretrained:
        return torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    # Pretrained weights come from torchvision's cache (TORCH_HOME); a new head replaces the
    # 1000-way classifier when the data set has another number of classes.
    model = torchvision.models.get_model(name, weights="DEFAULT")
    if num_classes != 1000:
        _replace_last_linear(model, num_classes)
    return model


def _replace_last_linear(model: nn.Module, num_classes: int) -> None:
    name, last = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1]
    parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
    setattr(parent, name.rsplit(".", 1)[-1], nn.Linear(last.in_features, num_classes))
