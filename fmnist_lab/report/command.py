"""The report's steps once its command line is parsed: open the store, pick the runs, print
the table, write the plots and log them to the study's parent run."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from omegaconf import OmegaConf

from fmnist_lab.datasets import PRETTY
from fmnist_lab.errors import UserError
from fmnist_lab.report import CONFIG
from fmnist_lab.report.datasets import compare_datasets, render_datasets
from fmnist_lab.report.frontier import write_plots
from fmnist_lab.report.render import render
from fmnist_lab.report.runs import (
    collect,
    dataset_key,
    experiment_runs,
    get_run,
    study_parent,
    study_runs,
)
from fmnist_lab.report.study import load_optuna_study, write_study_plots


def open_client() -> MlflowClient:
    """A client of the tracking store, which must exist: a report only reads."""
    uri = mlflow.get_tracking_uri()
    # A SQLite path that names no file is a typo, not a new store.
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise UserError(
            f"no MLflow store at {uri}; pass --tracking-uri (a sweep's is "
            f"sqlite:///mlflow.db in the folder it ran in)"
        )
    try:
        client = MlflowClient()
        client.search_experiments(max_results=1)
    except MlflowException as err:
        raise UserError(f"cannot read MLflow at {uri}: {err.message}") from None
    return client


def list_studies(client: MlflowClient) -> None:
    experiments = [e.experiment_id for e in client.search_experiments()]
    studies = client.search_runs(experiments, "tags.role = 'study'")
    if not studies:
        print(f"no studies at {mlflow.get_tracking_uri()}")
    for run in studies:
        print(
            f"{run.data.tags.get('optuna.study')}  {run.data.tags.get('dataset')}  "
            f"{run.info.status}  parent run {run.info.run_id}"
        )


def report(args: argparse.Namespace) -> None:
    if args.tracking_uri:
        mlflow.set_tracking_uri(args.tracking_uri)
    client = open_client()
    if args.list:
        list_studies(client)
        return

    parent = None
    if args.study:
        parent = study_parent(client, args.study)
        runs, name = study_runs(client, parent), args.study
    elif args.experiment:
        runs = [r for e in args.experiment for r in experiment_runs(client, e)]
        name = "+".join(args.experiment)
    else:
        runs = [get_run(client, i) for i in args.runs]
        name = "runs"

    if args.compare_datasets:
        frame = compare_datasets(runs)
        print(render_datasets(frame, args.format), end="" if args.format == "csv" else "\n")
        return

    if args.data:
        runs = [r for r in runs if dataset_key(r.data.tags.get("dataset", "")) == args.data]
    rows = collect(runs, named=bool(args.runs))
    datasets = sorted({dataset_key(r.dataset) for r in rows})
    if len(datasets) > 1:  # accuracies of different datasets do not share a frontier
        raise UserError(
            f"these runs are on several datasets ({', '.join(datasets)}); pick one with "
            f"--data, or line them up with --compare-datasets"
        )
    print(render(rows, args.format))
    if not rows:
        return
    dataset = datasets[0]
    target = args.target if args.target is not None else OmegaConf.load(CONFIG).target_acc
    title = f"{name}: parameters vs accuracy ({PRETTY.get(dataset, dataset)})"
    out = args.output or Path("outputs") / "reports" / name
    out.mkdir(parents=True, exist_ok=True)
    files = write_plots(rows, dataset, target, title, out)
    if parent is not None:
        study = load_optuna_study(parent, args.storage)
        if study is not None:
            objectives = study.metric_names or [
                f"objective_{i}" for i in range(len(study.directions))
            ]
            files += write_study_plots(study, objectives, out)
        if not args.no_log:
            for f in files:
                client.log_artifact(parent.info.run_id, str(f), "report")
    print(
        f"\nwrote {', '.join(f.name for f in files)} to {out}"
        + (
            f"; logged to parent run {parent.info.run_id}"
            if parent is not None and not args.no_log
            else ""
        ),
        file=sys.stderr,
    )
