"""The CNNs of the reference projects R3 and R5 (see shared/REFERENCES.md), Keras-style.

The references were Keras notebooks: batch norm follows the activation, and details they left
out (padding, FC widths) are read so that the parameter count lands near the reported one.
Each class says its reading; the README lists the real counts beside the reported ones.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def keras_conv(cin: int, cout: int, kernel: int, same: bool, bn: bool = False) -> list[nn.Module]:
    """Conv2D + ReLU (+ BatchNormalization after the activation, as Keras code places it)."""
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, kernel, padding=kernel // 2 if same else 0),
        nn.ReLU(inplace=True),
    ]
    if bn:
        layers.append(nn.BatchNorm2d(cout))
    return layers


def dense_head(width: int, hidden: Sequence[int], dropout: float, classes: int) -> nn.Sequential:
    """Flatten, Dense + ReLU + Dropout per hidden size, Dense to the classes."""
    layers: list[nn.Module] = [nn.Flatten()]
    for size in hidden:
        layers += [nn.Linear(width, size), nn.ReLU(inplace=True), nn.Dropout(dropout)]
        width = size
    layers.append(nn.Linear(width, classes))
    return nn.Sequential(*layers)


class FeaturesHead(nn.Module):
    """A net that is `features` (convolutions) followed by `head` (FC layers)."""

    features: nn.Module
    head: nn.Module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class R3CNN(FeaturesHead):
    """R3: conv 128, conv 128, conv 256 (3x3), FC 256, dropout 0.5, batch norm after every
    activation. Read literally (Keras' default 'valid' padding, no pooling) it has 32.2 M
    parameters, against the 23.1 M reported; no reading with 3x3 convs and a 256-wide FC
    lands on 23.1 M, so the literal one is kept."""

    def __init__(self, dropout: float = 0.5, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            *keras_conv(1, 128, 3, same=False, bn=True),
            *keras_conv(128, 128, 3, same=False, bn=True),
            *keras_conv(128, 256, 3, same=False, bn=True),
        )
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(256 * 22 * 22, 256),
            nn.ReLU(inplace=True),
            nn.BatchNorm1d(256),
            nn.Dropout(dropout),
            nn.Linear(256, num_classes),
        )


class Conv2DNet(FeaturesHead):
    """R5 Conv2Dnet (3.2 M reported): conv 32, conv 64 ('same'), max pool, dropout 0.25,
    Dense 256, dropout 0.5 (the classic Keras MNIST net with 'same' padding): 3.23 M."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            *keras_conv(1, 32, 3, same=True),
            *keras_conv(32, 64, 3, same=True),
            nn.MaxPool2d(2),
            nn.Dropout(0.25),
        )
        self.head = dense_head(64 * 14 * 14, [256], 0.5, num_classes)


class Conv2DSimple(FeaturesHead):
    """R5 Conv2Dsimple (0.4 M reported): two blocks of a 1x1 "network in network" conv before
    a 3x3 conv, batch norm, max pool, dropout 0.25; Dense 128 with dropout 0.25: 0.45 M."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            *keras_conv(1, 32, 1, same=True),
            *keras_conv(32, 32, 3, same=True, bn=True),
            nn.MaxPool2d(2),
            nn.Dropout(0.25),
            *keras_conv(32, 64, 1, same=True),
            *keras_conv(64, 64, 3, same=True, bn=True),
            nn.MaxPool2d(2),
            nn.Dropout(0.25),
        )
        self.head = dense_head(64 * 7 * 7, [128], 0.25, num_classes)


class Conv2DSimple2(FeaturesHead):
    """R5 Conv2Dsimple2 (0.6 M reported): two conv layers (32, 64; 3x3 'same'), each with
    batch norm, max pooling and dropout 0.25, then two FC layers (Dense 192 with dropout
    0.25, then the classes): 0.62 M."""

    def __init__(self, fc: Sequence[int] = (192,), num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            *keras_conv(1, 32, 3, same=True, bn=True),
            nn.MaxPool2d(2),
            nn.Dropout(0.25),
            *keras_conv(32, 64, 3, same=True, bn=True),
            nn.MaxPool2d(2),
            nn.Dropout(0.25),
        )
        self.head = dense_head(64 * 7 * 7, fc, 0.25, num_classes)


class Conv2DSimple3(Conv2DSimple2):
    """R5 Conv2Dsimple3 (5.6 M reported): Conv2Dsimple2 with one more, wider FC layer
    (Dense 1536 and Dense 512, dropout 0.25 each): 5.63 M."""

    def __init__(self, fc: Sequence[int] = (1536, 512), num_classes: int = 10) -> None:
        super().__init__(fc=fc, num_classes=num_classes)


class InceptionBlock(nn.Module):
    """GoogLeNet-style block: 1x1, 1x1->3x3, 1x1->5x5 and 3x3 max pool->1x1, concatenated."""

    def __init__(self, cin: int, width: int) -> None:
        super().__init__()
        self.b1 = nn.Sequential(*keras_conv(cin, width, 1, same=True))
        self.b3 = nn.Sequential(
            *keras_conv(cin, width, 1, same=True), *keras_conv(width, width, 3, same=True)
        )
        self.b5 = nn.Sequential(
            *keras_conv(cin, width, 1, same=True), *keras_conv(width, width, 5, same=True)
        )
        self.bp = nn.Sequential(nn.MaxPool2d(3, 1, 1), *keras_conv(cin, width, 1, same=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b1(x), self.b3(x), self.b5(x), self.bp(x)], dim=1)


class InceptionCNN(FeaturesHead):
    """R5 InceptionCNN (20.1 M reported; it overfit): one inception block of four 64-wide
    branches on the full 28x28 image, flattened into Dense 100: 20.2 M."""

    def __init__(self, width: int = 64, hidden: int = 100, num_classes: int = 10) -> None:
        super().__init__()
        self.features = InceptionBlock(1, width)
        self.head = dense_head(4 * width * 28 * 28, [hidden], 0.0, num_classes)
