"""One trial: its sampled config, its size check, its training, and how it ended."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import mlflow
import optuna
import pytorch_lightning as pl
from optuna.trial import TrialState

from fmnist_lab import space as search_space
from fmnist_lab import tracking
from fmnist_lab.continuation import StableCheckpoint
from fmnist_lab.errors import UserError
from fmnist_lab.models import build_model, count_params
from fmnist_lab.storage import beats, trial_id
from fmnist_lab.sweep import faults, fidelity
from fmnist_lab.sweep.config import WorkerContext, trial_run_config
from fmnist_lab.sweep.reconcile import end_trial
from fmnist_lab.sweep.record import Record
from fmnist_lab.sweep.samplers import prunes
from fmnist_lab.train import RunResult, train


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
    """Train one trial and tell the study how it ended (COMPLETE, PRUNED or FAIL): while its
    run is still RUNNING where it trained, so that a FINISHED run always has its trial told."""
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
    # With sweep.fidelity, the first rung: WSD to its length, saved where its stable phase
    # ends (unless it is the top rung: nothing continues from there).
    fid = fidelity.of(spec)
    first, rung, saved = None, [], None
    if fid is not None:
        first = fid.rungs[0]
        at = fid.stable_end(first)
        saved = fidelity.checkpoint(ctx.cfg, trial.number, at) if first < fid.top else None
        rung = [StableCheckpoint(at, saved, quiet=first < fid.top)]
    cfg = trial_run_config(ctx, [*overrides, *(fid.overrides(first) if fid else [])])
    tags = {"role": "trial", "optuna.study": study.study_name, "optuna.trial": str(trial.number),
            "study_uid": ctx.study_uid}  # fmt: skip

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
    prunable = [o.metric for o in spec.objectives] == ["val_acc"] and prunes(spec)
    pruning = PruneOnValidation(trial, enabled=prunable)

    def tell(result: RunResult) -> None:
        val_acc = result.metrics.get("val_acc")
        # The compute it took (sweep.budget.compute_epochs): epochs over its training images.
        epochs = cfg.trainer.max_epochs if pruning.pruned_at is None else pruning.pruned_at + 1
        trial.set_user_attr("epochs_trained", int(epochs))
        trial.set_user_attr("val_acc", val_acc)
        trial.set_user_attr("train_time_s", result.metrics.get("train_time_s"))
        if pruning.pruned_at is not None:
            told(study, trial, TrialState.PRUNED,
                 f"pruned after epoch {pruning.pruned_at} (val_acc {val_acc:.4f})")  # fmt: skip
            return
        values = [n_params if o.metric == "params" else result.metrics[o.metric]
                  for o in spec.objectives]  # fmt: skip
        if fid is not None and val_acc is not None:
            trial.set_user_attr("rung_epochs", first)
            trial.set_user_attr("checkpoint", str(saved) if saved else None)
            mlflow.log_metric("rung_val_acc", val_acc, step=first)
        told(study, trial, TrialState.COMPLETE, None, values)

    try:
        train(
            cfg,
            callbacks=[pruning, *rung, *faults.callbacks("trial")],
            parent_run_id=ctx.parent_run_id,
            tags=tags,
            splits=ctx.splits_for(cfg.data),
            name=f"t{trial.number}-{{size}}",
            on_result=tell,
        )
    except KeyboardInterrupt:
        raise  # the worker marks the trial
    except Exception as err:  # any failure of one trial: record it, the sweep goes on
        end_trial(ctx, study, trial, TrialState.FAIL, f"{type(err).__name__}: {err}")


def told(study: optuna.Study, trial: optuna.Trial, state: TrialState, reason: str | None,
         values: list[float] | None = None) -> None:  # fmt: skip
    """Tell the study how the trial ended, and tag its active run so (it ends FINISHED)."""
    if reason:
        trial.set_user_attr("reason", reason)
        mlflow.set_tag("optuna.reason", reason[:5000])
    frozen = study.tell(trial, values=values, state=state)  # FAIL, not COMPLETE, on a NaN
    mlflow.set_tag("optuna.state", frozen.state.name)


@contextmanager
def heartbeat(storage: optuna.storages.BaseStorage, study: optuna.Study,
              trial: optuna.Trial) -> Iterator[None]:  # fmt: skip
    """While a trial trains, beat its heartbeat (RDB storages), so that a machine that dies
    leaves trials that `fail_stale_trials` can find; ask/tell gets no beat from Optuna."""
    if not beats(storage):
        yield
        return
    number = trial_id(storage, study.study_name, trial.number)
    with beating(storage, lambda: storage.record_heartbeat(number)):
        yield


@contextmanager
def beating(storage: optuna.storages.BaseStorage, beat: Callable[[], None]) -> Iterator[None]:
    """Call `beat` every heartbeat interval of `storage` (at once, then on) while in the
    block, from a thread of its own."""
    interval = storage.get_heartbeat_interval()
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            beat()
            stop.wait(interval)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def end_untrained(ctx, cfg, study, trial, n_params, reason, tags) -> None:
    """A trial ended before training still gets its child run, saying why."""
    name = tracking.run_name(f"t{trial.number}-{{size}}", cfg.model.name, n_params)
    with tracking.tracked_run(cfg, name, tags, ctx.parent_run_id) as run:
        if n_params is not None:
            tracking.log_param_count(n_params)
        trial.set_user_attr("mlflow_run_id", run.info.run_id)
        told(study, trial, TrialState.PRUNED, reason)


def run_rung(ctx: WorkerContext, study: optuna.Study, number: int, epochs: int) -> None:
    """Train trial `number` on to rung `epochs` (its record is `running` under this process):
    from the checkpoint of the rung below where this machine has it, else from the start
    (the same steps, more compute), into the trial's own run; the record `done` with the
    rung's validation accuracy (its decayed branch) before the run ends."""
    fid = fidelity.of(ctx.spec)
    t = study.get_trials(deepcopy=False)[number]
    below = fid.rungs[fid.rungs.index(epochs) - 1]
    start = fidelity.checkpoint(ctx.cfg, number, fid.stable_end(below))
    resume = str(start) if start is not None and start.exists() else None
    top = epochs == fid.top
    at = fid.stable_end(epochs)
    saved = None if top else fidelity.checkpoint(ctx.cfg, number, at)
    cfg = trial_run_config(ctx, [*t.user_attrs["overrides"], *fid.overrides(epochs)])
    name = fidelity.key(number, epochs)
    record = Record(study)
    trained = epochs - (fid.stable_end(below) if resume else 0)

    def finish(result: RunResult) -> None:
        val_acc = result.metrics["val_acc"]
        mlflow.log_metric("rung_val_acc", val_acc, step=epochs)
        record.finish(name, {"val_acc": val_acc, "checkpoint": str(saved) if saved else None,
                             "epochs_trained": trained, "resumed": resume is not None},
                      result.run_id)  # fmt: skip

    with record.attempt(name, started=True), record_heartbeat(ctx, record, name):
        logged = 0 if resume else fid.stable_end(below)  # trained again from the start
        train(cfg, callbacks=[StableCheckpoint(at, saved, quiet=not top, logged=logged),
                              *faults.callbacks("rung")],
              tags={"rung_epochs": str(epochs)}, splits=ctx.splits_for(cfg.data),
              on_result=finish, resume_from=resume,
              run_id=t.user_attrs["mlflow_run_id"])  # fmt: skip
    # One checkpoint per trial: the one its next rung would start from; none after the top.
    fidelity.remove_checkpoints(ctx.cfg, number, keep=saved)


@contextmanager
def record_heartbeat(ctx: WorkerContext, record: Record, name: str) -> Iterator[None]:
    """While a rung trains on an RDB storage, its record's `beat` is renewed like a trial's
    heartbeat, so that a process of another machine can tell that it died."""
    if not beats(ctx.storage):
        yield
        return
    with beating(ctx.storage, lambda: record.beat(name)):
        yield
