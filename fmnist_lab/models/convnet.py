"""The parametric CNN family the sweeps search over."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def conv(cin: int, cout: int, kernel_size: int, bias: bool, separable: bool) -> nn.Module:
    """A `kernel_size` convolution keeping the image size; with `separable` and more than one
    input channel, a depthwise one (a kernel per channel) followed by a 1x1 pointwise one:
    cin x (k*k + cout) weights instead of cin x cout x k*k."""
    padding = kernel_size // 2
    if not separable or cin == 1:
        return nn.Conv2d(cin, cout, kernel_size, padding=padding, bias=bias)
    return nn.Sequential(
        nn.Conv2d(cin, cin, kernel_size, padding=padding, groups=cin, bias=False),
        nn.Conv2d(cin, cout, 1, bias=bias),
    )


class PadChannels(nn.Module):
    """A parameter-free shortcut to more channels: the input, then `extra` channels of zeros
    (ResNet's option A), where a 1x1 projection would cost cin x cout weights."""

    def __init__(self, extra: int) -> None:
        super().__init__()
        self.extra = extra

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.pad(x, (0, 0, 0, 0, 0, self.extra))


SHORTCUTS = ("conv", "pad")


class ConvBlock(nn.Module):
    """`convs` x (conv, batch norm, ReLU), an optional residual shortcut, pooling, dropout.

    Where the block changes the channel count the shortcut is a 1x1 convolution (`conv`) or
    the input padded with zero channels (`pad`, no parameters; needs cout >= cin).
    """

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel_size: int,
        convs: int,
        batch_norm: bool,
        residual: bool,
        pool: str,
        dropout: float,
        separable: bool = False,
        shortcut: str = "conv",
    ) -> None:
        super().__init__()
        if shortcut not in SHORTCUTS:
            raise ValueError(f"shortcut must be one of {', '.join(SHORTCUTS)}, not '{shortcut}'")
        if residual and shortcut == "pad" and cout < cin:
            raise ValueError(f"a 'pad' shortcut cannot narrow {cin} channels to {cout}")
        layers: list[nn.Module] = []
        for i in range(convs):
            cin_i = cin if i == 0 else cout
            layers.append(conv(cin_i, cout, kernel_size, not batch_norm, separable))
            if batch_norm:
                layers.append(nn.BatchNorm2d(cout))
            # With a residual shortcut the last ReLU comes after the addition.
            if not (residual and i == convs - 1):
                layers.append(nn.ReLU(inplace=True))
        self.body = nn.Sequential(*layers)
        self.shortcut: nn.Module | None = None
        if residual and cin == cout:
            self.shortcut = nn.Identity()
        elif residual and shortcut == "pad":
            self.shortcut = PadChannels(cout - cin)
        elif residual:
            self.shortcut = nn.Conv2d(cin, cout, 1, bias=False)
        pools = {"max": nn.MaxPool2d(2), "avg": nn.AvgPool2d(2), "none": nn.Identity()}
        if pool not in pools:
            raise ValueError(f"pool must be one of {', '.join(pools)}, not '{pool}'")
        self.pool = pools[pool]
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        if self.shortcut is not None:
            out = torch.relu(out + self.shortcut(x))
        return self.dropout(self.pool(out))


class ConvNet(nn.Module):
    """Conv blocks (one per entry of `filters`), then a flatten or global-pooling head.

    `dropout` and `pool` take one value for every block or a list with one per block.
    `fc` lists the hidden FC sizes of the head; an empty list goes straight to the classes.
    `separable` makes every convolution with more than one input channel depthwise
    separable, which buys width and depth for few parameters. `shortcut` is how a residual
    block that widens the image passes its input on: a 1x1 convolution (`conv`) or zero
    channels added (`pad`, which spends none of the parameter budget).
    Raises ValueError when the blocks pool the image below 1 x 1.
    """

    def __init__(
        self,
        filters: Sequence[int] = (32, 64),
        kernel_size: int = 3,
        convs_per_block: int = 1,
        batch_norm: bool = True,
        dropout: float | Sequence[float] = 0.0,
        pool: str | Sequence[str] = "max",
        residual: bool = False,
        head: str = "flatten",
        fc: Sequence[int] = (128,),
        fc_dropout: float = 0.0,
        separable: bool = False,
        shortcut: str = "conv",
        in_channels: int = 1,
        image_size: int = 28,
        num_classes: int = 10,
    ) -> None:
        super().__init__()
        filters = list(filters)
        if not filters or min(filters) < 1:
            raise ValueError("filters must list at least one block, each with >= 1 filter")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd and positive, not {kernel_size}")
        dropouts = _per_block(dropout, len(filters), "dropout")
        pools = _per_block(pool, len(filters), "pool")
        size = image_size
        for p in pools:
            size = size // 2 if p != "none" else size
        if size < 1:
            allowed = image_size.bit_length() - 1
            raise ValueError(
                f"{sum(p != 'none' for p in pools)} poolings shrink a {image_size}x{image_size} "
                f"image below 1x1; at most {allowed} fit"
            )
        if head not in ("flatten", "gap"):
            raise ValueError(f"head must be 'flatten' or 'gap', not '{head}'")

        blocks = []
        cin = in_channels
        for cout, drop, p in zip(filters, dropouts, pools, strict=True):
            blocks.append(
                ConvBlock(
                    cin,
                    cout,
                    kernel_size,
                    convs_per_block,
                    batch_norm,
                    residual,
                    p,
                    drop,
                    separable,
                    shortcut,
                )
            )
            cin = cout
        self.features = nn.Sequential(*blocks)

        head_layers: list[nn.Module] = []
        if head == "gap":
            head_layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
            width = cin
        else:
            head_layers.append(nn.Flatten())
            width = cin * size * size
        for hidden in fc:
            head_layers += [nn.Linear(width, hidden), nn.ReLU(inplace=True)]
            if fc_dropout:
                head_layers.append(nn.Dropout(fc_dropout))
            width = hidden
        head_layers.append(nn.Linear(width, num_classes))
        self.head = nn.Sequential(*head_layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _per_block(value, blocks: int, name: str) -> list:
    if isinstance(value, str | int | float):
        return [value] * blocks
    values = list(value)
    if len(values) != blocks:
        raise ValueError(f"{name} lists {len(values)} values for {blocks} blocks")
    return values
