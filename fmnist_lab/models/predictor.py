"""The inference form of a trained net: what gets logged to MLflow and served."""

from __future__ import annotations

import torch
from torch import nn


class Predictor(nn.Module):
    """Float images in 0..1 (N x 1 x 28 x 28) -> class probabilities.

    Carries the training split's mean and std, so callers never normalise themselves.
    """

    def __init__(self, net: nn.Module, mean: float, std: float) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(float(mean)))
        self.register_buffer("std", torch.tensor(float(std)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.net((x - self.mean) / self.std), dim=1)
