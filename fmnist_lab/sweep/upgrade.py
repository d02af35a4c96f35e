"""Studies begun before the study kept its record (docs/run_state.md): on their first resume
their runs get the study's `study_uid` tag, and their finished finalists and registration
become records, so that nothing they did is done again."""

from __future__ import annotations

import json
import re

import optuna
from mlflow import MlflowClient

from fmnist_lab import tracking
from fmnist_lab.sweep.record import Record

RECIPE = re.compile(r"(\d+) seeds x (\d+) epochs")


def adopt_older_runs(study: optuna.Study, parent_id: str, uid: str) -> None:
    """Tag the parent run, its children and their children with `uid`; record the finished
    finalists (by their recipe tag) and the registration (by the parent's tags)."""
    client = MlflowClient()
    parent = client.get_run(parent_id)
    experiment_id = parent.info.experiment_id
    record = Record(study)
    client.set_tag(parent_id, "study_uid", uid)
    level = [parent_id]
    while level:
        children = []
        for run_id in level:
            children += tracking.all_runs(client, [experiment_id],
                                          f"tags.mlflow.parentRunId = '{run_id}'")  # fmt: skip
        for run in children:
            client.set_tag(run.info.run_id, "study_uid", uid)
            tags = run.data.tags
            recipe = RECIPE.fullmatch(tags.get("recipe", ""))
            if (tags.get("role") == "finalist" and run.info.status == "FINISHED" and recipe
                    and "test_accs" in tags):  # fmt: skip
                seeds, epochs = recipe.groups()
                key = f"finalist:t{tags['optuna.trial']}:{seeds}x{epochs}ep"
                record.start(key)
                record.finish(key, {"test_accs": json.loads(tags["test_accs"]),
                                    "model_uri": tags.get("model_uri"),
                                    "rerank_val_acc": run.data.metrics.get("rerank_val_acc"),
                                    "val_measure": None}, run.info.run_id)  # fmt: skip
        level = [r.info.run_id for r in children if r.data.tags.get("role") == "finalist"]
    done = parent.data.tags.get("registry.finalist_run")
    if done:
        record.start("registration")
        record.finish("registration", {
            "finalist_run": done, "version": parent.data.tags.get("registry.version"),
            "moved": None, "said": f"registered version {parent.data.tags.get('registry.version')}"
                                   f" of {parent.data.tags.get('registry.model')} before",
        })  # fmt: skip
