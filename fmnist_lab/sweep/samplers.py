"""The sweep file's sampler and pruner, built from `_target_` (sweeps/sampler/, sweeps/pruner/)."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import optuna
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf
from optuna.trial import FrozenTrial

from fmnist_lab import space as search_space


def make_sampler(spec: DictConfig, offset: int = 0) -> optuna.samplers.BaseSampler:
    """The sweep file's sampler; `offset` shifts its seed so that parallel workers and
    resumed sweeps do not replay the same random draws. What is known only now is added
    where the sampler takes it: the seed, the constraints function, a grid's values."""
    factory = _build(spec.sampler)  # a partial (`_partial_: true`)
    takes = _arguments(spec.sampler)
    seed = spec.sampler.get("seed")
    extra: dict[str, Any] = {"seed": None if seed is None else seed + offset}
    if "constraints_func" in takes and spec.constraints.min_val_acc is not None:
        extra["constraints_func"] = _constraints_func
    if "search_space" in takes:
        extra["search_space"] = search_space.grid(search_space.flatten(spec.space))
    return factory(**extra)


def make_pruner(spec: DictConfig) -> optuna.pruners.BasePruner:
    return _build(spec.pruner)


def prunes(spec: DictConfig) -> bool:
    """Whether the sweep file's pruner can stop a trial."""
    return spec.pruner._target_ != "optuna.pruners.NopPruner"


def left_out(spec: DictConfig) -> list[str]:
    """The sweep.sampler / sweep.pruner settings that their class does not take."""
    return [
        f"sweep.{part}.{key}"
        for part in ("sampler", "pruner")
        for key in spec[part]
        if not key.startswith("_") and key not in _arguments(spec[part])
    ]


def _arguments(node: DictConfig) -> Any:
    return inspect.signature(get_class(node._target_)).parameters


def _build(node: DictConfig) -> Any:
    # A sweep file's settings for one sampler (TPE's n_startup_trials) stay behind when the
    # command line picks another (sweep/sampler=random): left out (said once, at the start).
    takes = _arguments(node)
    settings = OmegaConf.to_container(node, resolve=True)
    return instantiate({k: v for k, v in settings.items() if k.startswith("_") or k in takes})


def _constraints_func(trial: FrozenTrial) -> Sequence[float]:
    # <= 0 is feasible: the validation accuracy must reach the sweep's floor.
    floor = trial.user_attrs.get("min_val_acc", 0.0)
    return [floor - trial.user_attrs.get("val_acc", 0.0)]
