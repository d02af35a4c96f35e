"""The sweep file's sampler and pruner."""

from __future__ import annotations

from collections.abc import Sequence

import optuna
from omegaconf import DictConfig
from optuna.trial import FrozenTrial

from fmnist_lab import space as search_space
from fmnist_lab.errors import UserError


def make_sampler(spec: DictConfig, offset: int = 0) -> optuna.samplers.BaseSampler:
    """The sweep file's sampler; `offset` shifts its seed so that parallel workers and
    resumed sweeps do not replay the same random draws."""
    s = spec.sampler
    seed = None if s.get("seed") is None else s.seed + offset
    constraints = _constraints_func if spec.constraints.min_val_acc is not None else None
    if s.name == "tpe":
        return optuna.samplers.TPESampler(
            seed=seed, n_startup_trials=s.get("n_startup_trials", 10),
            multivariate=True, group=True, constraints_func=constraints,
        )  # fmt: skip
    if s.name == "nsga2":
        return optuna.samplers.NSGAIISampler(
            seed=seed, population_size=s.get("population_size", 50),
            constraints_func=constraints,
        )  # fmt: skip
    if s.name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if s.name == "grid":
        return optuna.samplers.GridSampler(
            search_space.grid(search_space.flatten(spec.space)), seed=seed
        )
    raise UserError(f"sampler '{s.name}' is not one of tpe, nsga2, random, grid")


def make_pruner(spec: DictConfig) -> optuna.pruners.BasePruner:
    p = spec.pruner
    if p.name == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=p.get("n_startup_trials", 5), n_warmup_steps=p.get("n_warmup_steps", 0)
        )
    if p.name == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=p.get("min_resource", 1))
    if p.name == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=p.get("min_resource", 1), max_resource=spec.budget.epochs
        )
    if p.name == "none":
        return optuna.pruners.NopPruner()
    raise UserError(f"pruner '{p.name}' is not one of median, successive_halving, hyperband, none")


def _constraints_func(trial: FrozenTrial) -> Sequence[float]:
    # <= 0 is feasible: the validation accuracy must reach the sweep's floor.
    floor = trial.user_attrs.get("min_val_acc", 0.0)
    return [floor - trial.user_attrs.get("val_acc", 0.0)]
