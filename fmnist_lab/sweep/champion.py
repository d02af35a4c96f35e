"""The study's champion in the MLflow model registry."""

from __future__ import annotations

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from omegaconf import DictConfig

from fmnist_lab import registry
from fmnist_lab.sweep.finalists import Finalist


def register_best(cfg: DictConfig, finalists: list[Finalist], parent_id: str) -> None:
    """Register the study's champion: among the finalists within `registry.max_params`, the
    one with the highest `registry.select_by` (mean test accuracy by default). Its seed-0
    model becomes a new version; see `fmnist_lab.registry`. A registry that refuses is
    reported and tagged on the parent run; the sweep's results stand."""
    reg = cfg.registry
    if not reg.enabled or not finalists:
        return
    limit = reg.max_params
    eligible = [f for f in finalists if f.model_uri and (limit is None or f.params <= limit)]
    if not eligible:
        within = "" if limit is None else f" within {limit:,} parameters"
        print(f"registry: no finalist with a logged model{within}; {reg.name} unchanged")
        return
    score = (lambda f: f.mean) if reg.select_by == "test_acc_mean" else (lambda f: f.selection_val)
    best = max(eligible, key=score)
    if MlflowClient().get_run(parent_id).data.tags.get("registry.finalist_run") == best.run_id:
        return  # a resumed sweep registered this finalist already
    tags = {"params": str(best.params), "test_acc_mean": f"{best.mean:.6f}",
            "test_acc_std": f"{best.std:.6f}", "val_acc": f"{best.selection_val:.6f}",
            "dataset": cfg.data.name, "optuna.study": cfg.study_name,
            "optuna.trial": str(best.trial), "finalist_run": best.run_id}  # fmt: skip
    try:
        result = registry.register_champion(
            best.model_uri, reg.name, reg.alias, tags, reg.select_by, score(best)
        )
    except MlflowException as err:
        mlflow.set_tag("registry.error", err.message[:5000])
        print(f"registry: {reg.name} not updated ({err.message}); the study's runs stand")
        return
    mlflow.set_tags({"registry.model": reg.name, "registry.version": result.version,
                     "registry.finalist_run": best.run_id,
                     f"registry.{reg.alias}": str(result.moved).lower()})  # fmt: skip
    print(result.describe())
