"""The study and its MLflow parent run: created on the first start, found again on a resume."""

from __future__ import annotations

import uuid

import mlflow
import optuna
from omegaconf import DictConfig, OmegaConf

from fmnist_lab import tracking
from fmnist_lab.errors import UserError
from fmnist_lab.storage import open_storage, redact, storage_url
from fmnist_lab.sweep import faults
from fmnist_lab.sweep.config import training_config
from fmnist_lab.sweep.reconcile import ended_stale
from fmnist_lab.sweep.samplers import make_pruner, make_sampler
from fmnist_lab.sweep.upgrade import adopt_older_runs


def open_study_storage(cfg: DictConfig) -> optuna.storages.BaseStorage:
    """The sweep's storage; with heartbeats, a dead machine's trial also ends its run."""
    return open_storage(storage_url(cfg), cfg.heartbeat, ended_stale(cfg.heartbeat.grace_s))


def load_study(cfg: DictConfig, storage: optuna.storages.BaseStorage | None = None) -> optuna.Study:
    """The sweep's study, created with the sweep file's objectives or checked against them."""
    spec = cfg.sweep
    directions = [o.direction for o in spec.objectives]
    study = optuna.create_study(
        study_name=cfg.study_name,
        storage=storage or open_study_storage(cfg),
        sampler=make_sampler(spec),
        pruner=make_pruner(spec),
        directions=directions,
        load_if_exists=True,
    )
    if list(study.directions) != [optuna.study.StudyDirection[d.upper()] for d in directions]:
        raise UserError(
            f"study '{cfg.study_name}' already exists with other objectives; "
            f"give a new study_name= or use the original sweep file"
        )
    metrics = [o.metric for o in spec.objectives]
    if study.metric_names is not None and list(study.metric_names) != metrics:
        raise UserError(
            f"study '{cfg.study_name}' already exists with objectives {study.metric_names}; "
            f"give a new study_name= or use the original sweep file"
        )
    study.set_metric_names(metrics)
    return study


def open_parent_run(cfg: DictConfig, study: optuna.Study) -> mlflow.ActiveRun:
    """The study's parent run: reopened when resuming, else started with the sweep's facts.
    Call under the study's setup lock."""
    # The study's uid is written before the run exists and tags it (and every run of the
    # study), so a run made by a start killed before it recorded its id is found again, and a
    # new study of the same name (its storage deleted) never adopts an old study's runs.
    uid = study.user_attrs.get("uid")
    parent_id = study.user_attrs.get("mlflow_parent_run_id")
    if uid is None:
        uid = uuid.uuid4().hex
        study.set_user_attr("uid", uid)
        if parent_id:  # a study begun before the record
            adopt_older_runs(study, parent_id, uid)
    if parent_id:
        return mlflow.start_run(run_id=parent_id)
    experiment = mlflow.get_experiment_by_name(cfg.tracking.experiment)
    made = mlflow.search_runs(
        [experiment.experiment_id],
        f"tags.study_uid = '{uid}' and tags.role = 'study'",
        output_format="list",
    ) if experiment else []  # fmt: skip
    if made:
        run = mlflow.start_run(run_id=made[0].info.run_id)
    else:
        run = mlflow.start_run(run_name=f"study-{cfg.study_name}",
                               tags={"role": "study", "study_uid": uid})  # fmt: skip
    _describe(cfg)  # again on an adopted run: the start that made it may have been cut
    faults.point("startup")
    study.set_user_attr("mlflow_parent_run_id", run.info.run_id)
    return run


def _describe(cfg: DictConfig) -> None:
    """The sweep's facts on the active parent run (the same values when logged twice)."""
    spec = cfg.sweep
    mlflow.set_tags({
        "optuna.study": cfg.study_name,
        "optuna.sampler": spec.sampler._target_.rpartition(".")[2],
        "optuna.pruner": spec.pruner._target_.rpartition(".")[2],
        "optuna.storage": redact(storage_url(cfg)),
        "dataset": cfg.data.name,
        "git_commit": tracking.git_commit(),
    })  # fmt: skip
    mlflow.log_params(tracking.flatten(OmegaConf.to_container(spec, resolve=True), "sweep."))
    mlflow.log_text(OmegaConf.to_yaml(spec), f"sweep_{spec.name}.yaml")
    mlflow.log_text(OmegaConf.to_yaml(training_config(cfg)), "base_config.yaml")
