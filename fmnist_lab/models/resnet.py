"""torchvision's ResNet-18 adapted to 1 x 28 x 28 Fashion-MNIST images."""

from __future__ import annotations

import logging

import torch
from torch import nn
from torchvision.models import ResNet18_Weights, resnet18

log = logging.getLogger(__name__)


class ResNet18(nn.Module):
    """ResNet-18 with a stride-1 stem, no stem max pool (28x28 is too small for them) and a
    10-way head.

    From scratch the stem is a 3x3 conv on one channel. With `pretrained=True` the ImageNet
    weights are loaded where they can be (online, or in torch's cache) and the 7x7 stem keeps
    them, summed over the RGB channels; when they cannot be loaded, it says so and trains
    from scratch. `weights` records which happened.
    """

    def __init__(self, pretrained: bool = False, num_classes: int = 10) -> None:
        super().__init__()
        self.weights = "scratch"
        net = resnet18(weights=None)
        stem = nn.Conv2d(1, 64, 3, 1, 1, bias=False)
        if pretrained:
            try:
                state = ResNet18_Weights.IMAGENET1K_V1.get_state_dict(progress=False)
            except Exception as err:  # offline, no cache, a broken download: all alike here
                log.warning(
                    "ResNet-18: ImageNet weights could not be loaded (%s); training from scratch",
                    err,
                )
            else:
                net.load_state_dict(state)
                stem = nn.Conv2d(1, 64, 7, 1, 3, bias=False)
                stem.weight.data.copy_(state["conv1.weight"].sum(dim=1, keepdim=True))
                self.weights = "imagenet"
        if self.weights == "scratch":
            log.warning("ResNet-18: training from scratch (no pre-trained weights)")
        net.conv1 = stem
        net.maxpool = nn.Identity()
        net.fc = nn.Linear(net.fc.in_features, num_classes)
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
