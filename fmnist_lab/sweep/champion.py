"""The study's champion in the MLflow model registry, chosen by the validation score that
chose it among the finalists; test accuracy is shown beside it and chooses nothing (unless the
sweep names `registry.select_by=test_acc_mean_on_test_set`)."""

from __future__ import annotations

import mlflow
import optuna
from mlflow.exceptions import MlflowException
from omegaconf import DictConfig

from fmnist_lab import registry
from fmnist_lab.sweep import faults
from fmnist_lab.sweep.finalists import Finalist
from fmnist_lab.sweep.record import Record


def register_best(cfg: DictConfig, finalists: list[Finalist], study: optuna.Study) -> None:
    """Register the study's champion: among the finalists within `registry.max_params`, the
    one with the highest `registry.select_by` (by default the validation accuracy it was
    chosen by: the rerank score where the sweep reranks). Its seed-0 model becomes a version
    of `registry.name`; see `fmnist_lab.registry`. The registration is a piece of work in the
    study's record: done once, and when cut short, done again without a second version. A
    registry that refuses is reported and tagged on the parent run; the sweep's results
    stand."""
    reg = cfg.registry
    if not reg.enabled or not finalists:
        return
    limit = reg.max_params
    eligible = [f for f in finalists if f.model_uri and (limit is None or f.params <= limit)]
    if not eligible:
        within = "" if limit is None else f" within {limit:,} parameters"
        print(f"registry: no finalist with a logged model{within}; {reg.name} unchanged")
        return
    on_test = reg.select_by == "test_acc_mean_on_test_set"
    score = (lambda f: f.mean) if on_test else (lambda f: f.selection_val)
    best = max(eligible, key=lambda f: (score(f), -f.params))
    measure = f"{cfg.data.name} test set" if on_test else best.val_measure or "unknown"
    record, key = Record(study), "registration"
    done = record.done(key)
    if done is not None and done["finalist_run"] == best.run_id:
        print(done["said"])  # a resumed sweep registered this finalist already
        return
    uid = study.user_attrs["uid"]
    # The registered model is the finalist's seed 0: its own test accuracy is `test_acc`;
    # the finalist's mean over its seeds, what the recipe gives, is `finalist_test_acc`.
    tags = {"params": str(best.params), "test_acc": str(best.test_accs[0]),
            "finalist_test_acc": str(best.mean), "finalist_test_acc_std": str(best.std),
            "finalist_seeds": str(len(best.test_accs)), "val_acc": str(best.selection_val),
            "dataset": cfg.data.name, "optuna.study": cfg.study_name, "study_uid": uid,
            "optuna.trial": str(best.trial), "finalist_run": best.run_id}  # fmt: skip
    tags |= registry.selection_tags(reg.select_by, score(best), measure)
    description = version_description(cfg, study, best, score(best), measure)
    with record.attempt(key):
        try:
            version = registry.register_version(best.model_uri, reg.name, tags, reg.alias,
                                                reg.select_by, description)  # fmt: skip
            faults.point("registration")
            result = registry.decide_alias(version, reg.alias, reg.select_by, score(best),
                                           measure)  # fmt: skip
        except MlflowException as err:
            mlflow.set_tag("registry.error", err.message[:5000])
            print(f"registry: {reg.name} not updated ({err.message}); the study's runs stand")
            record.stop(key, f"the registry refused: {err.message[:500]}")
            return
        mlflow.set_tags({"registry.model": reg.name, "registry.version": result.version,
                         "registry.finalist_run": best.run_id,
                         f"registry.{reg.alias}": str(result.moved).lower()})  # fmt: skip
        record.finish(key, {"finalist_run": best.run_id, "version": result.version,
                            "moved": result.moved, "said": result.describe()})  # fmt: skip
    print(result.describe())


def version_description(cfg: DictConfig, study: optuna.Study, best: Finalist, value: float,
                        measure: str) -> str:  # fmt: skip
    """What the registry's page of the version says: where it comes from (study, trial), the
    recipe it was trained with, and its accuracies, its own and its finalist's apart."""
    policy = cfg.sweep.finalists
    overrides = study.trials[best.trial].user_attrs.get("overrides", [])
    recipe = " ".join([*overrides, *policy.overrides, f"trainer.max_epochs={policy.epochs}"])
    seeds = len(best.test_accs)
    return (
        f"Seed 0 of the finalist of trial {best.trial} of study '{cfg.study_name}' "
        f"({cfg.data.name}), {best.params:,} parameters.\n\n"
        f"Recipe: {recipe} (seed=0), trained on all training images.\n\n"
        f"Test accuracy of this model: {best.test_accs[0]:.2%}. Its finalist (the same recipe, "
        f"{seeds} seed{'s' * (seeds > 1)}): {best.mean:.2%} +/- {best.std:.2%}.\n\n"
        f"Chosen by {cfg.registry.select_by} {value:.4f} ({measure}); finalist run "
        f"{best.run_id}."
    )
