"""Model zoo: reference architectures, the searchable ConvNet family, ResNet-18.

Each `conf/model/*.yaml` names its class with `_target_` and a display `name`. This file
imports nothing heavy, so a logged model unpickles with torch alone.
"""

from __future__ import annotations

from typing import Any

from torch import nn


def build_model(cfg: Any) -> nn.Module:
    """Instantiate a model config (its `name` key is for display and is not passed on)."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from fmnist_lab.errors import UserError

    kwargs = OmegaConf.to_container(cfg, resolve=True)
    kwargs.pop("name", None)
    init = kwargs.pop("init", "torch")
    if init not in INITS:
        raise UserError(f"model.init must be one of {', '.join(INITS)}, not '{init}'")
    try:
        model = instantiate(kwargs)
    except Exception as err:
        # Hydra wraps the constructor's ValueError/TypeError; the innermost cause says it best.
        cause = err
        while cause.__cause__ is not None:
            cause = cause.__cause__
        raise UserError(f"model '{cfg.get('name', '?')}' cannot be built: {cause}") from err
    INITS[init](model)
    return model


def keras_init(model: nn.Module) -> None:
    """Keras' defaults for Dense and Conv2D: Glorot-uniform weights, zero biases (PyTorch's
    own draw within +/- 1/sqrt(fan_in), 2.5 times narrower for a 200,000-input layer)."""
    for module in model.modules():
        if isinstance(module, nn.Linear | nn.Conv2d):
            nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)


# model.init: how the weights start. torch: each layer's PyTorch default; keras: as the Keras
# reference projects' layers start.
INITS = {"torch": lambda model: None, "keras": keras_init}


def count_params(model: nn.Module) -> int:
    """The parameter count as REFERENCES.md defines it: every parameter of the trained model."""
    return sum(p.numel() for p in model.parameters())
