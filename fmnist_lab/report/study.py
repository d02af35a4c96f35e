"""Optuna's analyses of a study: its parameter importances, optimisation history and Pareto
front, from the storage the sweep recorded (or `--storage`)."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import optuna  # noqa: E402
import plotly.graph_objects as go  # noqa: E402
from mlflow.entities import Run  # noqa: E402

from fmnist_lab.errors import UserError  # noqa: E402
from fmnist_lab.storage import open_storage  # noqa: E402


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
