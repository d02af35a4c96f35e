"""Keeping the MLflow runs in step with the study: every trial ends with one run in its final
state, also when its worker was killed, cut by Ctrl-C or lost with its machine."""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence

import mlflow
import optuna
from mlflow import MlflowClient
from mlflow.entities import Param
from mlflow.exceptions import MlflowException
from omegaconf import OmegaConf
from optuna.trial import FrozenTrial, TrialState

from fmnist_lab import tracking
from fmnist_lab.storage import trial_id
from fmnist_lab.sweep.config import WorkerContext, trial_run_config
from fmnist_lab.sweep.locks import study_lock

HOST = socket.gethostname()


def ended_stale(grace_s: int):
    """Optuna's callback for a trial it ended FAIL for want of heartbeats: end its run too."""

    def callback(study: optuna.Study, trial: FrozenTrial) -> None:
        parent_id = study.user_attrs.get("mlflow_parent_run_id")
        if parent_id is None:
            return
        worker = trial.user_attrs.get("worker", "its worker")
        reason = f"no heartbeat from {worker} for over {grace_s} s (the process or machine died)"
        mark_trial_run(mlflow.get_tracking_uri(), parent_id, study, trial, TrialState.FAIL, reason)
        print(f"trial {trial.number}: FAIL, {reason}", flush=True)

    return callback


def fail_dead_trials(ctx: WorkerContext, study: optuna.Study) -> list[int]:
    """Mark FAIL the RUNNING trials whose worker process on this machine is gone (a killed
    sweep), and their MLflow runs FAILED (one is recorded for a trial cut before its run
    existed); other machines' trials are left to heartbeats."""
    failed = []
    # Under the lock that a worker holds from asking for a trial until it notes itself on it,
    # a RUNNING trial without a worker was left by one killed in between.
    with study_lock(ctx.cfg, "trials"):
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if "worker" in trial.user_attrs and not _dead_here(trial):
                continue
            reason = "its worker process died (killed sweep); failed on resume"
            optuna.Trial(
                study, trial_id(ctx.storage, study.study_name, trial.number)
            ).set_user_attr("reason", reason)
            study.tell(trial.number, state=TrialState.FAIL)
            mark_trial_run(ctx.tracking_uri, ctx.parent_run_id, study, trial, TrialState.FAIL,
                           reason, ctx)  # fmt: skip
            failed.append(trial.number)
    optuna.storages.fail_stale_trials(study)  # other machines' dead trials (RDB storages)
    return failed


def record_missing_runs(ctx: WorkerContext, study: optuna.Study) -> list[int]:
    """Give each finished trial whose worker process on this machine is gone its MLflow run in
    the trial's final state, where that process could not: one cut by Ctrl-C or killed after
    the study heard how the trial ended, but before its run was recorded or ended. Runs that
    exist are tagged and ended, never made twice. Returns the trials' numbers."""
    client = MlflowClient(ctx.tracking_uri)
    runs: dict[int, list] = {}
    for run in trial_runs(client, ctx.parent_run_id, study.study_name):
        runs.setdefault(int(run.data.tags["optuna.trial"]), []).append(run)
    repaired = []
    for trial in study.get_trials(deepcopy=False):
        if not trial.state.is_finished() or not _dead_here(trial):
            continue
        found = runs.get(trial.number, [])
        if found and all(r.info.status != "RUNNING"
                         and r.data.tags.get("optuna.state") == trial.state.name
                         for r in found):  # fmt: skip
            continue
        mark_trial_run(ctx.tracking_uri, ctx.parent_run_id, study, trial, trial.state,
                       trial.user_attrs.get("reason"), ctx)  # fmt: skip
        repaired.append(trial.number)
    return repaired


def _dead_here(trial: FrozenTrial) -> bool:
    """Whether the trial's worker process ran on this machine and is gone."""
    host, _, pid = trial.user_attrs.get("worker", ":").rpartition(":")
    return host == HOST and pid.isdigit() and not _alive(int(pid))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def finish(study, trial, state: TrialState, reason: str | None, ctx: WorkerContext,
           values: Sequence[float] | None = None) -> None:  # fmt: skip
    """Tell the study, and tag the trial's MLflow run with the final state and reason."""
    if reason:
        trial.set_user_attr("reason", reason)
    study.tell(trial, values=values, state=state)
    mark_trial_run(ctx.tracking_uri, ctx.parent_run_id, study, trial, state, reason, ctx)


def mark_trial_run(
    uri: str, parent_id: str, study: optuna.Study, trial: FrozenTrial | optuna.Trial,
    state: TrialState, reason: str | None, ctx: WorkerContext | None = None,
) -> None:  # fmt: skip
    """Tag a trial's child run with its final state, and end it if it is still RUNNING.

    Without a recorded run id (the trial was cut before it noted one) the run is looked up by
    its tags; a trial that never got as far as a run gets one saying so, so every trial has one
    (with `ctx`, it carries the trial's config and size like a trained trial's run).
    """
    client = MlflowClient(uri)
    run_id = trial.user_attrs.get("mlflow_run_id")
    if run_id is not None:
        run_ids = [run_id]
    else:
        run_ids = [r.info.run_id for r in trial_runs(client, parent_id, study.study_name,
                                                     trial.number)]  # fmt: skip
        if not run_ids:
            run_ids = [create_trial_run(client, parent_id, study.study_name, trial, ctx)]
    interrupted = reason is not None and reason.startswith("interrupted")
    status = "FINISHED" if state != TrialState.FAIL else "KILLED" if interrupted else "FAILED"
    for rid in run_ids:
        client.set_tag(rid, "optuna.state", state.name)
        if reason:
            client.set_tag(rid, "optuna.reason", reason[:5000])
        if client.get_run(rid).info.status == "RUNNING":
            if reason:
                client.set_tag(rid, "failure_reason", reason[:5000])
            client.set_terminated(rid, status)


def trial_runs(client: MlflowClient, parent_id: str, study_name: str,
               number: int | None = None) -> list:  # fmt: skip
    """The study's trial runs (of trial `number` only, given one), children of its parent run."""
    experiment_id = client.get_run(parent_id).info.experiment_id
    query = (f"tags.`mlflow.parentRunId` = '{parent_id}' and tags.role = 'trial' "
             f"and tags.`optuna.study` = '{study_name}'")  # fmt: skip
    if number is not None:
        query += f" and tags.`optuna.trial` = '{number}'"
    return tracking.all_runs(client, [experiment_id], query)


def create_trial_run(
    client: MlflowClient, parent_id: str, study_name: str, trial: FrozenTrial | optuna.Trial,
    ctx: WorkerContext | None,
) -> str:  # fmt: skip
    """A run for a trial that ended before its own was made: the tags of a trial's run and,
    where the trial got that far and `ctx` is given, its config and parameter count."""
    attrs = trial.user_attrs
    tags = {"mlflow.parentRunId": parent_id, "role": "trial", "optuna.study": study_name,
            "optuna.trial": str(trial.number)}  # fmt: skip
    cfg = None
    if ctx is not None and "overrides" in attrs:
        try:
            cfg = trial_run_config(ctx, attrs["overrides"])
        except Exception:  # the sweep file changed since: the run goes without the config
            cfg = None
    name = f"trial-{trial.number}"
    if cfg is not None:
        tags |= {"dataset": cfg.data.name, "model": cfg.model.name}
        size = tracking.human_count(attrs["params"]) if "params" in attrs else "invalid"
        name = f"t{trial.number}-{cfg.model.name}-{size}"
    experiment_id = client.get_run(parent_id).info.experiment_id
    run_id = client.create_run(experiment_id, tags=tags, run_name=name).info.run_id
    if cfg is not None:
        params = [Param(k, v) for k, v in tracking.flatten(
            OmegaConf.to_container(cfg, resolve=True)).items()]  # fmt: skip
        for i in range(0, len(params), 100):  # MLflow takes at most 100 in one batch
            client.log_batch(run_id, params=params[i : i + 100])
        client.log_text(run_id, OmegaConf.to_yaml(cfg, resolve=True), "config.yaml")
    if "params" in attrs:
        client.log_param(run_id, "params", attrs["params"])
        client.log_metric(run_id, "params", attrs["params"])
    return run_id


def end_interrupted_trials(ctx: WorkerContext, study: optuna.Study) -> None:
    """After a Ctrl-C in a worker: each RUNNING trial of this process (also one it had just
    asked for) ends FAIL, its run KILLED. A run that cannot be recorded now is recorded by
    the sweep when its workers have stopped (record_missing_runs)."""
    me = f"{HOST}:{os.getpid()}"
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if t.user_attrs.get("worker") != me:
            continue
        try:
            trial = _trial(ctx, study, t.number)
            finish(study, trial, TrialState.FAIL, "interrupted (Ctrl-C)", ctx)
        except MlflowException as err:
            print(f"trial {t.number}: FAIL; its MLflow run is recorded when the sweep stops "
                  f"({err.message[:200]})", flush=True)  # fmt: skip


def _trial(ctx: WorkerContext, study: optuna.Study, number: int) -> optuna.Trial:
    """A trial of the study that can still be written (Optuna's `Trial` over its id)."""
    return optuna.Trial(study, trial_id(ctx.storage, study.study_name, number))
