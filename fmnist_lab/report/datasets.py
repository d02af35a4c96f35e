"""`--compare-datasets`: the same configs (model and recipe) side by side on each dataset."""

from __future__ import annotations

import json
import statistics

import pandas as pd
from mlflow.entities import Run

from fmnist_lab.datasets import PRETTY
from fmnist_lab.report.render import pct
from fmnist_lab.report.runs import dataset_key, to_row
from fmnist_lab.tables import markdown

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


def compare_datasets(runs: list[Run]) -> pd.DataFrame:
    """Tested runs grouped by their recipe (model, optimiser, schedule, augmentation, epochs),
    one column per dataset: test accuracy mean +/- std over the runs (seeds) of that recipe."""
    groups: dict[str, dict[str, list[float]]] = {}
    info: dict[str, tuple[str, int]] = {}
    for run in runs:
        row = to_row(run)
        if row is None or row.test_acc is None:
            continue
        recipe = json.dumps(
            sorted((k, v) for k, v in run.data.params.items() if k.startswith(RECIPE))
        )
        accs = json.loads(run.data.tags.get("test_accs", "null")) or [row.test_acc]
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
                shown = f"{pct(statistics.fmean(accs))} +/- {pct(statistics.stdev(accs))}"
            else:
                shown = pct(accs[0]) if accs else ""
            record[PRETTY.get(d, d)] = f"{shown} (n={len(accs)})" if accs else ""
        records.append((params, record))
    return pd.DataFrame([r for _, r in sorted(records, key=lambda x: x[0])])


def render_datasets(frame: pd.DataFrame, fmt: str) -> str:
    """The frame of `compare_datasets` in a `--format`."""
    if fmt == "json":
        return frame.to_json(orient="records", indent=2)
    if fmt == "csv":
        return frame.to_csv(index=False)
    if fmt == "markdown":
        return markdown(frame) if not frame.empty else "(no tested runs)"
    return frame.to_string(index=False) if not frame.empty else "(no tested runs)"
