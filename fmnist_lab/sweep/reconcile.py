"""The one step that brings the MLflow runs in line with the study (docs/run_state.md):
dead owners' trials and work are ended in the study, then every run of the study follows its
record. Run at the start of every command, after a Ctrl-C, at the end of the search and by
the process that closes the study; idempotent."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import mlflow
import optuna
from mlflow import MlflowClient
from mlflow.entities import Param, Run
from mlflow.exceptions import MlflowException
from omegaconf import OmegaConf
from optuna.trial import FrozenTrial, TrialState

from fmnist_lab import tracking
from fmnist_lab.storage import beats, trial_id
from fmnist_lab.sweep import fidelity
from fmnist_lab.sweep.config import WorkerContext, trial_run_config
from fmnist_lab.sweep.locks import study_lock
from fmnist_lab.sweep.record import INTERRUPTED, Record, gone, owner

DIED = "its process died (killed sweep); failed on resume"
DIED_TRIAL = "its worker process died (killed sweep); failed on resume"


@dataclass
class Outstanding:
    """What one reconcile found and what is left to do."""

    failed: list[int] = field(default_factory=list)  # trials ended FAIL now
    recorded: list[int] = field(default_factory=list)  # trials whose run was brought in line
    stopped: list[str] = field(default_factory=list)  # work found dead, to be done again
    ended: list[str] = field(default_factory=list)  # other runs ended now: "name (STATUS)"
    trials_left: int = 0
    redo: list[str] = field(default_factory=list)  # work stopped (now or before): done again

    def lines(self) -> list[str]:
        said = []
        if self.failed:
            said.append(f"trials {self.failed} were left running by a killed sweep; now FAIL")
        recorded = [n for n in self.recorded if n not in self.failed]  # those said just above
        if recorded:
            said.append(f"the MLflow runs of trials {recorded} recorded in their final state")
        if self.stopped:
            said.append(f"{', '.join(self.stopped)}: its process died; done again")
        if self.ended:
            said.append(f"runs ended: {', '.join(self.ended)}")
        if said and self.trials_left:
            said.append(f"left: {self.trials_left} trial(s), then the finalists")
        if said and self.redo:
            said.append(f"to do again: {', '.join(self.redo)}")
        return said


def reconcile(ctx: WorkerContext, study: optuna.Study, closing: bool = False) -> Outstanding:
    """End in the study what dead processes left running, then bring every run of the study
    to the state its record says. `closing`: the caller holds the closing lock, so any work
    still `running` under another owner was left by a process that died."""
    out = Outstanding()
    with study_lock(ctx.cfg, "trials"):
        # Under the lock a worker holds from asking for a trial until it notes itself on it,
        # a RUNNING trial without a worker was left by one killed in between.
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if "worker" not in t.user_attrs or gone(t.user_attrs["worker"]):
                writable(ctx, study, t.number).set_user_attr("reason", DIED_TRIAL)
                study.tell(t.number, state=TrialState.FAIL)
                out.failed.append(t.number)
    optuna.storages.fail_stale_trials(study)  # other machines' dead trials (RDB storages)
    record = Record(study)
    grace = ctx.cfg.heartbeat.grace_s if beats(ctx.storage) else None
    for key, rec in record.all().items():
        if rec["state"] != "running":
            continue
        if fidelity.parse(key):  # a rung: the search may still be on elsewhere
            dead = gone(rec.get("owner")) or fidelity.stale(rec, grace)
        else:
            dead = gone(rec.get("owner")) or closing and rec.get("owner") != owner()
        if dead:
            record.stop(key, DIED)
            out.stopped.append(key)

    client = MlflowClient(ctx.tracking_uri)
    trials = study.get_trials(deepcopy=False)
    runs = study_runs(client, ctx)
    out.recorded = settle_trials(client, ctx, study, trials, runs)
    records = record.all()
    for run in runs:
        tags = run.data.tags
        if run.info.status != "RUNNING" or "work" not in tags:
            continue
        rec = records.get(tags["work"])
        if rec is not None and rec["state"] == "running":
            continue  # its owner is alive and at it
        if rec is not None and rec["state"] == "done" and rec.get("run_id") == run.info.run_id:
            status, reason = "FINISHED", None
        elif rec is not None and rec["state"] == "stopped" and rec.get("run_id") in (
            None, run.info.run_id,
        ):  # fmt: skip
            reason = rec["reason"]
            status = "KILLED" if reason == INTERRUPTED else "FAILED"
        else:
            status, reason = "FAILED", DIED
        end_run(client, run, status, reason)
        out.ended.append(f"{run.info.run_name} ({status})")
    out.trials_left = max(0, ctx.spec.budget.n_trials - len(trials))
    out.redo = sorted(k for k, rec in records.items() if rec["state"] == "stopped")
    return out


def study_runs(client: MlflowClient, ctx: WorkerContext, query: str = "") -> list[Run]:
    """The runs of the study (tag `study_uid`), the parent run's experiment only."""
    experiment_id = client.get_run(ctx.parent_run_id).info.experiment_id
    where = f"tags.study_uid = '{ctx.study_uid}'" + (f" and {query}" if query else "")
    return tracking.all_runs(client, [experiment_id], where)


def settle_trials(client: MlflowClient, ctx: WorkerContext, study: optuna.Study,
                  trials: Sequence[FrozenTrial], runs: Sequence[Run]) -> list[int]:  # fmt: skip
    """Each finished trial's runs in its final state, one created where none exists. Returns
    the trials whose runs changed."""
    by_trial: dict[int, list[Run]] = {}
    for run in runs:
        if run.data.tags.get("role") == "trial":
            by_trial.setdefault(int(run.data.tags["optuna.trial"]), []).append(run)
    changed = []
    for t in trials:
        if not t.state.is_finished():
            continue
        found = by_trial.get(t.number, [])
        if found and all(r.info.status != "RUNNING"
                         and r.data.tags.get("optuna.state") == t.state.name
                         for r in found):  # fmt: skip
            continue
        if not found:
            found = [client.get_run(create_trial_run(client, ctx, study, t))]
        for run in found:
            settle_trial_run(client, run, t)
        changed.append(t.number)
    return changed


def settle_trial_run(client: MlflowClient, run: Run, trial: FrozenTrial) -> None:
    """Tag a trial's run with the trial's final state and reason; end it if still RUNNING."""
    reason = trial.user_attrs.get("reason")
    client.set_tag(run.info.run_id, "optuna.state", trial.state.name)
    if reason:
        client.set_tag(run.info.run_id, "optuna.reason", reason[:5000])
    if trial.state != TrialState.FAIL:
        status = "FINISHED"
    else:
        status = "KILLED" if reason == INTERRUPTED else "FAILED"
    end_run(client, run, status, reason if status != "FINISHED" else None)


def end_run(client: MlflowClient, run: Run, status: str, reason: str | None) -> None:
    """End `run` as `status` (with `failure_reason`) if it is still RUNNING."""
    if client.get_run(run.info.run_id).info.status != "RUNNING":
        return
    if reason:
        client.set_tag(run.info.run_id, "failure_reason", reason[:5000])
    client.set_terminated(run.info.run_id, status)


def create_trial_run(client: MlflowClient, ctx: WorkerContext, study: optuna.Study,
                     trial: FrozenTrial) -> str:  # fmt: skip
    """A run for a trial that ended before its own was made: a trial run's tags and, where
    the trial got that far, its config and parameter count."""
    attrs = trial.user_attrs
    tags = {"mlflow.parentRunId": ctx.parent_run_id, "role": "trial",
            "optuna.study": study.study_name, "optuna.trial": str(trial.number),
            "study_uid": ctx.study_uid}  # fmt: skip
    cfg = None
    if "overrides" in attrs:
        try:
            cfg = trial_run_config(ctx, attrs["overrides"])
        except Exception:  # the sweep file changed since: the run goes without the config
            cfg = None
    name = f"trial-{trial.number}"
    if cfg is not None:
        tags |= {"dataset": cfg.data.name, "model": cfg.model.name}
        name = tracking.run_name(f"t{trial.number}-{{size}}", cfg.model.name,
                                 attrs.get("params"))  # fmt: skip
    experiment_id = client.get_run(ctx.parent_run_id).info.experiment_id
    run_id = client.create_run(experiment_id, tags=tags, run_name=name).info.run_id
    if cfg is not None:
        params = [Param(k, v) for k, v in tracking.flatten(
            OmegaConf.to_container(cfg, resolve=True)).items()]  # fmt: skip
        for i in range(0, len(params), 100):  # MLflow takes at most 100 in one batch
            client.log_batch(run_id, params=params[i : i + 100])
        client.log_text(run_id, OmegaConf.to_yaml(cfg, resolve=True), "config.yaml")
    if "params" in attrs:
        for key, value in tracking.size_metrics(attrs["params"]).items():
            client.log_metric(run_id, key, value)
    return run_id


def writable(ctx: WorkerContext, study: optuna.Study, number: int) -> optuna.Trial:
    """A trial of the study that can still be written (Optuna's `Trial` over its id)."""
    return optuna.Trial(study, trial_id(ctx.storage, study.study_name, number))


def end_trial(ctx: WorkerContext, study: optuna.Study, trial: optuna.Trial, state: TrialState,
              reason: str) -> None:  # fmt: skip
    """A trial that ended without a result (it raised, or was interrupted): the study hears
    first, then its run follows (now, or at the next reconcile if the store will not take
    it)."""
    frozen = study.get_trials(deepcopy=False)[trial.number]
    if not frozen.state.is_finished():  # else it was told before its run failed: keep that
        trial.set_user_attr("reason", reason)
        frozen = study.tell(trial, state=state)
    client = MlflowClient(ctx.tracking_uri)
    try:
        runs = study_runs(client, ctx, f"tags.`optuna.trial` = '{trial.number}'")
        settle_trials(client, ctx, study, [frozen], runs)
    except MlflowException as err:
        print(f"trial {trial.number}: {state.name}; its MLflow run is recorded when the sweep "
              f"stops ({err.message[:200]})", flush=True)  # fmt: skip


def fail_own_trials(ctx: WorkerContext, study: optuna.Study) -> None:
    """After a Ctrl-C in a worker: each RUNNING trial of this process (also one it had just
    asked for) ends FAIL "interrupted (Ctrl-C)", its run KILLED."""
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if t.user_attrs.get("worker") == owner():
            end_trial(ctx, study, writable(ctx, study, t.number), TrialState.FAIL, INTERRUPTED)


def ended_stale(grace_s: int):
    """Optuna's callback for a trial it ended FAIL for want of heartbeats (another machine's
    trial): its run follows."""

    def callback(study: optuna.Study, trial: FrozenTrial) -> None:
        uid, parent_id = study.user_attrs.get("uid"), study.user_attrs.get("mlflow_parent_run_id")
        if uid is None or parent_id is None:
            return
        worker = trial.user_attrs.get("worker", "its worker")
        reason = f"no heartbeat from {worker} for over {grace_s} s (the process or machine died)"
        client = MlflowClient(mlflow.get_tracking_uri())
        experiment_id = client.get_run(parent_id).info.experiment_id
        for run in tracking.all_runs(client, [experiment_id],
                                     f"tags.study_uid = '{uid}' and tags.role = 'trial' "
                                     f"and tags.`optuna.trial` = '{trial.number}'"):  # fmt: skip
            client.set_tag(run.info.run_id, "optuna.state", TrialState.FAIL.name)
            client.set_tag(run.info.run_id, "optuna.reason", reason)
            end_run(client, run, "FAILED", reason)
        print(f"trial {trial.number}: FAIL, {reason}", flush=True)

    return callback
