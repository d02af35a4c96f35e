"""The MLflow UI's first look at an experiment fmnist_lab writes: its kind and saved view."""

from __future__ import annotations

import json
import time
from typing import Any

import mlflow

# The MLflow UI (>= 3.15) restores a "saved view" kept in an experiment tag
# `mlflow.sharedViewState.<id>`; its Views menu lists it, and the URL
# `#/experiments/<id>/runs?viewStateShareKey=fmnist-lab` opens it. Ours puts the columns and
# charts a comparison by size needs in front: params against val_acc and test_acc_mean.
VIEW_ID = "fmnist-lab"
VIEW_TAG = f"mlflow.sharedViewState.{VIEW_ID}"
_SECTION = "fmnist-lab-size-vs-accuracy"


def _chart(uuid: str, kind: str, **fields: Any) -> dict[str, Any]:
    return {"uuid": uuid, "type": kind, "metricSectionId": _SECTION, "deleted": False,
            "isGenerated": False, "runsCountToCompare": 100, **fields}  # fmt: skip


def _metric(key: str) -> dict[str, str]:
    return {"key": key, "type": "METRIC"}


VIEW_STATE = {
    "searchFilter": "",
    "orderByKey": "attributes.start_time",
    "orderByAsc": False,
    "selectedColumns": [
        "attributes.`Duration`", "metrics.`params`", "metrics.`val_acc`", "metrics.`test_acc`",
        "metrics.`test_acc_mean`", "tags.`model`", "tags.`role`",
    ],
    "compareRunCharts": [
        _chart("fmnist-params-val", "SCATTER", xaxis=_metric("params"), yaxis=_metric("val_acc")),
        _chart("fmnist-params-test", "SCATTER", xaxis=_metric("params"),
               yaxis=_metric("test_acc_mean")),
        _chart("fmnist-parallel", "PARALLEL", showAllRuns=True,
               selectedParams=["optimizer.lr", "model.dropout"],
               selectedMetrics=["params", "val_acc"]),
    ],
    "compareRunSections": [
        {"uuid": _SECTION, "name": "Size vs accuracy", "display": True, "isReordered": False,
         "deleted": False, "isGenerated": False},
    ],
    "runsHiddenMode": "SHOW_ALL",  # charts otherwise draw only the first 10 runs
    "hideEmptyCharts": True,
}  # fmt: skip


def prepare(experiment_id: str) -> None:
    """Tag the experiment for the MLflow UI: open it as model training (not GenAI) and offer
    the saved view "fmnist_lab: size vs accuracy"."""
    client = mlflow.MlflowClient()
    client.set_experiment_tag(experiment_id, "mlflow.experimentKind", "custom_model_development")
    view = {"name": "fmnist_lab: size vs accuracy", "createdAt": int(time.time() * 1000),
            "state": json.dumps(VIEW_STATE, separators=(",", ":"))}  # fmt: skip
    client.set_experiment_tag(experiment_id, VIEW_TAG, json.dumps(view))
