"""Worker processes: each asks the study for trials and trains them until the budget, the
timeout or the stop condition says the search is done. The sweep owns this loop instead of
`study.optimize` for exact trial counts across processes and machines, heartbeats on every
trial, and trials that end without training."""

from __future__ import annotations

import ctypes
import logging
import math
import multiprocessing
import os
import signal
import sys
import time
import warnings
from collections.abc import Sequence

import mlflow
import optuna
from omegaconf import DictConfig, OmegaConf
from optuna.trial import FrozenTrial, TrialState

from fmnist_lab import tracking
from fmnist_lab.errors import UserError
from fmnist_lab.storage import beats, trial_id
from fmnist_lab.sweep import faults, fidelity
from fmnist_lab.sweep.config import WorkerContext
from fmnist_lab.sweep.locks import sigint_held, study_lock
from fmnist_lab.sweep.progress import Progress
from fmnist_lab.sweep.reconcile import fail_own_trials
from fmnist_lab.sweep.record import owner
from fmnist_lab.sweep.samplers import make_pruner, make_sampler
from fmnist_lab.sweep.study import open_study_storage
from fmnist_lab.sweep.trial import heartbeat, run_rung, run_trial

WAIT = "wait"  # next_work: nothing to do now, but a rung or trial in training may give some


def next_work(ctx: WorkerContext, study: optuna.Study):
    """What a free worker does next: a rung to train on to, as (trial, epochs), with
    `sweep.fidelity` (its record written now, under the lock); else a new trial, unless the
    budget, the timeout or a stop condition says we are done (None), or WAIT."""
    spec = ctx.spec
    if ctx.deadline is not None and time.time() >= ctx.deadline:
        return None
    fid = fidelity.of(spec)
    with study_lock(ctx.cfg, "trials"):
        optuna.storages.fail_stale_trials(study)  # a dead machine's trials end FAIL
        trials = study.get_trials(deepcopy=False)
        if stop_condition_met(spec, trials, study):
            return None
        cap = spec.budget.get("compute_epochs")
        if cap is not None and fidelity.epochs_spent(study, spec) >= cap:
            return None  # the compute budget is spent: what trains now finishes
        if fid is not None:
            with sigint_held():  # decided and recorded as one step
                promotion = fidelity.take(study, fid)
                if promotion is not None:
                    return promotion
        if search_done(spec, trials, study):
            if fid is not None and (
                any(t.state == TrialState.RUNNING for t in trials)
                or fidelity.running(
                    study, ctx.cfg.heartbeat.grace_s if beats(ctx.storage) else None
                )
            ):
                return WAIT  # what trains now may make a promotion due: stay for it
            return None
        # Noted under the lock, so that a RUNNING trial without owner is known to be one whose
        # worker was killed in between (reconcile); a Ctrl-C waits until it is noted.
        with sigint_held():
            trial = study.ask()
            trial.set_user_attr("worker", owner())
        if beats(ctx.storage):  # from its first moment, so that a machine dying now is noticed
            ctx.storage.record_heartbeat(trial_id(ctx.storage, study.study_name, trial.number))
        return trial


def search_done(spec: DictConfig, trials: Sequence[FrozenTrial],
                study: optuna.Study | None = None) -> bool:  # fmt: skip
    """Whether the budget is spent (nothing queued) or a stop condition is met."""
    waiting = any(t.state == TrialState.WAITING for t in trials)
    spent = len(trials) >= spec.budget.n_trials and not waiting
    return spent or stop_condition_met(spec, trials, study)


def stop_condition_met(spec: DictConfig, trials: Sequence[FrozenTrial],
                       study: optuna.Study | None = None) -> bool:  # fmt: skip
    """`sweep.stop`: a trial at or above `val_acc` within `max_params`; with fidelity, at the
    top rung (a short rung's accuracy says nothing of where a model ends)."""
    target, limit = spec.stop.val_acc, spec.stop.max_params
    if target is None:
        return False
    fid = fidelity.of(spec)
    if fid is not None and study is not None:
        trials = fidelity.top_trials(study, fid)
    elif fid is not None:
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
    faults.in_worker(parent_pid)
    if gpu is not None:  # before CUDA starts in this process
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)
    quiet()
    cfg = OmegaConf.create(cfg_yaml)
    if threads:
        import torch

        torch.set_num_threads(threads)
        overrides = [*overrides, f"runtime.threads={threads}"]
    # The sweep found the server answering before it started this worker: an outage since then
    # (a restart) is waited out as long as MLflow's client waits one out in a running trial.
    tracking.configure(cfg.tracking.uri, cfg.tracking.experiment, tracking.retry_window_s())
    storage = open_study_storage(cfg)
    study = optuna.load_study(
        study_name=cfg.study_name, storage=storage, pruner=make_pruner(cfg.sweep)
    )
    ctx = WorkerContext(cfg, overrides, parent_run_id, mlflow.get_tracking_uri(), deadline,
                        storage, study.user_attrs["uid"])  # fmt: skip
    # Seeded by worker and by how far the study is, so no two draw the same samples.
    study.sampler = make_sampler(cfg.sweep, offset=7919 * index + len(study.trials))
    try:
        while (work := next_work(ctx, study)) is not None:
            if work is WAIT:
                time.sleep(2)
                continue
            if isinstance(work, tuple):
                run_rung(ctx, study, *work)
                continue
            with heartbeat(storage, study, work):
                run_trial(ctx, study, work)
        return
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut this short
    # Out of the except block, so that the frames of an MLflow call the Ctrl-C cut short can
    # be freed, and with them the lock they may hold on a SQLite store.
    tracking.release_interrupted_call()
    fail_own_trials(ctx, study)
    sys.exit(130)


def _die_with_parent(parent_pid: int) -> None:
    """Linux: get SIGKILL when the sweep process dies, so no orphan keeps training."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass
    if os.getppid() != parent_pid:  # it died while this process was still starting
        os._exit(1)


def quiet() -> None:
    warnings.filterwarnings("ignore")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    for name in ("pytorch_lightning", "lightning", "mlflow", "optuna"):
        logging.getLogger(name).setLevel(logging.ERROR)
    optuna.logging.set_verbosity(optuna.logging.ERROR)


def search(cfg: DictConfig, overrides: list[str], study: optuna.Study, parent_id: str) -> None:
    """Run the workers and follow the study until they are done."""
    spec = cfg.sweep
    fid = fidelity.of(spec)
    if search_done(spec, study.get_trials(deepcopy=False), study) and (
        fid is None or fidelity.next_promotion(study, fid) is None
    ):
        return  # resumed after the search: no worker to start
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
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut this short
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
