"""The inference form of a trained net: what gets logged to MLflow and served."""

from __future__ import annotations

import torch
from torch import nn

# What a caller who passes 0..255 pixel values reads, from `mlflow models serve` too.
OUT_OF_RANGE = "pixel values must be floats in 0..1 (N x 1 x 28 x 28); divide 0..255 by 255"


class Predictor(nn.Module):
    """Float images in 0..1 (N x 1 x 28 x 28) -> class probabilities.

    Carries the training split's mean and std, so callers never normalise themselves. Input
    outside 0..1 is refused with OUT_OF_RANGE (a RuntimeError): 0..255 pixels would be read as
    a nearly white image and answered with confident nonsense. The check is part of the
    exported program, so every loader of the logged model gets it.
    """

    def __init__(self, net: nn.Module, mean: float, std: float) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(float(mean)))
        self.register_buffer("std", torch.tensor(float(std)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        torch._assert_async(((x >= 0) & (x <= 1)).all(), OUT_OF_RANGE)  # an op, not a branch
        return torch.softmax(self.net((x - self.mean) / self.std), dim=1)
