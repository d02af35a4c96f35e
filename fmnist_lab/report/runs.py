"""The runs a report compares: found in MLflow (a study's, experiments', named ones) and
turned into comparable rows with their Pareto flags."""

from __future__ import annotations

import json
from dataclasses import dataclass

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.exceptions import MlflowException

from fmnist_lab import measures, tracking
from fmnist_lab.errors import UserError

# Runs that are parts of another run's result, not results of their own (a rerank run: a
# finalist's `rerank_val_acc`, or a trial's second training; its validation accuracy is
# at another length than the trials', so it stays off their frontier).
PARTS = ("study", "finalist_seed", "cv_fold", "rerank")


@dataclass
class Row:
    run_id: str
    run: str
    role: str
    model: str
    dataset: str
    params: int
    val_acc: float | None
    test_acc: float | None  # the mean over n_test runs where there are several
    test_acc_std: float | None
    n_test: int  # test runs behind the mean: seeds of a finalist, 1 for a tested run
    train_time_s: float | None
    pareto: bool = False


# --- finding runs -------------------------------------------------------------------------


def study_parent(client: MlflowClient, study: str) -> Run:
    """The newest parent run of the study named `study`, in any experiment."""
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(
        experiments,
        filter_string=f"tags.role = 'study' and tags.`optuna.study` = '{study}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if not runs:
        raise UserError(
            f"no study '{study}' at {mlflow.get_tracking_uri()}; list them with "
            f"--list, or pass --tracking-uri"
        )
    return runs[0]


def study_runs(client: MlflowClient, parent: Run) -> list[Run]:
    return tracking.all_runs(
        client, [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )


def experiment_runs(client: MlflowClient, name: str) -> list[Run]:
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        raise UserError(f"no experiment '{name}' at {mlflow.get_tracking_uri()}")
    return tracking.all_runs(client, [experiment.experiment_id], "")


def get_run(client: MlflowClient, run_id: str) -> Run:
    try:
        return client.get_run(run_id)
    except MlflowException:
        raise UserError(f"no run '{run_id}' at {mlflow.get_tracking_uri()}") from None


# --- runs as rows -------------------------------------------------------------------------


def to_row(run: Run, named: bool = False) -> Row | None:
    """A comparable result, or None: unfinished runs, trials that did not complete, runs
    that are parts of another (a study's parent, a finalist's seeds, cross-validation folds)
    unless `named` explicitly. A cross-validation's validation accuracy is its folds' mean."""
    tags, metrics = run.data.tags, measures.current_metrics(run.data.metrics)
    role = tags.get("role", "run")
    if run.info.status != "FINISHED" or (role in PARTS and not named) or "params" not in metrics:
        return None
    if role == "trial" and tags.get("optuna.state") != "COMPLETE":
        return None
    mean, std = metrics.get("test_acc"), metrics.get("test_acc_std")
    n = 0 if mean is None else len(json.loads(tags.get("test_accs", "[]"))) or 1
    return Row(
        run_id=run.info.run_id,
        run=run.info.run_name,
        role=role,
        model=tags.get("model", run.data.params.get("model.name", "?")),
        dataset=tags.get("dataset", run.data.params.get("data.name", "?")),
        params=int(metrics["params"]),
        val_acc=metrics.get("val_acc"),
        test_acc=mean,
        test_acc_std=std,
        n_test=n,
        train_time_s=metrics.get("train_time_s"),
    )


def collect(runs: list[Run], named: bool = False) -> list[Row]:
    """Comparable rows, sorted by parameter count, with the Pareto flag set."""
    rows = [r for r in (to_row(run, named) for run in runs) if r is not None]
    flags = pareto_flags([(r.params, r.val_acc) for r in rows])
    for row, flag in zip(rows, flags, strict=True):
        row.pareto = flag
    return sorted(rows, key=lambda r: (r.params, -(r.val_acc or 0), r.run))


def selected_frontier(rows: list[Row]) -> list[Row]:
    """The honest frontier: for each parameter budget, the tested run that validation
    accuracy alone would pick among those within it (its test accuracy is what that budget
    buys). Runs in order of size; each one that beats every smaller one on validation."""
    chosen, best = [], -1.0
    for r in sorted(rows, key=lambda r: r.params):
        if r.test_acc is not None and r.val_acc is not None and r.val_acc > best:
            chosen.append(r)
            best = r.val_acc
    return chosen


def dataset_key(name: str) -> str:
    """The dataset a run's data config reads: the CSV form is the same Fashion-MNIST."""
    return name.removesuffix("_csv")


def pareto_flags(points: list[tuple[int, float | None]]) -> list[bool]:
    """True for each (params, accuracy) point that no other point dominates: none has at most
    as many parameters and at least the accuracy, and is better in one. No accuracy: False."""
    flags = []
    for p, a in points:
        if a is None:
            flags.append(False)
            continue
        dominated = any(q <= p and b >= a and (q < p or b > a) for q, b in points if b is not None)
        flags.append(not dominated)
    return flags
