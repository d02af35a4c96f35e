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
    try:
        return instantiate(kwargs)
    except Exception as err:
        # Hydra wraps the constructor's ValueError/TypeError; the innermost cause says it best.
        cause = err
        while cause.__cause__ is not None:
            cause = cause.__cause__
        raise UserError(f"model '{cfg.get('name', '?')}' cannot be built: {cause}") from err


def count_params(model: nn.Module) -> int:
    """The parameter count as REFERENCES.md defines it: every parameter of the trained model."""
    return sum(p.numel() for p in model.parameters())
