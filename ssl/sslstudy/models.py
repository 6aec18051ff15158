"""Backbones (feature extractors without a classifier) and the heads SSL methods put on them."""

from __future__ import annotations

import torch
from torch import nn

from .errors import UserError

ARCHS = ("cnn4", "resnet18", "resnet50")


class CNN4(nn.Module):
    """Four conv-BN-ReLU blocks (the last three stride 2) and global average pooling.

    The CPU default: at width 16 and 32 px it trains far faster than a ResNet-18 (docs/performance.md).
    """

    def __init__(self, width: int = 32):
        super().__init__()
        chans = [3, width, 2 * width, 4 * width, 8 * width]
        layers = []
        for i in range(4):
            layers += [
                nn.Conv2d(chans[i], chans[i + 1], 3, stride=1 if i == 0 else 2, padding=1, bias=False),
                nn.BatchNorm2d(chans[i + 1]),
                nn.ReLU(inplace=True),
            ]
        self.features = nn.Sequential(*layers)
        self.out_dim = chans[-1]

    def forward_map(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).mean(dim=(2, 3))


class ResNetBackbone(nn.Module):
    """A torchvision ResNet without its classifier; small_stem swaps the 7x7/2 conv + max-pool
    for a 3x3/1 conv (the usual change for 32-96 px images)."""

    def __init__(self, arch: str, small_stem: bool):
        super().__init__()
        import torchvision  # here, not at the top: importing it costs every job start-up seconds

        net = getattr(torchvision.models, arch)(weights=None)
        if small_stem:
            net.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
            net.maxpool = nn.Identity()
        self.out_dim = net.fc.in_features
        net.fc = nn.Identity()
        self.net = net

    def forward_map(self, x: torch.Tensor) -> torch.Tensor:
        n = self.net
        x = n.maxpool(n.relu(n.bn1(n.conv1(x))))
        return n.layer4(n.layer3(n.layer2(n.layer1(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_map(x).mean(dim=(2, 3))


def build_backbone(arch: str, width: int = 32, small_stem: bool = True) -> nn.Module:
    if arch == "cnn4":
        return CNN4(width)
    if arch in ("resnet18", "resnet50"):
        return ResNetBackbone(arch, small_stem)
    raise UserError(f"unknown backbone {arch!r}; choose one of {', '.join(ARCHS)} in params (pretrain.backbone.arch)")


def mlp(in_dim: int, hidden: int, out: int, layers: int = 2, last_bn: bool = False) -> nn.Sequential:
    """Projector/predictor: (layers-1) x [Linear, BN, ReLU] then Linear (+ BN for SimCLR v2-style heads)."""
    mods: list[nn.Module] = []
    d = in_dim
    for _ in range(layers - 1):
        mods += [nn.Linear(d, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True)]
        d = hidden
    mods.append(nn.Linear(d, out, bias=not last_bn))
    if last_bn:
        mods.append(nn.BatchNorm1d(out, affine=False))
    return nn.Sequential(*mods)
