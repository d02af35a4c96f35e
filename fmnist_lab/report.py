"""`python -m fmnist_lab.report`: compare runs by parameter count against accuracy.

Reads any MLflow tracking store: a study (its trials and finalists), whole experiments, or
explicit run ids. Prints the comparison table, writes the params-vs-accuracy plot (PNG and an
interactive HTML page) with the Pareto frontier, the target line and the reference results,
and for a study the Optuna parameter importances and optimisation history, all logged to the
study's parent run. `--compare-datasets` lines up the same configs on Fashion-MNIST and MNIST.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import mlflow  # noqa: E402
import optuna  # noqa: E402
import pandas as pd  # noqa: E402
import plotly.graph_objects as go  # noqa: E402
from mlflow import MlflowClient  # noqa: E402
from mlflow.entities import Run  # noqa: E402
from mlflow.exceptions import MlflowException  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from fmnist_lab import tracking  # noqa: E402
from fmnist_lab.data import PRETTY  # noqa: E402
from fmnist_lab.errors import UserError, exit_cleanly  # noqa: E402
from fmnist_lab.storage import open_storage  # noqa: E402

CONFIG = Path(__file__).resolve().parents[1] / "conf" / "report.yaml"
FORMATS = ("table", "markdown", "csv", "json")
# Runs that are parts of another run's result, not results of their own (a rerank run: a
# finalist's `rerank_val_acc`, or a trial's second training; its validation accuracy is
# at another length than the trials', so it stays off their frontier).
PARTS = ("study", "finalist_seed", "cv_fold", "rerank")
# Params that make two runs "the same config" across datasets: the model and its recipe.
RECIPE = (
    "model.",
    "optimizer.",
    "scheduler.",
    "augmentation.",
    "trainer.max_epochs",
    "data.batch_size",
    "data.train_fraction",
    "data.val_size",
    "data.split_seed",
    "label_smoothing",
)


@dataclass
class Row:
    run_id: str
    run: str
    role: str
    model: str
    dataset: str
    params: int
    val_acc: float | None
    test_acc_mean: float | None
    test_acc_std: float | None
    n_test: int  # test runs behind the mean: seeds of a finalist, 1 for a tested run
    train_time_s: float | None
    pareto: bool = False


# --- collecting runs ----------------------------------------------------------------------


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


def to_row(run: Run, named: bool = False) -> Row | None:
    """A comparable result, or None: unfinished runs, trials that did not complete, runs
    that are parts of another (a study's parent, a finalist's seeds, cross-validation folds)
    unless `named` explicitly. A cross-validation's validation accuracy is its folds' mean."""
    tags, metrics = run.data.tags, run.data.metrics
    role = tags.get("role", "run")
    if run.info.status != "FINISHED" or (role in PARTS and not named) or "params" not in metrics:
        return None
    if role == "trial" and tags.get("optuna.state") != "COMPLETE":
        return None
    if "test_acc_mean" in metrics:
        mean, std = metrics["test_acc_mean"], metrics.get("test_acc_std")
        n = len(json.loads(tags.get("test_accs", "[]"))) or 1
    elif "test_acc" in metrics:
        mean, std, n = metrics["test_acc"], None, 1
    else:
        mean, std, n = None, None, 0
    return Row(
        run_id=run.info.run_id,
        run=run.info.run_name,
        role=role,
        model=tags.get("model", run.data.params.get("model.name", "?")),
        dataset=tags.get("dataset", run.data.params.get("data.name", "?")),
        params=int(metrics["params"]),
        val_acc=metrics.get("val_acc", metrics.get("val_acc_mean")),
        test_acc_mean=mean,
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
        if r.test_acc_mean is not None and r.val_acc is not None and r.val_acc > best:
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


# --- the table ----------------------------------------------------------------------------


def _pct(x: float | None) -> str:
    return "" if x is None else f"{100 * x:.2f}"


def _test(row: Row) -> str:
    if row.test_acc_mean is None:
        return ""
    if row.test_acc_std is None:
        return _pct(row.test_acc_mean)
    return f"{_pct(row.test_acc_mean)} +/- {_pct(row.test_acc_std)} (n={row.n_test})"


def display_frame(rows: list[Row]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "run": [r.run for r in rows],
            "model": [r.model for r in rows],
            "params": [f"{r.params:,}" for r in rows],
            "val_acc %": [_pct(r.val_acc) for r in rows],
            "test_acc %": [_test(r) for r in rows],
            "train_time": [
                "" if r.train_time_s is None else f"{r.train_time_s:.0f}s" for r in rows
            ],
            "pareto": ["yes" if r.pareto else "" for r in rows],
        }
    )


def markdown(frame: pd.DataFrame, left: Sequence[str] = ("run", "model")) -> str:
    """A pipe table: the `left` (text) columns left-aligned, the others right-aligned."""
    header = "| " + " | ".join(frame.columns) + " |"
    rule = "|" + "|".join("---" if c in left else "---:" for c in frame.columns) + "|"
    body = ["| " + " | ".join(map(str, v)) + " |" for v in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body])


def render(rows: list[Row], fmt: str) -> str:
    if fmt == "json":
        return json.dumps([asdict(r) for r in rows], indent=2)
    if fmt == "csv":
        return pd.DataFrame([asdict(r) for r in rows]).to_csv(index=False)
    frame = display_frame(rows)
    if fmt == "markdown":
        return markdown(frame)
    return frame.to_string(index=False) if rows else "(no comparable runs)"


# --- the params-vs-accuracy plot ----------------------------------------------------------


def references(dataset: str) -> list[dict]:
    table = OmegaConf.to_container(OmegaConf.load(CONFIG).references)
    return table.get(dataset.removesuffix("_csv"), [])


def plot_frontier(rows: list[Row], dataset: str, target: float, title: str) -> plt.Figure:
    """Validation accuracy of every run, its Pareto frontier, test accuracy (mean +/- std)
    of the tested runs, the target line and the reference results, over log parameters."""
    fig, ax = plt.subplots(figsize=(11, 6.5), dpi=100)
    val = [r for r in rows if r.val_acc is not None]
    ax.scatter(
        [r.params for r in val],
        [100 * r.val_acc for r in val],
        s=18,
        c="0.6",
        label="validation accuracy (every run)",
        zorder=2,
    )
    front = sorted((r for r in val if r.pareto), key=lambda r: r.params)
    if front:
        ax.step(
            [r.params for r in front],
            [100 * r.val_acc for r in front],
            where="post",
            c="tab:blue",
            lw=1.5,
            label="Pareto frontier (validation)",
            zorder=3,
        )
    tested = [r for r in rows if r.test_acc_mean is not None]
    picked = selected_frontier(rows)
    if picked:
        ax.step(
            [r.params for r in picked],
            [100 * r.test_acc_mean for r in picked],
            where="post",
            c="tab:red",
            lw=1,
            ls="--",
            zorder=3,
            label="test accuracy of the validation-selected frontier",
        )
    if tested:
        ax.errorbar(
            [r.params for r in tested],
            [100 * r.test_acc_mean for r in tested],
            yerr=[100 * (r.test_acc_std or 0) for r in tested],
            fmt="o",
            c="tab:red",
            capsize=3,
            label="test accuracy (mean +/- std over seeds)",
            zorder=4,
        )
    refs = references(dataset)
    placed = [x for x in refs if x["params"]]
    if placed:
        ax.scatter(
            [x["params"] for x in placed],
            [100 * x["test_acc"] for x in placed],
            marker="*",
            s=110,
            c="tab:green",
            label="reported results",
            zorder=4,
        )
        # Neighbours alternate above and below their star, so close labels stay readable.
        for i, x in enumerate(sorted(placed, key=lambda x: x["params"])):
            ax.annotate(
                x["label"],
                (x["params"], 100 * x["test_acc"]),
                fontsize=7,
                xytext=(4, 4 if i % 2 == 0 else -10),
                textcoords="offset points",
            )
    ax.axhline(100 * target, ls="--", c="k", lw=1, label=f"target {100 * target:g} %")
    ax.set_xscale("log")
    lows = [100 * r.val_acc for r in val] + [100 * r.test_acc_mean for r in tested]
    lows += [100 * x["test_acc"] for x in placed] + [100 * target]
    bottom = math.floor(min(lows)) - 1
    ax.set_ylim(bottom, 100)
    for x in refs:  # results reported without a parameter count: a level line
        if not x["params"] and 100 * x["test_acc"] > bottom:
            ax.axhline(100 * x["test_acc"], ls=":", c="tab:green", lw=0.8)
            ax.annotate(
                x["label"],
                (1.0, 100 * x["test_acc"]),
                xycoords=("axes fraction", "data"),
                fontsize=7,
                ha="right",
                va="bottom",
                c="tab:green",
            )
    ax.set_xlabel("parameters (log scale)")
    ax.set_ylabel("accuracy %")
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return fig


def frontier_html(rows: list[Row], dataset: str, target: float, title: str) -> go.Figure:
    """The same plot as an interactive Plotly figure: hover shows each run."""
    fig = go.Figure()
    val = [r for r in rows if r.val_acc is not None]
    hover = "%{text}<br>%{x:,} params<br>%{y:.2f} %<extra></extra>"
    fig.add_scatter(
        x=[r.params for r in val],
        y=[100 * r.val_acc for r in val],
        mode="markers",
        name="validation accuracy",
        text=[f"{r.run} ({r.role})" for r in val],
        hovertemplate=hover,
        marker={"color": "gray"},
    )
    front = sorted((r for r in val if r.pareto), key=lambda r: r.params)
    fig.add_scatter(
        x=[r.params for r in front],
        y=[100 * r.val_acc for r in front],
        mode="lines",
        line_shape="hv",
        name="Pareto frontier (validation)",
    )
    tested = [r for r in rows if r.test_acc_mean is not None]
    fig.add_scatter(
        x=[r.params for r in tested],
        y=[100 * r.test_acc_mean for r in tested],
        mode="markers",
        name="test accuracy (mean +/- std)",
        text=[f"{r.run}: {_test(r)}" for r in tested],
        error_y={"array": [100 * (r.test_acc_std or 0) for r in tested]},
        hovertemplate=hover,
        marker={"color": "crimson"},
    )
    picked = selected_frontier(rows)
    fig.add_scatter(
        x=[r.params for r in picked],
        y=[100 * r.test_acc_mean for r in picked],
        mode="lines",
        line_shape="hv",
        line_dash="dash",
        name="test accuracy of the validation-selected frontier",
    )
    refs = references(dataset)
    placed = [x for x in refs if x["params"]]
    fig.add_scatter(
        x=[x["params"] for x in placed],
        y=[100 * x["test_acc"] for x in placed],
        mode="markers+text",
        name="reported results",
        text=[x["label"] for x in placed],
        textposition="top right",
        hovertemplate=hover,
        marker={"symbol": "star", "size": 11, "color": "green"},
    )
    fig.add_hline(y=100 * target, line_dash="dash", annotation_text=f"target {100 * target:g} %")
    for x in refs:
        if not x["params"]:
            fig.add_hline(
                y=100 * x["test_acc"],
                line_dash="dot",
                line_color="green",
                annotation_text=x["label"],
                annotation_font_size=9,
            )
    fig.update_layout(
        title=title,
        xaxis_title="parameters",
        yaxis_title="accuracy %",
        xaxis_type="log",
        height=650,
    )
    return fig


# --- the Optuna study -----------------------------------------------------------------------


def load_optuna_study(parent: Run, storage: str | None) -> optuna.Study | None:
    """The study behind a parent run, from `storage` or the storage the sweep recorded."""
    name = parent.data.tags["optuna.study"]
    url = storage or parent.data.tags.get("optuna.storage")
    if url is None:
        return None
    if "***" in url:  # the password was redacted from the tag; only --storage can supply it
        print(
            f"note: the study's storage {url} needs its password; pass --storage to add "
            f"importances and history",
            file=sys.stderr,
        )
        return None
    try:
        if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).is_file():
            raise FileNotFoundError("no such file")  # Optuna would create it
        if url.startswith("journal:") and not Path(url.removeprefix("journal:")).is_file():
            raise FileNotFoundError("no such file")
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        return optuna.load_study(study_name=name, storage=open_storage(url))
    except Exception as err:  # any storage problem: the rest of the report still stands
        if storage:
            raise UserError(f"could not open study '{name}' at {storage}: {err}") from None
        print(
            f"note: the Optuna study '{name}' is not readable at {url} ({err}); "
            f"pass --storage to add importances and history",
            file=sys.stderr,
        )
        return None


def sampled_study(study: optuna.Study) -> optuna.Study | None:
    """The study's completed trials that sampled the search space (references enqueued
    with a fixed model are left out), as an in-memory study for Optuna's analyses."""
    trials = [t for t in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)) if t.params]
    if len(trials) < 2:
        return None
    copy = optuna.create_study(directions=study.directions)
    copy.add_trials(trials)
    return copy


def study_analyses(
    study: optuna.Study, objectives: list[str]
) -> tuple[dict[str, dict[str, float]], dict[str, tuple[go.Figure, plt.Figure | None]]]:
    """Optuna's parameter importances ({objective: {param: importance}}) and its plots:
    importances and optimisation history per objective, and the Pareto front of a
    multi-objective study, as {name: (plotly figure, matplotlib figure or None)}."""
    from optuna import visualization as vis
    from optuna.visualization import matplotlib as vis_mpl

    sampled = sampled_study(study)
    if sampled is None:
        return {}, {}
    importances, figures = {}, {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna's "experimental" notices
        for i, name in enumerate(objectives):
            kw = {
                "target": (lambda t, i=i: t.values[i]) if len(objectives) > 1 else None,
                "target_name": name,
            }
            # fANOVA, seeded: Optuna 5's default (PED-ANOVA) scores only low target values
            # and needs more trials than a small sweep has.
            evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
            importances[name] = {
                k: float(v)
                for k, v in optuna.importance.get_param_importances(
                    sampled, evaluator=evaluator, target=kw["target"]
                ).items()
            }
            figures[f"param_importances_{name}"] = (
                vis.plot_param_importances(sampled, evaluator=evaluator, **kw),
                vis_mpl.plot_param_importances(sampled, evaluator=evaluator, **kw).figure,
            )
            figures[f"optimization_history_{name}"] = (
                vis.plot_optimization_history(study, **kw),
                vis_mpl.plot_optimization_history(study, **kw).figure,
            )
        if len(objectives) > 1:
            figures["pareto_front"] = (vis.plot_pareto_front(study, target_names=objectives), None)
    return importances, figures


# --- the command ------------------------------------------------------------------------


def compare_datasets(runs: list[Run]) -> pd.DataFrame:
    """Tested runs grouped by their recipe (model, optimiser, schedule, augmentation, epochs),
    one column per dataset: test accuracy mean +/- std over the runs (seeds) of that recipe."""
    groups: dict[str, dict[str, list[float]]] = {}
    info: dict[str, tuple[str, int]] = {}
    for run in runs:
        row = to_row(run)
        if row is None or row.test_acc_mean is None:
            continue
        recipe = json.dumps(
            sorted((k, v) for k, v in run.data.params.items() if k.startswith(RECIPE))
        )
        accs = json.loads(run.data.tags.get("test_accs", "null")) or [row.test_acc_mean]
        groups.setdefault(recipe, {}).setdefault(dataset_key(row.dataset), []).extend(accs)
        info[recipe] = (row.model, row.params)
    datasets = sorted({d for g in groups.values() for d in g})
    records = []
    for recipe, by_dataset in groups.items():
        model, params = info[recipe]
        record = {"model": model, "params": f"{params:,}"}
        for d in datasets:
            accs = by_dataset.get(d, [])
            if len(accs) > 1:
                shown = f"{_pct(statistics.fmean(accs))} +/- {_pct(statistics.stdev(accs))}"
            else:
                shown = _pct(accs[0]) if accs else ""
            record[PRETTY.get(d, d)] = f"{shown} (n={len(accs)})" if accs else ""
        records.append((params, record))
    return pd.DataFrame([r for _, r in sorted(records, key=lambda x: x[0])])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m fmnist_lab.report",
        description="Compare runs by parameter count against accuracy.",
    )
    pick = parser.add_argument_group("what to compare (one of)")
    pick.add_argument("--study", help="a sweep's study name: its trials and finalists")
    pick.add_argument("--experiment", nargs="+", default=[], help="every run of experiments")
    pick.add_argument("--runs", nargs="+", default=[], metavar="RUN_ID", help="these runs")
    pick.add_argument("--list", action="store_true", help="list the studies in the store")
    parser.add_argument("--tracking-uri", help="else $MLFLOW_TRACKING_URI, else ./mlflow.db")
    parser.add_argument("--format", choices=FORMATS, default="table")
    parser.add_argument(
        "--output", type=Path, help="folder for the plots (default: outputs/reports/<name>)"
    )
    parser.add_argument("--storage", help="the study's Optuna storage, if not the one recorded")
    parser.add_argument("--dataset", help="only runs on this dataset (fashion_mnist, mnist)")
    parser.add_argument("--target", type=float, help="the accuracy line (default 0.94)")
    parser.add_argument("--no-log", action="store_true", help="do not log to the parent run")
    parser.add_argument(
        "--compare-datasets",
        action="store_true",
        help="line up the same configs on Fashion-MNIST and MNIST",
    )
    args = parser.parse_args(argv)
    if args.target is not None and not 0 < args.target < 1:
        parser.error(f"--target {args.target} must be an accuracy between 0 and 1, e.g. 0.94")
    if sum(map(bool, (args.study, args.experiment, args.runs, args.list))) != 1:
        parser.error("name exactly one of --study, --experiment, --runs, --list")
    return args


def report(args: argparse.Namespace) -> None:
    if args.tracking_uri:
        mlflow.set_tracking_uri(args.tracking_uri)
    uri = mlflow.get_tracking_uri()
    # A report only reads: a SQLite path that names no file is a typo, not a new store.
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
    if args.list:
        experiments = [e.experiment_id for e in client.search_experiments()]
        studies = client.search_runs(experiments, "tags.role = 'study'")
        if not studies:
            print(f"no studies at {uri}")
        for run in studies:
            print(
                f"{run.data.tags.get('optuna.study')}  {run.data.tags.get('dataset')}  "
                f"{run.info.status}  parent run {run.info.run_id}"
            )
        return

    parent = None
    if args.study:
        parent = study_parent(client, args.study)
        runs, name = study_runs(client, parent), args.study
    elif args.experiment:
        runs = [r for e in args.experiment for r in experiment_runs(client, e)]
        name = "+".join(args.experiment)
    else:
        runs = [_get_run(client, i) for i in args.runs]
        name = "runs"

    if args.compare_datasets:
        frame = compare_datasets(runs)
        if args.format == "json":
            print(frame.to_json(orient="records", indent=2))
        elif args.format == "csv":
            print(frame.to_csv(index=False), end="")
        elif args.format == "markdown":
            print(markdown(frame) if not frame.empty else "(no tested runs)")
        else:
            print(frame.to_string(index=False) if not frame.empty else "(no tested runs)")
        return

    if args.dataset:
        runs = [r for r in runs if dataset_key(r.data.tags.get("dataset", "")) == args.dataset]
    rows = collect(runs, named=bool(args.runs))
    datasets = sorted({dataset_key(r.dataset) for r in rows})
    if len(datasets) > 1:  # accuracies of different datasets do not share a frontier
        raise UserError(
            f"these runs are on several datasets ({', '.join(datasets)}); pick one with "
            f"--dataset, or line them up with --compare-datasets"
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


def _get_run(client: MlflowClient, run_id: str) -> Run:
    try:
        return client.get_run(run_id)
    except MlflowException:
        raise UserError(f"no run '{run_id}' at {mlflow.get_tracking_uri()}") from None


def write_plots(rows: list[Row], dataset: str, target: float, title: str, out: Path) -> list[Path]:
    png, html = out / "params_vs_accuracy.png", out / "params_vs_accuracy.html"
    fig = plot_frontier(rows, dataset, target, title)
    fig.savefig(png)
    plt.close(fig)
    frontier_html(rows, dataset, target, title).write_html(html, include_plotlyjs=True)
    table = out / "comparison.csv"
    table.write_text(render(rows, "csv"))
    return [png, html, table]


def write_study_plots(study: optuna.Study, objectives: list[str], out: Path) -> list[Path]:
    try:
        importances, figures = study_analyses(study, objectives)
    except (RuntimeError, ValueError) as err:  # e.g. fANOVA on a target with no variance
        print(f"note: no importances or history for this study ({err})", file=sys.stderr)
        return []
    if not figures:
        print(
            "note: fewer than 2 sampled trials completed; no importances or history",
            file=sys.stderr,
        )
        return []
    files = [out / "param_importances.json", out / "optuna_study.html"]
    files[0].write_text(json.dumps(importances, indent=2))
    # One page, Plotly's script embedded once, so it opens offline.
    parts = [
        fig.to_html(full_html=False, include_plotlyjs=i == 0)
        for i, (fig, _) in enumerate(figures.values())
    ]
    files[1].write_text(
        f"<html><head><meta charset='utf-8'><title>Optuna study {study.study_name}</title>"
        f"</head><body><h1>Optuna study {study.study_name}</h1>{''.join(parts)}</body></html>"
    )
    for name, (_, fig) in figures.items():
        if fig is not None:
            fig.set_size_inches(10, 6)
            fig.tight_layout()
            fig.savefig(out / f"{name}.png", dpi=100)
            plt.close(fig)
            files.append(out / f"{name}.png")
    return files


@exit_cleanly
def main(argv: list[str] | None = None) -> None:
    report(parse_args(argv))


if __name__ == "__main__":
    main()
