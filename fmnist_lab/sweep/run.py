"""A whole sweep: check, open the study, search, retrain the finalists, register the champion.
Every process (of every machine) of a study runs this; the study's locks decide who does what
once."""

from __future__ import annotations

import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass

import mlflow
import optuna
from omegaconf import DictConfig
from optuna.trial import FrozenTrial, TrialState

from fmnist_lab import tracking
from fmnist_lab.storage import beats
from fmnist_lab.sweep import faults, fidelity
from fmnist_lab.sweep.champion import register_best
from fmnist_lab.sweep.config import (
    REFERENCES,
    WorkerContext,
    check_sweep,
    enqueue_warm_start,
    warm_start_entries,
)
from fmnist_lab.sweep.finalists import Finalist, print_finalists, run_finalists
from fmnist_lab.sweep.locks import study_lock
from fmnist_lab.sweep.reconcile import DIED, reconcile
from fmnist_lab.sweep.record import Record
from fmnist_lab.sweep.study import load_study, open_parent_run, open_study_storage
from fmnist_lab.sweep.trial import run_rung
from fmnist_lab.sweep.worker import search


@dataclass
class SweepResult:
    study_name: str
    parent_run_id: str
    trials: list[FrozenTrial]
    finalists: list[Finalist]


def run_sweep(cfg: DictConfig, overrides: Sequence[str]) -> SweepResult:
    """Search, then retrain the finalists; returns what was recorded."""
    spec = cfg.sweep
    check_sweep(cfg, overrides)
    faults.check()
    tracking.configure(cfg.tracking.uri, cfg.tracking.experiment)  # an absent server: at once
    storage = open_study_storage(cfg)
    study = load_study(cfg, storage)
    ctx: WorkerContext | None = None
    finalists: list[Finalist] | None = None
    interrupted = False
    try:
        with study_lock(cfg, "setup"):  # other machines may be starting the same study now
            if cfg.enqueue_references and not study.trials:
                for ref in REFERENCES:
                    study.enqueue_trial({}, user_attrs={"reference": ref})
            enqueue_warm_start(study, warm_start_entries(spec))
            parent_id = open_parent_run(cfg, study).info.run_id
        ctx = WorkerContext(cfg, list(overrides), parent_id, mlflow.get_tracking_uri(), None,
                            storage, study.user_attrs["uid"])  # fmt: skip
        for line in reconcile(ctx, study).lines():
            print(f"resuming: {line}", flush=True)
        search(cfg, list(overrides), study, parent_id)
        reconcile(ctx, study)  # trials whose worker could not record their runs
        # The finalists are trained once, by the first process (of any machine) whose search
        # ends, after the trials still running elsewhere; the others wait for it under the
        # same lock, then find them done, so every machine's command ends with the results.
        with study_lock(cfg, "finalists", wait=False) as first:
            if first:
                finalists = close_study(ctx, study)
        if finalists is None:
            print("waiting: another process of this study trains its finalists", flush=True)
            with study_lock(cfg, "finalists"):
                finalists = close_study(ctx, study)
    except KeyboardInterrupt:
        interrupted = True
    except BaseException:
        mlflow.end_run("FAILED")
        raise
    if interrupted:  # handled out of the except block: see tracking.release_interrupted_call
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut this short
        tracking.release_interrupted_call()
        if ctx is not None:
            reconcile(ctx, study)  # the workers have stopped: what they could not record
        mlflow.end_run("KILLED")
        raise KeyboardInterrupt
    mlflow.end_run("FINISHED")
    print_finalists(finalists, spec.finalists)
    return SweepResult(cfg.study_name, parent_id, study.get_trials(), finalists)


def close_study(ctx: WorkerContext, study: optuna.Study) -> list[Finalist]:
    """Under the closing lock, once no trial runs anywhere: what a closing process that died
    left running is ended, then the finalists (those done are kept) and the registry."""
    reconcile(ctx, study, closing=True)
    wait_for_running_trials(study)
    fid = fidelity.of(ctx.spec)
    if fid is not None:
        finish_rungs(ctx, study, fid)
    finalists = run_finalists(ctx.cfg, ctx.overrides, study, ctx.parent_run_id, ctx.study_uid)
    register_best(ctx.cfg, finalists, study)
    return finalists


def finish_rungs(ctx: WorkerContext, study: optuna.Study, fid: fidelity.Fidelity) -> None:
    """The closing process: rungs still training on other machines are waited for, those
    whose process died and promotions still due are trained here; then no trial can go on,
    and the checkpoints go (docs/run_state.md)."""
    grace = ctx.cfg.heartbeat.grace_s if beats(ctx.storage) else None
    said = False
    while True:
        with study_lock(ctx.cfg, "trials"):
            for name in fidelity.running(study, None):
                rec = Record(study).get(name)
                if fidelity.stale(rec, grace):
                    Record(study).stop(name, DIED)
            alive = fidelity.running(study, grace)
            promotion = None if alive else fidelity.take(study, fid)
        if promotion is not None:
            run_rung(ctx, study, *promotion)
            continue
        if not alive:
            break
        if not said:
            print(f"waiting for rung(s) still training elsewhere: {', '.join(alive)}")
            said = True
        time.sleep(2)
    fidelity.remove_checkpoints(ctx.cfg)


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
