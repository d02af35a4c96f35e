"""Fully connected networks: R1's baseline and R2's 784-256-128-32-10."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn


class MLP(nn.Module):
    """Flatten, then Linear + ReLU (+ dropout) per hidden size, then a Linear to the classes."""

    def __init__(
        self,
        hidden: Sequence[int] = (256,),
        dropout: float = 0.0,
        in_features: int = 28 * 28,
        num_classes: int = 10,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU(inplace=True)]
            if dropout:
                layers.append(nn.Dropout(dropout))
            width = size
        layers.append(nn.Linear(width, num_classes))
        self.layers = nn.Sequential(*layers)

    def forward(self, x):
        return self.layers(x)
