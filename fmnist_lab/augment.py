"""Augmentation of whole batches on the device, with independent randomness per image."""

from __future__ import annotations

import math

import torch
from torch import nn


class BatchAugment(nn.Module):
    """Random horizontal flip, pad-and-crop translation and random erasing.

    Works on float images in 0..1 of shape N x C x H x W, before normalisation, so padding
    and erased areas are black like the Fashion-MNIST background. Active only in training
    mode; `eval()` makes it the identity.
    """

    def __init__(
        self,
        flip: bool = False,
        crop_padding: int = 0,
        erasing_p: float = 0.0,
        erasing_scale: tuple[float, float] = (0.02, 0.33),
        erasing_ratio: tuple[float, float] = (0.3, 3.3),
    ) -> None:
        super().__init__()
        if crop_padding < 0 or not 0 <= erasing_p <= 1:
            raise ValueError("crop_padding must be >= 0 and erasing_p in [0, 1]")
        self.flip, self.crop_padding, self.erasing_p = flip, crop_padding, erasing_p
        self.erasing_scale, self.erasing_ratio = tuple(erasing_scale), tuple(erasing_ratio)

    @property
    def active(self) -> bool:
        return self.flip or self.crop_padding > 0 or self.erasing_p > 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        if self.flip:
            x = random_flip(x)
        if self.crop_padding:
            x = random_crop(x, self.crop_padding)
        if self.erasing_p:
            x = random_erasing(x, self.erasing_p, self.erasing_scale, self.erasing_ratio)
        return x

    def extra_repr(self) -> str:
        return f"flip={self.flip}, crop_padding={self.crop_padding}, erasing_p={self.erasing_p}"


def random_flip(x: torch.Tensor) -> torch.Tensor:
    """Mirror each image left-right with probability 1/2."""
    mask = torch.rand(x.shape[0], 1, 1, 1, device=x.device) < 0.5
    return torch.where(mask, x.flip(-1), x)


def random_crop(x: torch.Tensor, padding: int) -> torch.Tensor:
    """Zero-pad by `padding` and cut each image back to size at its own random offset."""
    n, c, h, w = x.shape
    padded = nn.functional.pad(x, (padding,) * 4)
    dy = torch.randint(0, 2 * padding + 1, (n, 1), device=x.device)
    dx = torch.randint(0, 2 * padding + 1, (n, 1), device=x.device)
    rows = (dy + torch.arange(h, device=x.device)).view(n, 1, h, 1).expand(n, c, h, w)
    cols = (dx + torch.arange(w, device=x.device)).view(n, 1, 1, w).expand(n, c, h, w)
    # Two gathers: first pick the rows, then within them the columns.
    picked_rows = padded.gather(2, rows[..., :1].expand(n, c, h, w + 2 * padding))
    return picked_rows.gather(3, cols)


def random_erasing(
    x: torch.Tensor,
    p: float,
    scale: tuple[float, float] = (0.02, 0.33),
    ratio: tuple[float, float] = (0.3, 3.3),
) -> torch.Tensor:
    """Black out one random rectangle in each image with probability `p` (Zhong et al.)."""
    n, _, h, w = x.shape
    dev = x.device
    area = h * w * torch.empty(n, device=dev).uniform_(*scale)
    log_ratio = torch.empty(n, device=dev).uniform_(math.log(ratio[0]), math.log(ratio[1]))
    aspect = log_ratio.exp()
    eh = (area * aspect).sqrt().round().clamp(1, h).long()
    ew = (area / aspect).sqrt().round().clamp(1, w).long()
    top = (torch.rand(n, device=dev) * (h - eh + 1)).long()
    left = (torch.rand(n, device=dev) * (w - ew + 1)).long()
    ys = torch.arange(h, device=dev).view(1, h, 1)
    xs = torch.arange(w, device=dev).view(1, 1, w)
    inside = (
        (ys >= top.view(n, 1, 1)) & (ys < (top + eh).view(n, 1, 1))
        & (xs >= left.view(n, 1, 1)) & (xs < (left + ew).view(n, 1, 1))
    )  # fmt: skip
    chosen = (torch.rand(n, device=dev) < p).view(n, 1, 1)
    return x.masked_fill((inside & chosen).unsqueeze(1), 0.0)
