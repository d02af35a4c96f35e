"""`python -m fmnist_lab.cv`: stratified folds, one real training run per fold in MLflow."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from mlflow import MlflowClient

from fmnist_lab.data import stratified_folds

from .conftest import run_cli


def test_stratified_folds_partition_with_class_shares():
    y = np.repeat(np.arange(10), 103)
    folds = stratified_folds(torch.from_numpy(y), 5, seed=0)
    together = torch.cat(folds).sort().values
    assert together.tolist() == list(range(len(y)))  # disjoint, and cover every image
    sizes = [len(f) for f in folds]
    assert max(sizes) - min(sizes) <= 1
    for f in folds:
        counts = np.bincount(y[f.numpy()], minlength=10)
        assert counts.max() - counts.min() <= 1  # each fold keeps the class shares


@pytest.mark.slow
def test_cv_logs_one_run_per_fold(tmp_path, data_root, cache_dir):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = run_cli(
        "fmnist_lab.cv", "folds=3", f"data.root={data_root}", f"data.cache_dir={cache_dir}",
        f"tracking.uri={uri}", "data.train_fraction=0.05", "trainer.max_epochs=1",
        "model.filters=[8,16]", "runtime.progress_bar=false", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("cv").experiment_id])
    (parent,) = [r for r in runs if r.data.tags["role"] == "cv"]
    folds = sorted((r for r in runs if r.data.tags["role"] == "cv_fold"),
                   key=lambda r: int(r.data.tags["fold"]))  # fmt: skip
    assert [r.data.tags["fold"] for r in folds] == ["0", "1", "2"]
    assert {r.data.tags["mlflow.parentRunId"] for r in folds} == {parent.info.run_id}
    accs = [r.data.metrics["val_acc"] for r in folds]
    assert all("test_acc" not in r.data.metrics for r in folds)  # selection never tests
    # The folds' mean is the run's val_acc (one name per meaning), rounded to what the folds'
    # images resolve.
    assert parent.data.metrics["val_acc"] == pytest.approx(np.mean(accs), abs=1e-4)
    assert parent.data.metrics["val_acc_std"] == pytest.approx(np.std(accs, ddof=1), abs=1e-4)
    assert "val_acc_mean" not in parent.data.metrics
    assert parent.info.run_name == "cv3-convnet-" + parent.info.run_name.split("-")[-1]
    assert min(accs) > 0.5  # 2,000 real images per fold train a small CNN past chance
    history = client.get_metric_history(parent.info.run_id, "fold_val_acc")
    assert [m.value for m in history] == pytest.approx(accs)
    assert "+/-" in result.stdout

    # The report lists the cross-validation as one row, its validation accuracy the mean.
    listed = run_cli("fmnist_lab.report", "--tracking-uri", uri, "--experiment", "cv",
                     "--format", "json", cwd=tmp_path)  # fmt: skip
    assert listed.returncode == 0, listed.stderr[-3000:]
    (row,) = json.loads(listed.stdout)
    assert row["run_id"] == parent.info.run_id and row["val_acc"] == parent.data.metrics["val_acc"]


def test_cv_needs_two_folds(tmp_path, small_data):
    result = run_cli("fmnist_lab.cv", "folds=1", *small_data.cfg_overrides(), cwd=tmp_path)
    assert result.returncode == 2 and "folds=1: must be greater than or equal to 2" in result.stderr
    assert not (tmp_path / "mlflow.db").exists()  # nothing recorded
