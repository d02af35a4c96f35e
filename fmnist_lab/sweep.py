"""`python -m fmnist_lab.sweep sweep=<name>`: an Optuna study over Hydra configs, in MLflow.

The sweep file `sweeps/<name>.yaml` says what to search and how; every trial composes
`conf/train.yaml` with the sweep's base choices, the command line's overrides and its sampled
overrides, and trains through `fmnist_lab.train.train`. The study lives in an Optuna storage
(a journal file in the sweep's output directory unless `storage=` names one), so running the
same command again resumes it. `workers=N` runs N processes against that storage.
"""

from __future__ import annotations

import ctypes
import fcntl
import hashlib
import json
import logging
import math
import multiprocessing
import os
import signal
import socket
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
import mlflow
import optuna
import pytorch_lightning as pl
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from mlflow import MlflowClient
from mlflow.entities import Param
from mlflow.exceptions import MlflowException
from omegaconf import DictConfig, OmegaConf
from optuna.storages.journal import JournalFileBackend, JournalStorage
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.engine import make_url

from fmnist_lab import evaluate, registry, tracking
from fmnist_lab import space as search_space
from fmnist_lab.data import Splits, load_splits
from fmnist_lab.errors import UserError, exit_cleanly, hydra_message
from fmnist_lab.models import build_model, count_params
from fmnist_lab.train import scaled_lr, train

CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")
# Keys of conf/sweep.yaml that steer the sweep; a trial's training config drops them.
SWEEP_KEYS = ("sweep", "study_name", "storage", "workers", "enqueue_references", "output_dir",
              "registry", "heartbeat")  # fmt: skip
REFERENCES = ("r3_cnn", "conv2dsimple2")  # the warm start of enqueue_references=true
OBJECTIVES = ("val_acc", "val_loss", "params")  # what a trial can return
HOST = socket.gethostname()

log = logging.getLogger(__name__)


# --- the study --------------------------------------------------------------------------


def storage_url(cfg: DictConfig) -> str:
    """`storage=` as given, or the journal file in the sweep's output directory."""
    return cfg.storage or f"journal:{Path(cfg.output_dir).resolve() / 'optuna.journal'}"


def redact(url: str) -> str:
    """The storage URL without its password, fit for tags and logs."""
    if url.startswith("journal:"):
        return url
    return make_url(url).render_as_string(hide_password=True)


def open_storage(url: str, heartbeat: DictConfig | None = None):
    """The Optuna storage at `url`. With `heartbeat` (an RDB storage such as PostgreSQL), a
    RUNNING trial whose worker sent no heartbeat for `grace_s` seconds is ended FAIL by the
    next worker that asks for a trial, and its MLflow run with it: a dead machine's trial."""
    if url.startswith("journal:"):
        path = Path(url.removeprefix("journal:"))
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    beats = {}
    if heartbeat is not None:
        check_heartbeat(heartbeat)
        beats = {
            "heartbeat_interval": heartbeat.interval_s,
            "grace_period": heartbeat.grace_s,
            "heartbeat_stale_trial_callback": _ended_stale(heartbeat.grace_s),
        }
    try:
        # Machines starting at once on a new database would race to create Optuna's tables.
        with postgres_lock(url, "fmnist_lab:optuna-schema") if _is_postgres(url) else nullcontext():
            return optuna.storages.RDBStorage(url, **beats)
    except ImportError:
        raise UserError(f"storage {redact(url)} needs its database driver installed") from None
    except Exception as err:  # unreachable server, bad credentials, malformed URL
        reason = " ".join(str(err).split())[:300]
        raise UserError(f"storage {redact(url)} cannot be opened: {reason}") from None


def check_heartbeat(heartbeat: DictConfig) -> None:
    if not 0 < heartbeat.interval_s < heartbeat.grace_s:
        raise UserError(f"heartbeat.interval_s={heartbeat.interval_s} must be positive and "
                        f"below heartbeat.grace_s={heartbeat.grace_s}")  # fmt: skip


def _ended_stale(grace_s: int):
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


def load_study(cfg: DictConfig) -> optuna.Study:
    spec = cfg.sweep
    directions = [o.direction for o in spec.objectives]
    study = optuna.create_study(
        study_name=cfg.study_name,
        storage=open_storage(storage_url(cfg), cfg.heartbeat),
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


def _is_postgres(url: str) -> bool:
    return url.startswith(("postgresql", "postgres"))


@contextmanager
def postgres_lock(url: str, name: str, wait: bool = True) -> Iterator[bool]:
    """A PostgreSQL advisory lock named `name`, held by a connection of its own; yields
    whether it is held (False only when `wait` is false and another session holds it)."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    key = int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big",
                         signed=True)  # fmt: skip
    take = "pg_advisory_lock" if wait else "pg_try_advisory_lock"
    try:
        with engine.connect() as conn:
            got = conn.execute(sqlalchemy.text(f"SELECT {take}(:k)"), {"k": key}).scalar()
            held = wait or bool(got)  # pg_advisory_lock returns void once it holds it
            try:
                yield held
            finally:
                if held:
                    conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
    finally:
        engine.dispose()


@contextmanager
def study_lock(cfg: DictConfig, purpose: str, wait: bool = True) -> Iterator[bool]:
    """Hold the study's lock named `purpose` across every process and machine of the study:
    a PostgreSQL advisory lock for a PostgreSQL storage, else a file lock beside the sweep's
    output (a journal or SQLite file is on this machine). Yields False, holding nothing,
    when `wait` is false and another process holds it."""
    url = storage_url(cfg)
    if _is_postgres(url):
        with postgres_lock(url, f"fmnist_lab:{cfg.study_name}:{purpose}", wait) as held:
            yield held
        return
    lock_path = Path(cfg.output_dir).resolve() / f".{purpose}.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True


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
            optuna.Trial(study, trial._trial_id).set_user_attr("reason", reason)
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


# --- a worker ---------------------------------------------------------------------------


@dataclass
class WorkerContext:
    cfg: DictConfig  # the sweep config as composed for this command
    overrides: list[str]  # the command line's overrides
    parent_run_id: str
    tracking_uri: str
    deadline: float | None
    splits: dict[str, Splits] = field(default_factory=dict)

    @property
    def spec(self) -> DictConfig:
        return self.cfg.sweep

    def trial_config(self, trial_overrides: Sequence[str], *extra: str) -> DictConfig:
        """The training config of one trial: base choices, budget, command line, sample."""
        budget = self.spec.budget
        overrides = [
            f"trainer.max_epochs={budget.epochs}",
            f"data.train_fraction={budget.train_fraction}",
            *self.overrides,
            *trial_overrides,
            *extra,
        ]
        if GlobalHydra.instance().is_initialized():  # inside the command's own @hydra.main
            return training_config(compose("sweep", overrides=overrides))
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            return training_config(compose("sweep", overrides=overrides))

    def splits_for(self, data_cfg: DictConfig) -> Splits:
        key = OmegaConf.to_yaml(data_cfg)
        if key not in self.splits:
            self.splits[key] = load_splits(data_cfg)
        return self.splits[key]


def check_trial_configs(cfg: DictConfig, overrides: Sequence[str]) -> None:
    """Compose a trial's config with every categorical choice once, so that a misspelt key
    or option in the sweep file stops the command before any worker starts."""
    flat = search_space.flatten(cfg.sweep.space)
    probe = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    sample = search_space.suggest(probe.ask(), flat)
    ctx = WorkerContext(cfg, list(overrides), "", "", None)
    variants = [sample]
    for i, key in enumerate(flat):
        if flat[key]["type"] == "categorical":
            for choice in flat[key]["choices"]:
                variant = list(sample)
                variant[i] = f"{key}={search_space.override_value(choice)}"
                variants.append(variant)
    variants += [entry.split(" ") for entry in warm_start_entries(cfg.sweep)]
    for variant in variants:
        try:
            trial_cfg = ctx.trial_config(variant)
        except Exception as err:
            raise UserError(
                f"a trial's config cannot be composed with {variant}: {hydra_message(err)}"
            ) from None
        scaled_lr(trial_cfg)  # a bad lr_scaling stops here too


def warm_start_entries(spec: DictConfig) -> list[str]:
    """The sweep file's `warm_start` configurations, each as one space-separated string."""
    entries = []
    for entry in spec.get("warm_start") or []:
        if isinstance(entry, str) or not all(isinstance(o, str) and "=" in o for o in entry):
            raise UserError(f"sweep.warm_start: each entry must be a list of KEY=VALUE "
                            f"overrides, not {entry}")  # fmt: skip
        if any(" " in o for o in entry):
            raise UserError(f"sweep.warm_start: '{entry}' has an override with a space")
        entries.append(" ".join(entry))
    return entries


def enqueue_warm_start(study: optuna.Study, entries: Sequence[str]) -> None:
    """Queue each warm-start configuration once per study: it is trained first, with the
    trial budget like any trial, and can become a finalist by the same validation rule.
    The sampler learns nothing from it (it has no sampled parameters)."""
    queued = {t.user_attrs.get("warm_start") for t in study.get_trials(deepcopy=False)}
    for entry in entries:
        if entry not in queued:
            study.enqueue_trial({}, user_attrs={"warm_start": entry})


def training_config(cfg: DictConfig) -> DictConfig:
    """A sweep config less its sweep keys: what `train` takes."""
    container = OmegaConf.to_container(cfg, resolve=True)
    for key in SWEEP_KEYS:
        container.pop(key, None)
    return OmegaConf.create(container)


class PruneOnValidation(pl.Callback):
    """Report val_acc to the trial every epoch; stop training when the pruner says so."""

    def __init__(self, trial: optuna.Trial, enabled: bool) -> None:
        self.trial, self.enabled, self.pruned_at = trial, enabled, None

    def on_fit_start(self, trainer, pl_module) -> None:
        # Recorded first, so a killed sweep's resume can close this run.
        self.trial.set_user_attr("mlflow_run_id", mlflow.active_run().info.run_id)

    def on_validation_end(self, trainer, pl_module) -> None:
        if not self.enabled or "val_acc" not in trainer.callback_metrics:
            return
        value = float(trainer.callback_metrics["val_acc"])
        self.trial.report(value, step=trainer.current_epoch)
        if self.trial.should_prune():
            self.pruned_at = trainer.current_epoch
            trainer.should_stop = True


def run_trial(ctx: WorkerContext, study: optuna.Study, trial: optuna.Trial) -> None:
    """Train one trial and tell the study how it ended (COMPLETE, PRUNED or FAIL)."""
    spec = ctx.spec
    reference = trial.user_attrs.get("reference")
    warm_start = trial.user_attrs.get("warm_start")
    if reference:
        overrides = [f"model={reference}"]
    elif warm_start:
        overrides = warm_start.split(" ")
    else:
        overrides = search_space.suggest(trial, search_space.flatten(spec.space))
    trial.set_user_attr("overrides", overrides)
    if spec.constraints.min_val_acc is not None:
        trial.set_user_attr("min_val_acc", float(spec.constraints.min_val_acc))
    cfg = trial_run_config(ctx, overrides)
    tags = {"role": "trial", "optuna.study": study.study_name, "optuna.trial": str(trial.number)}

    # Checks that need no training: the model must exist and fit the parameter budget.
    reason = None
    try:
        n_params = count_params(build_model(cfg.model))
    except UserError as err:
        n_params, reason = None, str(err)
    else:
        trial.set_user_attr("params", n_params)
        limit = spec.constraints.max_params
        if limit is not None and n_params > limit:
            reason = f"{n_params:,} parameters exceed the budget of {limit:,}"
    if reason:
        end_untrained(ctx, cfg, study, trial, n_params, reason, tags)
        return

    # Pruners compare the reported val_acc with the study's direction: only meaningful when
    # that is the one objective (Optuna cannot prune multi-objective studies at all).
    prunable = [o.metric for o in spec.objectives] == ["val_acc"] and spec.pruner.name != "none"
    pruning = PruneOnValidation(trial, enabled=prunable)
    try:
        result = train(
            cfg,
            callbacks=[pruning],
            parent_run_id=ctx.parent_run_id,
            tags=tags,
            splits=ctx.splits_for(cfg.data),
            name_prefix=f"t{trial.number}-",
        )
    except KeyboardInterrupt:
        raise  # the worker marks the trial
    except Exception as err:  # any failure of one trial: record it, the sweep goes on
        finish(study, trial, TrialState.FAIL, f"{type(err).__name__}: {err}", ctx)
        return
    val_acc = result.metrics.get("val_acc")
    trial.set_user_attr("val_acc", val_acc)
    trial.set_user_attr("train_time_s", result.metrics.get("train_time_s"))
    if pruning.pruned_at is not None:
        reason = f"pruned after epoch {pruning.pruned_at} (val_acc {val_acc:.4f})"
        finish(study, trial, TrialState.PRUNED, reason, ctx)
        return
    values = [n_params if o.metric == "params" else result.metrics[o.metric]
              for o in spec.objectives]  # fmt: skip
    finish(study, trial, TrialState.COMPLETE, None, ctx, values)


def trial_run_config(ctx: WorkerContext, overrides: Sequence[str]) -> DictConfig:
    """The training config of a trial's run: its overrides, validated, never tested."""
    return ctx.trial_config(overrides, "test=false", "trainer.progress_bar=false",
                            f"log_model={ctx.spec.log_models}")  # fmt: skip


@contextmanager
def heartbeat(study: optuna.Study, trial: optuna.Trial) -> Iterator[None]:
    """While a trial trains, beat its heartbeat (RDB storages), so that a machine that dies
    leaves trials that `fail_stale_trials` can find; ask/tell gets no beat from Optuna."""
    if not _beats(study):
        yield
        return
    storage = study._storage
    interval = storage.get_heartbeat_interval()
    stop = threading.Event()

    def beat() -> None:
        while not stop.is_set():
            storage.record_heartbeat(trial._trial_id)
            stop.wait(interval)

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _beats(study: optuna.Study) -> bool:
    """Whether the study's storage keeps heartbeats (Optuna wraps an RDBStorage in a cache)."""
    interval = getattr(study._storage, "get_heartbeat_interval", None)
    return interval is not None and bool(interval())


def end_untrained(ctx, cfg, study, trial, n_params, reason, tags) -> None:
    """A trial ended before training still gets its child run, saying why."""
    size = tracking.human_count(n_params) if n_params else "invalid"
    name = f"t{trial.number}-{cfg.model.name}-{size}"
    with tracking.tracked_run(cfg, name, tags, ctx.parent_run_id) as run:
        if n_params is not None:
            tracking.log_param_count(n_params)
        trial.set_user_attr("mlflow_run_id", run.info.run_id)
    finish(study, trial, TrialState.PRUNED, reason, ctx)


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


def next_trial(ctx: WorkerContext, study: optuna.Study) -> optuna.Trial | None:
    """Ask for a trial unless the budget, the timeout or a stop condition says we are done."""
    spec = ctx.spec
    if ctx.deadline is not None and time.time() >= ctx.deadline:
        return None
    with study_lock(ctx.cfg, "trials"):
        optuna.storages.fail_stale_trials(study)  # a dead machine's trials end FAIL
        trials = study.get_trials(deepcopy=False)
        waiting = any(t.state == TrialState.WAITING for t in trials)
        if len(trials) >= spec.budget.n_trials and not waiting:
            return None
        if stop_condition_met(spec, trials):
            return None
        # Noted under the lock, so that a RUNNING trial without owner is known to be one whose
        # worker was killed in between (fail_dead_trials); a Ctrl-C waits until it is noted.
        with sigint_held():
            trial = study.ask()
            trial.set_user_attr("worker", f"{HOST}:{os.getpid()}")
        if _beats(study):  # from its first moment, so that a machine dying now is noticed
            study._storage.record_heartbeat(trial._trial_id)
        return trial


@contextmanager
def sigint_held() -> Iterator[None]:
    """Hold a Ctrl-C that arrives in the block until its end (main thread only)."""
    held = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: held.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if held:
            signal.raise_signal(signal.SIGINT)  # now handled as it would have been


def stop_condition_met(spec: DictConfig, trials: Sequence[FrozenTrial]) -> bool:
    target, limit = spec.stop.val_acc, spec.stop.max_params
    if target is None:
        return False
    return any(
        t.state == TrialState.COMPLETE
        and t.user_attrs.get("val_acc", 0) >= target
        and (limit is None or t.user_attrs.get("params", math.inf) <= limit)
        for t in trials
    )


def worker_main(
    cfg_yaml: str, overrides: list[str], parent_run_id: str, deadline, threads, index: int,
    parent_pid: int, gpu: int | None = None,
):  # fmt: skip
    """Entry point of worker number `index`: run trials until the study is done, on GPU
    number `gpu` when there are several."""
    _die_with_parent(parent_pid)
    if gpu is not None:  # before CUDA starts in this process
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)
    _quiet()
    cfg = OmegaConf.create(cfg_yaml)
    if threads:
        import torch

        torch.set_num_threads(threads)
        overrides = [*overrides, f"trainer.threads={threads}"]
    # The sweep found the server answering before it started this worker: an outage since then
    # (a restart) is waited out as long as MLflow's client waits one out in a running trial.
    tracking.configure(cfg.tracking.uri, cfg.tracking.experiment, tracking.retry_window_s())
    ctx = WorkerContext(cfg, overrides, parent_run_id, mlflow.get_tracking_uri(), deadline)
    study = optuna.load_study(
        study_name=cfg.study_name,
        storage=open_storage(storage_url(cfg), cfg.heartbeat),
        pruner=make_pruner(cfg.sweep),
    )
    # Seeded by worker and by how far the study is, so no two draw the same samples.
    study.sampler = make_sampler(cfg.sweep, offset=7919 * index + len(study.trials))
    try:
        while (trial := next_trial(ctx, study)) is not None:
            with heartbeat(study, trial):
                run_trial(ctx, study, trial)
        return
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut this short
    # Out of the except block, so that the frames of an MLflow call the Ctrl-C cut short can
    # be freed, and with them the lock they may hold on a SQLite store.
    tracking.release_interrupted_call()
    end_interrupted_trials(ctx, study)
    sys.exit(130)


def end_interrupted_trials(ctx: WorkerContext, study: optuna.Study) -> None:
    """After a Ctrl-C in a worker: each RUNNING trial of this process (also one it had just
    asked for) ends FAIL, its run KILLED. A run that cannot be recorded now is recorded by
    the sweep when its workers have stopped (record_missing_runs)."""
    me = f"{HOST}:{os.getpid()}"
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if t.user_attrs.get("worker") != me:
            continue
        try:
            finish(study, optuna.Trial(study, t._trial_id), TrialState.FAIL,
                   "interrupted (Ctrl-C)", ctx)  # fmt: skip
        except MlflowException as err:
            print(f"trial {t.number}: FAIL; its MLflow run is recorded when the sweep stops "
                  f"({err.message[:200]})", flush=True)  # fmt: skip


def _die_with_parent(parent_pid: int) -> None:
    """Linux: get SIGKILL when the sweep process dies, so no orphan keeps training."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass
    if os.getppid() != parent_pid:  # it died while this process was still starting
        os._exit(1)


def _quiet() -> None:
    warnings.filterwarnings("ignore")
    for name in ("pytorch_lightning", "lightning", "mlflow", "optuna"):
        logging.getLogger(name).setLevel(logging.ERROR)
    optuna.logging.set_verbosity(optuna.logging.ERROR)


# --- the command ------------------------------------------------------------------------


@dataclass
class Finalist:
    trial: int
    params: int
    val_acc: float
    test_accs: list[float]
    run_id: str
    model_uri: str | None = None  # seed 0's model, the one the registry takes
    rerank_val_acc: float | None = None  # validation accuracy at the finalists' length

    @property
    def selection_val(self) -> float:
        """The validation accuracy it was chosen by (after reranking, where there was one)."""
        return self.val_acc if self.rerank_val_acc is None else self.rerank_val_acc

    @property
    def mean(self) -> float:
        return sum(self.test_accs) / len(self.test_accs)

    @property
    def std(self) -> float:
        m = self.mean
        n = len(self.test_accs)
        return math.sqrt(sum((a - m) ** 2 for a in self.test_accs) / (n - 1)) if n > 1 else 0.0


@dataclass
class SweepResult:
    study_name: str
    parent_run_id: str
    trials: list[FrozenTrial]
    finalists: list[Finalist]


def run_sweep(cfg: DictConfig, overrides: Sequence[str]) -> SweepResult:
    """Search, then retrain the finalists; returns what was recorded."""
    spec = cfg.sweep
    search_space.validate(search_space.flatten(spec.space))
    if cfg.workers < 1:
        raise UserError(f"workers={cfg.workers} must be at least 1")
    if cfg.data.val_size < 1:
        raise UserError("a sweep selects on the validation split: data.val_size must be > 0")
    check_trial_configs(cfg, overrides)
    check_heartbeat(cfg.heartbeat)
    check_finalist_rule(spec.finalists)
    if cfg.registry.select_by not in registry.SCORES:  # checked now, not after the finalists
        raise UserError(f"registry.select_by={cfg.registry.select_by} must be one of "
                        f"{', '.join(registry.SCORES)}")  # fmt: skip
    for o in spec.objectives:
        if o.metric not in OBJECTIVES or o.direction not in ("maximize", "minimize"):
            raise UserError(
                f"objective {o.metric}/{o.direction}: metric must be one of "
                f"{', '.join(OBJECTIVES)} and direction maximize or minimize"
            )
    tracking.configure(cfg.tracking.uri, cfg.tracking.experiment)  # an absent server: at once
    study = load_study(cfg)
    with study_lock(cfg, "setup"):  # other machines may be starting the same study now
        if cfg.enqueue_references and not study.trials:
            for ref in REFERENCES:
                study.enqueue_trial({}, user_attrs={"reference": ref})
        enqueue_warm_start(study, warm_start_entries(spec))
        parent = open_parent_run(cfg, study)
    parent_id = parent.info.run_id
    ctx = WorkerContext(cfg, list(overrides), parent_id, mlflow.get_tracking_uri(), None)
    finalists: list[Finalist] | None = None
    interrupted = False
    try:
        failed = fail_dead_trials(ctx, study)
        if failed:
            print(f"resuming: trials {failed} were left running by a killed sweep; now FAIL")
        recorded = record_missing_runs(ctx, study)
        if recorded:
            print(f"resuming: the MLflow runs of trials {recorded} recorded in their final state")
        search(cfg, list(overrides), study, parent_id)
        record_missing_runs(ctx, study)  # of trials whose worker could not record them
        # The finalists are trained once, by the first process (of any machine) whose search
        # ends, after the trials still running elsewhere; the others wait for it under the
        # same lock, then find them done, so every machine's command ends with the results.
        with study_lock(cfg, "finalists", wait=False) as first:
            if first:
                finalists = close_study(cfg, overrides, study, parent_id)
        if finalists is None:
            print("waiting: another process of this study trains its finalists", flush=True)
            with study_lock(cfg, "finalists"):
                finalists = close_study(cfg, overrides, study, parent_id)
    except KeyboardInterrupt:
        interrupted = True
    except BaseException:
        mlflow.end_run("FAILED")
        raise
    if interrupted:  # handled out of the except block: see tracking.release_interrupted_call
        tracking.release_interrupted_call()
        record_missing_runs(ctx, study)  # the workers have stopped: what they could not record
        mlflow.end_run("KILLED")
        raise KeyboardInterrupt
    mlflow.end_run("FINISHED")
    print_finalists(finalists, spec.finalists)
    return SweepResult(cfg.study_name, parent_id, study.get_trials(), finalists)


def close_study(cfg: DictConfig, overrides: Sequence[str], study: optuna.Study,
                parent_id: str) -> list[Finalist]:  # fmt: skip
    """Once no trial runs anywhere: the finalists (those already trained are kept) and the
    registry."""
    wait_for_running_trials(study)
    finalists = run_finalists(cfg, list(overrides), study, parent_id)
    register_best(cfg, finalists, parent_id)
    return finalists


def wait_for_running_trials(study: optuna.Study) -> None:
    """Until no trial is RUNNING: other machines' trials finish, or end FAIL when their
    heartbeats stop (RDB storages)."""
    said = False
    while running := study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not said:
            print(f"waiting for {len(running)} trial(s) still running elsewhere: "
                  f"{', '.join(t.user_attrs.get('worker', '?') for t in running)}")  # fmt: skip
            said = True
        time.sleep(2)
        optuna.storages.fail_stale_trials(study)


def open_parent_run(cfg: DictConfig, study: optuna.Study) -> mlflow.ActiveRun:
    """The study's parent run: reopened when resuming, else started with the sweep's facts."""
    # The run's id lives in the study, so a new study of the same name (its storage deleted)
    # never picks up an old study's parent run or finalists.
    parent_id = study.user_attrs.get("mlflow_parent_run_id")
    if parent_id:
        return mlflow.start_run(run_id=parent_id)
    spec = cfg.sweep
    run = mlflow.start_run(
        run_name=f"study-{cfg.study_name}",
        tags={
            "role": "study",
            "optuna.study": cfg.study_name,
            "optuna.sampler": spec.sampler.name,
            "optuna.pruner": spec.pruner.name,
            "optuna.storage": redact(storage_url(cfg)),
            "dataset": cfg.data.name,
            "git_commit": tracking.git_commit(),
        },
    )
    mlflow.log_params(tracking.flatten(OmegaConf.to_container(spec, resolve=True), "sweep."))
    mlflow.log_text(OmegaConf.to_yaml(spec), f"sweep_{spec.name}.yaml")
    mlflow.log_text(OmegaConf.to_yaml(training_config(cfg)), "base_config.yaml")
    study.set_user_attr("mlflow_parent_run_id", run.info.run_id)
    return run


def search(cfg: DictConfig, overrides: list[str], study: optuna.Study, parent_id: str) -> None:
    """Run the workers and follow the study until they are done."""
    spec = cfg.sweep
    deadline = time.time() + spec.budget.timeout_s if spec.budget.timeout_s else None
    threads = max(1, len(os.sched_getaffinity(0)) // cfg.workers)  # the cores we may use
    context = multiprocessing.get_context("spawn")
    cfg_yaml = OmegaConf.to_yaml(cfg, resolve=True)
    gpus = gpu_count(cfg.trainer.accelerator)
    workers = [
        context.Process(
            target=worker_main,
            args=(
                cfg_yaml,
                overrides,
                parent_id,
                deadline,
                threads,
                i,
                os.getpid(),
                gpu_for_worker(i, gpus),
            ),
        )  # fmt: skip
        for i in range(cfg.workers)
    ]
    for w in workers:
        w.start()
    progress = Progress(study, spec)
    interrupted = False
    try:
        while any(w.is_alive() for w in workers):
            time.sleep(1)
            progress.update()
    except KeyboardInterrupt:
        interrupted = True
    if interrupted:
        # Out of the except block: an MLflow call cut short here lets go of the store before
        # the workers record their trials (tracking.release_interrupted_call).
        tracking.release_interrupted_call()
        for w in workers:  # the terminal may have sent it to them too; once more is harmless
            if w.is_alive():
                os.kill(w.pid, signal.SIGINT)
        for w in workers:
            w.join(timeout=120)
    else:
        for w in workers:
            w.join()
    progress.update()
    progress.close()
    if interrupted or any(w.exitcode == 130 for w in workers):
        raise KeyboardInterrupt
    crashed = [w.exitcode for w in workers if w.exitcode != 0]
    if crashed:
        raise UserError(
            f"{len(crashed)} worker(s) stopped with exit codes {crashed}; their error is "
            f"printed above, and running the command again resumes"
        )


def gpu_count(accelerator: str) -> int:
    """GPUs the workers may use (none unless the trainer may run on one)."""
    if accelerator not in ("auto", "gpu", "cuda"):
        return 0
    import torch

    return torch.cuda.device_count()


def gpu_for_worker(index: int, gpus: int) -> int | None:
    """Workers share the GPUs round-robin, several per GPU (small models do not fill one);
    with one GPU or none, nothing is pinned."""
    return index % gpus if gpus > 1 else None


class Progress:
    """A sweep-level bar on a terminal, and one line per finished trial everywhere."""

    def __init__(self, study: optuna.Study, spec: DictConfig) -> None:
        self.study, self.spec, self.start = study, spec, time.time()
        self.seen = {t.number for t in study.get_trials(deepcopy=False) if t.state.is_finished()}
        self.bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=spec.budget.n_trials, initial=len(self.seen), unit="trial")

    def update(self) -> None:
        trials = self.study.get_trials(deepcopy=False)
        new = [t for t in trials if t.state.is_finished() and t.number not in self.seen]
        for t in new:
            self.seen.add(t.number)
            self._write(trial_line(t))
            if self.bar:
                self.bar.update(1)
        if new:
            log_study_summary(self.study)
        if self.bar:
            self.bar.set_postfix_str(best_line(trials))

    def _write(self, line: str) -> None:
        if self.bar:
            self.bar.write(line)
        else:
            print(line, flush=True)

    def close(self) -> None:
        if self.bar:
            self.bar.close()


def trial_line(t: FrozenTrial) -> str:
    attrs = t.user_attrs
    params = f"{attrs['params']:,} params" if "params" in attrs else "no model"
    acc = f"val_acc {attrs['val_acc']:.4f}" if attrs.get("val_acc") is not None else ""
    took = f"{(t.duration.total_seconds() if t.duration else 0):.0f}s"
    what = " ".join(_short(o) for o in attrs.get("overrides", []))
    why = f" ({attrs['reason']})" if "reason" in attrs else ""
    return f"trial {t.number:>3} {t.state.name:<8} {acc:<15} {params:<16} {took:>5}  {what}{why}"


def _short(override: str) -> str:
    """`optimizer.lr=0.0034883721` -> `optimizer.lr=0.00349`, for display only."""
    key, _, value = override.partition("=")
    try:
        return f"{key}={float(value):.3g}" if "." in value or "e" in value else override
    except ValueError:
        return override


def best_line(trials: Sequence[FrozenTrial]) -> str:
    done = [t for t in trials if t.state == TrialState.COMPLETE and "val_acc" in t.user_attrs]
    if not done:
        return "best: -"
    best = max(done, key=lambda t: t.user_attrs["val_acc"])
    return f"best val_acc {best.user_attrs['val_acc']:.4f} ({best.user_attrs['params']:,} params)"


def pareto_trials(study: optuna.Study) -> list[FrozenTrial]:
    """Pareto-optimal trials of a multi-objective study; the best one of a single-objective."""
    try:
        return list(study.best_trials)
    except ValueError:
        return []


FINALIST_RULES = ("pareto", "top_k", "budgets")


def _complete(study: optuna.Study, spec: DictConfig) -> list[FrozenTrial]:
    """The study's COMPLETE trials that meet `constraints.min_val_acc`."""
    floor = spec.constraints.min_val_acc
    return [
        t for t in study.get_trials(states=(TrialState.COMPLETE,))
        if floor is None or t.user_attrs["val_acc"] >= floor
    ]  # fmt: skip


def budget_ranking(trials: Sequence[FrozenTrial], budget: int) -> list[FrozenTrial]:
    """The trials within `budget` parameters, most accurate on validation first (fewer
    parameters first on a tie)."""
    within = [t for t in trials if t.user_attrs["params"] <= budget]
    return sorted(within, key=lambda t: (-t.user_attrs["val_acc"], t.user_attrs["params"]))


def select_finalists(
    study: optuna.Study, spec: DictConfig, longer: Mapping[int, float] | None = None
) -> list[FrozenTrial]:
    """Chosen on validation results only. `pareto` / `top_k`: at most `top_k`; of a
    multi-objective study the Pareto set (or every trial), most accurate first; of a
    single-objective one, the best by its objective. `budgets`: the frontier, for each
    parameter budget in `finalists.budgets` the most accurate trial within it (each once);
    given `longer` (`finalists.rerank: k`), the most accurate of the budget's k best trials
    by `longer`, their validation accuracy after the finalists' training length (`rerank`)."""
    policy = spec.finalists
    complete = _complete(study, spec)
    check_finalist_rule(policy)
    if policy.select == "budgets":
        chosen: dict[int, FrozenTrial] = {}
        for budget in sorted(policy.budgets):
            ranked = budget_ranking(complete, budget)
            if ranked and rerank_count(policy) and longer is not None:
                pool = ranked[: rerank_count(policy)]
                ranked = [max(pool, key=lambda t: (longer[t.number], -t.user_attrs["params"]))]
            if ranked:
                chosen[ranked[0].number] = ranked[0]
        return sorted(chosen.values(), key=lambda t: t.user_attrs["params"])
    if len(study.directions) > 1:
        pool = pareto_trials(study) if policy.select == "pareto" else complete
        ranked = sorted(pool, key=lambda t: t.user_attrs["val_acc"], reverse=True)
    else:
        sign = -1 if study.direction == optuna.study.StudyDirection.MAXIMIZE else 1
        ranked = sorted(complete, key=lambda t: sign * t.values[0])
        if policy.select == "pareto":
            ranked = ranked[:1]
    return ranked[: policy.top_k]


def rerank_count(policy: DictConfig) -> int:
    """`finalists.rerank`; a sweep file written before it existed reranks nothing."""
    return policy.get("rerank", 0)


def check_finalist_rule(policy: DictConfig) -> None:
    if policy.select not in FINALIST_RULES:
        raise UserError(
            f"finalists.select '{policy.select}' is not one of {', '.join(FINALIST_RULES)}"
        )
    budgets = policy.get("budgets")
    if policy.select == "budgets" and (
        not budgets or not all(isinstance(b, int) and b > 0 for b in budgets)
    ):
        raise UserError(
            "finalists.select=budgets needs finalists.budgets: a list of parameter counts"
        )
    rerank = rerank_count(policy)
    if not isinstance(rerank, int) or isinstance(rerank, bool) or rerank < 0:
        raise UserError(f"finalists.rerank={rerank} must be a whole number of trials, 0 for none")
    if rerank and policy.select != "budgets":
        raise UserError(
            f"finalists.rerank needs finalists.select=budgets (or finalists.rerank=0 with "
            f"select={policy.select})"
        )
    epochs = policy.get("rerank_epochs")
    if rerank and epochs is not None and (not isinstance(epochs, int) or epochs < 1):
        raise UserError(f"finalists.rerank_epochs={epochs} must be a positive whole number")


def rerank(ctx: WorkerContext, study: optuna.Study) -> dict[int, float]:
    """`finalists.rerank: k`: the k trials per budget that the search ranked best, each
    trained again (seed 0) for the finalists' length on all training images less the
    validation split, and scored on that split: short trials rank how fast a model learns,
    not where it ends. No test set is involved. Results are kept in the study's user
    attributes, so a resumed or second process does not train them again."""
    policy = ctx.spec.finalists
    count = rerank_count(policy)
    epochs = policy.get("rerank_epochs") or policy.epochs
    complete = _complete(study, ctx.spec)
    pool: dict[int, FrozenTrial] = {}
    for budget in sorted(policy.budgets):
        pool.update((t.number, t) for t in budget_ranking(complete, budget)[:count])
    known = study.user_attrs
    scores = {}
    if pool:
        print(f"rerank: {len(pool)} trials ({count} best per budget), {epochs} epochs "
              f"on the training images, scored on the validation split")  # fmt: skip
    for number, t in sorted(pool.items(), key=lambda item: item[1].user_attrs["params"]):
        key = f"rerank:{epochs}ep:t{number}"
        if key in known:
            scores[number] = known[key]
        else:
            extra = ["data.train_fraction=1.0", f"trainer.max_epochs={epochs}", "test=false",
                     "log_model=false", "trainer.progress_bar=false", "seed=0"]  # fmt: skip
            cfg_t = ctx.trial_config(t.user_attrs["overrides"], *extra)
            tags = {"role": "rerank", "optuna.study": study.study_name,
                    "optuna.trial": str(number), "recipe": f"seed 0 x {epochs} epochs"}  # fmt: skip
            splits = ctx.splits_for(cfg_t.data)
            result = train(cfg_t, parent_run_id=ctx.parent_run_id, tags=tags, splits=splits,
                           name_prefix=f"rerank-t{number}-")  # fmt: skip
            scores[number] = result.metrics["val_acc"]
            study.set_user_attr(key, scores[number])
        print(f"  trial {number} ({t.user_attrs['params']:,} params): val_acc "
              f"{t.user_attrs['val_acc']:.4f} in the search, {scores[number]:.4f} after {epochs} "
              f"epochs")  # fmt: skip
    return scores


def run_finalists(cfg, overrides: list[str], study: optuna.Study, parent_id: str):
    """Retrain each finalist on all training images with several seeds; test once each."""
    policy = cfg.sweep.finalists
    log_study_summary(study)
    if policy.seeds < 1:
        return []
    ctx = WorkerContext(cfg, overrides, parent_id, mlflow.get_tracking_uri(), None)
    longer = rerank(ctx, study) if rerank_count(policy) else None
    chosen = select_finalists(study, cfg.sweep, longer)
    if not chosen:
        return []
    print(f"finalists: {len(chosen)} trials x {policy.seeds} seeds, {policy.epochs} epochs on all "
          f"training images")  # fmt: skip
    recipe = f"{policy.seeds} seeds x {policy.epochs} epochs"
    done = finished_finalists(parent_id, recipe)
    results = []
    for t in chosen:
        if t.number in done:  # a resumed sweep keeps the finalists it already has
            run = done[t.number]
            accs = json.loads(run.data.tags["test_accs"])
            results.append(
                Finalist(
                    t.number,
                    t.user_attrs["params"],
                    t.user_attrs["val_acc"],
                    accs,
                    run.info.run_id,
                    run.data.tags.get("model_uri"),
                    run.data.metrics.get("rerank_val_acc"),
                )
            )
            continue
        base = ["data.val_size=0", "data.train_fraction=1.0", f"trainer.max_epochs={policy.epochs}",
                "test=true", "log_model=true", "trainer.progress_bar=false"]  # fmt: skip
        cfg_t = ctx.trial_config(t.user_attrs["overrides"], *base)
        size = tracking.human_count(t.user_attrs["params"])
        name = f"finalist-t{t.number}-{cfg_t.model.name}-{size}"
        tags = {
            "role": "finalist",
            "optuna.study": study.study_name,
            "optuna.trial": str(t.number),
            "recipe": recipe,
            "model": cfg_t.model.name,
            "dataset": cfg_t.data.name,
        }
        with tracking.tracked_run(cfg_t, name, tags, parent_id) as run:
            tracking.log_param_count(t.user_attrs["params"])
            mlflow.log_metric("val_acc", t.user_attrs["val_acc"])
            if longer is not None:
                mlflow.log_metric("rerank_val_acc", longer[t.number])
            seeds = []
            for seed in range(policy.seeds):
                seed_cfg = ctx.trial_config(t.user_attrs["overrides"], *base, f"seed={seed}")
                splits = ctx.splits_for(seed_cfg.data)
                result = train(
                    seed_cfg,
                    parent_run_id=run.info.run_id,
                    tags={**tags, "role": "finalist_seed", "seed": str(seed)},
                    splits=splits,
                    name_prefix=f"finalist-t{t.number}-seed{seed}-",
                )
                seeds.append(result)
            accs = [r.metrics["test_acc"] for r in seeds]
            finalist = Finalist(t.number, t.user_attrs["params"], t.user_attrs["val_acc"], accs,
                                run.info.run_id, seeds[0].model_uri,
                                None if longer is None else longer[t.number])  # fmt: skip
            mlflow.log_metrics({
                "test_acc_mean": finalist.mean,
                "test_acc_std": finalist.std,
                "train_time_s": sum(r.metrics["train_time_s"] for r in seeds) / len(seeds),
            })  # fmt: skip
            mlflow.set_tag("test_accs", json.dumps(accs))
            if finalist.model_uri:
                mlflow.set_tag("model_uri", finalist.model_uri)
            if all(r.confusion is not None for r in seeds):
                evaluate.log_confusion(sum(r.confusion for r in seeds), splits.classes,
                                       f"{len(seeds)} seeds,")  # fmt: skip
                # The whole evaluation of seed 0 too, so the finalist run shows every plot.
                with tempfile.TemporaryDirectory() as tmp:
                    local = MlflowClient().download_artifacts(seeds[0].run_id, "evaluation", tmp)
                    mlflow.log_artifacts(local, "evaluation_seed0")
        results.append(finalist)
        print(f"  finalist trial {t.number}: test_acc {finalist.mean:.4f} +/- {finalist.std:.4f}")
    results.sort(key=lambda f: f.params)
    mlflow.log_dict([f.__dict__ | {"test_acc_mean": f.mean, "test_acc_std": f.std}
                     for f in results], "finalists.json")  # fmt: skip
    smallest = next((f for f in results if f.mean >= policy.target_acc), None)
    if smallest:
        mlflow.log_metric("smallest_params_at_target", smallest.params)
        mlflow.set_tag("smallest_at_target_trial", str(smallest.trial))
    return results


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


def finished_finalists(parent_id: str, recipe: str) -> dict[int, Any]:
    """Finalist runs of this study already FINISHED with the same recipe, by trial number."""
    client = MlflowClient()
    parent = client.get_run(parent_id)
    runs = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent_id}' and tags.role = 'finalist' "
        f"and attributes.status = 'FINISHED'",
    )
    return {
        int(r.data.tags["optuna.trial"]): r
        for r in runs
        if r.data.tags.get("recipe") == recipe and "test_accs" in r.data.tags
    }


def log_study_summary(study: optuna.Study) -> None:
    """Keep the parent run's view of the study current: counts, best values, Pareto set."""
    trials = study.get_trials(deepcopy=False)
    counts = {s: sum(t.state == s for t in trials) for s in TrialState}
    mlflow.log_metrics({
        "trials_complete": counts[TrialState.COMPLETE],
        "trials_pruned": counts[TrialState.PRUNED],
        "trials_failed": counts[TrialState.FAIL],
    })  # fmt: skip
    front = pareto_trials(study)
    if front:
        mlflow.log_metric("best_val_acc", max(t.user_attrs["val_acc"] for t in front))
        mlflow.log_dict(
            [{"trial": t.number, "values": t.values, "params": t.user_attrs.get("params"),
              "val_acc": t.user_attrs.get("val_acc"), "overrides": t.user_attrs["overrides"]}
             for t in front], "pareto.json",
        )  # fmt: skip


def print_finalists(finalists: list[Finalist], policy: DictConfig) -> None:
    if not finalists:
        print("no finalists (no trial completed, or finalists.seeds=0)")
        return
    target = policy.target_acc
    smallest = next((f for f in finalists if f.mean >= target), None)
    reranked = any(f.rerank_val_acc is not None for f in finalists)
    longer = f"  {'reranked':>8}" if reranked else ""
    print(
        f"\n{'trial':>5}  {'params':>10}  {'val_acc':>8}{longer}  {'test_acc (mean +/- std)':>24}"
    )
    for f in finalists:
        mark = f"  <- smallest at >= {target:.1%}" if f is smallest else ""
        longer = f"  {f.rerank_val_acc:>8.4f}" if reranked else ""
        print(f"{f.trial:>5}  {f.params:>10,}  {f.val_acc:>8.4f}{longer}  "
              f"{f.mean:>15.4f} +/- {f.std:.4f}{mark}")  # fmt: skip
    if smallest is None:
        print(f"no finalist reaches {target:.1%} mean test accuracy")


@hydra.main(version_base="1.3", config_path="../conf", config_name="sweep")
@exit_cleanly
def main(cfg: DictConfig) -> None:
    _quiet()
    overrides = list(HydraConfig.get().overrides.task)
    result = run_sweep(cfg, overrides)
    print(f"study {result.study_name}: MLflow parent run {result.parent_run_id} "
          f"at {mlflow.get_tracking_uri()}")  # fmt: skip


if __name__ == "__main__":
    main()
