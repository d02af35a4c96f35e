"""The MLflow UI's first look at an experiment fmnist_lab writes: a saved view of every trial and
finalist by size against accuracy, and a link to it in the experiment's description.

Written against the UI of MLflow 3.17 (pyproject.toml pins the minor; docs/tracking.md says what
to re-check before moving it). What that UI does, read from its sources:
- An experiment in the list links to `#/experiments/<id>`, which redirects by the browser's
  remembered workflow (local storage, GenAI in a fresh browser, or `?workflowType=` in the
  URL), not by the experiment's `mlflow.experimentKind` tag: a fresh browser lands on the GenAI
  overview. That page, like every page of the experiment, shows the description
  (`mlflow.note.content`, markdown): the link there opens the view.
- A saved view is an experiment tag `mlflow.sharedViewState.<id>` that opens only with
  `?viewStateShareKey=<id>`; there is no default view. A view cannot preset expanded rows (the
  UI drops `runsExpanded`), but the table nests child runs under their parent only when sorted
  by start time: sorted by `params`, every trial and finalist is a row of its own, and the
  charts, which draw the rows listed beside them, show them all.
- A scatter chart has no log axis (line charts alone have one): the charts' x axis is the
  metric `params_log10` (3 is 1,000 parameters, 5 is 100,000), which every run logs beside
  `params`. The chart view lists run names only: the table with the columns is its table
  mode, one click away.
"""

from __future__ import annotations

import json
import time
from contextlib import suppress
from typing import Any

import mlflow
from mlflow.exceptions import MlflowException

# Raise VIEW_VERSION whenever VIEW_STATE or the description changes. The tag's name carries it,
# and fmnist_lab.tracking.configure prepares an experiment that lacks VIEW_TAG: a store written
# by an earlier version gets this view (and loses the earlier one) on its next run.
VIEW_VERSION = 3
VIEW_ID = f"fmnist-lab-v{VIEW_VERSION}"
VIEW_NAME = "fmnist_lab: size vs accuracy"
TAG_PREFIX = "mlflow.sharedViewState."
VIEW_TAG = TAG_PREFIX + VIEW_ID
EARLIER_VIEWS = TAG_PREFIX + "fmnist-lab"  # version 1's tag, and the start of every version's
NOTE_TAG = "mlflow.note.content"
LINK_TEXT = "every trial and finalist by size, against accuracy"
_SECTION = "fmnist-lab-size-vs-accuracy"


def _scatter(uuid: str, x: str, y: str) -> dict[str, Any]:
    return {"uuid": uuid, "type": "SCATTER", "metricSectionId": _SECTION, "deleted": False,
            "isGenerated": False, "runsCountToCompare": 100,
            "xaxis": {"key": x, "type": "METRIC"},
            "yaxis": {"key": y, "type": "METRIC"}}  # fmt: skip


COLUMNS = ["metrics.`params`", "metrics.`val_acc`", "metrics.`test_acc`", "metrics.`test_acc_std`",
           "tags.`model`", "tags.`role`"]  # fmt: skip
VIEW_STATE = {
    # By size, not by start time, so that no run is folded under its parent (see above). Seed
    # runs repeat their finalist's size; the finalist carries their mean.
    "searchFilter": "tags.role != 'finalist_seed'",
    "orderByKey": "metrics.`params`",
    "orderByAsc": True,
    "selectedColumns": COLUMNS,
    "columnOrder": COLUMNS,  # else the metrics come in alphabetical order
    "compareRunCharts": [
        _scatter("fmnist-params-val", "params_log10", "val_acc"),
        _scatter("fmnist-params-test", "params_log10", "test_acc"),
        # Multi-fidelity sweeps (sweep.fidelity): each trial at the highest rung it reached
        # (the metric's latest step); hidden where no run has it.
        _scatter("fmnist-params-rung", "params_log10", "rung_val_acc"),
    ],
    "compareRunSections": [
        {"uuid": _SECTION, "name": "Size vs accuracy", "display": True, "isReordered": False,
         "deleted": False, "isGenerated": False, "columns": 2},
    ],
    "runsHiddenMode": "SHOW_ALL",  # charts otherwise draw only the first 10 runs
    "hideEmptyCharts": True,
}  # fmt: skip


def view_url(experiment_id: str) -> str:
    """The view's address relative to the UI's page: a `#` route, so any host or prefix."""
    return (f"#/experiments/{experiment_id}/runs?viewStateShareKey={VIEW_ID}"
            "&workflowType=machine_learning&compareRunsMode=CHART")  # fmt: skip


def note(experiment_id: str) -> str:
    """The experiment's description; its first words are what the experiments list shows."""
    return f'fmnist_lab: [{LINK_TEXT}]({view_url(experiment_id)}) (the saved view "{VIEW_NAME}")'


def prepare(experiment_id: str) -> None:
    """Put this version's saved view on the experiment, remove earlier versions' views, and
    link the view from the description unless its user wrote one of their own."""
    client = mlflow.MlflowClient()
    tags = client.get_experiment(experiment_id).tags
    # Read by the UI only where workflow-based navigation is off (not in MLflow 3.17's).
    client.set_experiment_tag(experiment_id, "mlflow.experimentKind", "custom_model_development")
    view = {"name": VIEW_NAME, "createdAt": int(time.time() * 1000),
            "state": json.dumps(VIEW_STATE, separators=(",", ":"))}  # fmt: skip
    client.set_experiment_tag(experiment_id, VIEW_TAG, json.dumps(view))
    for key in tags:
        if key.startswith(EARLIER_VIEWS) and key != VIEW_TAG:
            with suppress(MlflowException):  # another process removed it first
                client.delete_experiment_tag(experiment_id, key)
    described = tags.get(NOTE_TAG, "")
    if not described.strip() or "viewStateShareKey=fmnist-lab" in described:  # none, or ours
        client.set_experiment_tag(experiment_id, NOTE_TAG, note(experiment_id))
