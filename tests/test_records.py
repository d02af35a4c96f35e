"""Runs recorded by earlier code still count: a run's params and config.yaml as the code before
conf/runtime/ and the `_target_` schedules and datasets wrote them (captured from a real run of
`reproduce best_50k` at commit 69be181, tests/data/pre_runtime_*), read by today's reproduce,
export and tta through tracking.current_names / current_config."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest
import yaml
from mlflow import MlflowClient
from mlflow.entities import Param
from omegaconf import OmegaConf

from fmnist_lab import export, reproduce, tracking

DATA = Path(__file__).parent / "data"
RECORD = json.loads((DATA / "pre_runtime_run.json").read_text())
# The overrides that run was trained with (`reproduce best_50k --set ...`).
OVERRIDES = ["trainer.max_epochs=1", "data.train_fraction=0.05", "data.val_size=500",
             "evaluate=false", "log_model=false"]  # fmt: skip


def store_with(tmp_path: Path, params: dict[str, str]) -> MlflowClient:
    """A real SQLite MLflow store holding one FINISHED run of best_50k with `params`."""
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.create_experiment(reproduce.EXPERIMENT, str(tmp_path / "artifacts"))
    run_id = client.create_run(experiment, tags=RECORD["tags"]).info.run_id
    items = [Param(k, v) for k, v in params.items()]
    for i in range(0, len(items), 100):
        client.log_batch(run_id, params=items[i : i + 100])
    client.set_terminated(run_id, "FINISHED")
    return client


def test_an_old_run_still_counts_for_its_recipe(tmp_path):
    assert "trainer.threads" in RECORD["params"] and "scheduler.name" in RECORD["params"]
    client = store_with(tmp_path, RECORD["params"])
    cfg = reproduce.run_config("best_50k", 0, None, OVERRIDES, None)
    found = reproduce.recorded(client, "best_50k", cfg, seeds=1)
    assert list(found.runs) == [0] and not found.stale


@pytest.mark.parametrize(
    ("old", "difference"),
    [
        ({"scheduler.name": "cosine"},
         "scheduler._target_=fmnist_lab.schedules.cosine (now fmnist_lab.schedules.onecycle)"),
        ({"trainer.cudnn_benchmark": "False"}, "trainer.benchmark=False (now True)"),
    ],
)  # fmt: skip
def test_an_old_run_with_another_setting_under_its_old_name_is_stale(tmp_path, old, difference):
    client = store_with(tmp_path, {**RECORD["params"], **old})
    cfg = reproduce.run_config("best_50k", 0, None, OVERRIDES, None)
    found = reproduce.recorded(client, "best_50k", cfg, seeds=1)
    assert not found.runs and found.stale[0][1] == [difference]


def test_machine_settings_under_their_old_names_do_not_count(tmp_path):
    """trainer.threads and friends are conf/runtime/ now: how a machine ran, not a recipe."""
    changed = {"trainer.threads": "1", "trainer.compile": "True", "trainer.progress_bar": "True"}
    client = store_with(tmp_path, {**RECORD["params"], **changed})
    cfg = reproduce.run_config("best_50k", 0, None, OVERRIDES, None)
    assert list(reproduce.recorded(client, "best_50k", cfg, seeds=1).runs) == [0]


def test_an_old_config_yaml_reads_as_todays_and_export_finds_its_groups():
    old = yaml.safe_load((DATA / "pre_runtime_config.yaml").read_text())
    assert "cudnn_benchmark" in old["trainer"] and old["scheduler"]["name"] == "onecycle"
    config = tracking.current_config(old)
    assert config["trainer"] == {
        "_target_": "pytorch_lightning.Trainer", "max_epochs": 1, "accelerator": "auto",
        "devices": 1, "precision": "bf16-mixed", "benchmark": True, "deterministic": False,
    }  # fmt: skip
    assert config["runtime"] == {"threads": None, "channels_last": True, "compile": False,
                                 "progress_bar": False, "keep_freed_memory": True}  # fmt: skip
    assert config["scheduler"] == {"_target_": "fmnist_lab.schedules.onecycle",
                                   "_partial_": True, "pct_start": 0.25}  # fmt: skip
    assert config["data"]["_target_"] == "fmnist_lab.data.IdxData"
    # The same config, composed today from best_50k, has exactly these groups and values.
    today = OmegaConf.to_container(
        reproduce.run_config("best_50k", 0, None, OVERRIDES, None), resolve=True
    )
    for group in ("trainer", "scheduler", "optimizer", "augmentation", "model"):
        assert config[group] == today[group], group
    choices = export.group_choices(tracking.drop_machine_keys(config))
    assert choices["trainer"] == "default" and choices["scheduler"] == "onecycle"
    assert choices["data"] == "fashion_mnist" and choices["augmentation"] == "crop_flip_erasing"


# --- metric names before issue 29 -----------------------------------------------------------

NAMES = json.loads((DATA / "pre_names_runs.json").read_text())


def log_old_run(client: MlflowClient, experiment: str, shape: dict, parent: str | None = None):
    tags = {**shape["tags"], **({"mlflow.parentRunId": parent} if parent else {})}
    run_id = client.create_run(experiment, tags=tags, run_name=shape["name"]).info.run_id
    for key, value in shape["params"].items():
        client.log_param(run_id, key, value)
    for key, value in shape["metrics"].items():
        client.log_metric(run_id, key, value)
    client.set_terminated(run_id, "FINISHED")
    return run_id


def test_a_finalist_and_champion_recorded_under_the_old_names_read_as_todays(tmp_path):
    """A finalist logged `test_acc_mean` and its parameter count as a param too, and its
    registered version tagged `test_acc_mean`: report reads them as `test_acc`, and predict's
    description tells the served model's own test accuracy from its finalist's mean."""
    from fmnist_lab import predict
    from fmnist_lab.report.runs import to_row

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("quick", str(tmp_path / "artifacts"))
    finalist_id = log_old_run(client, experiment, NAMES["finalist"])
    seed_ids = [log_old_run(client, experiment, s, finalist_id) for s in NAMES["seeds"]]
    old = NAMES["finalist"]["metrics"]

    row = to_row(client.get_run(finalist_id))
    assert (row.test_acc, row.test_acc_std, row.n_test) == (
        old["test_acc_mean"], old["test_acc_std"], 2)  # fmt: skip
    assert row.params == 8542 and row.val_acc == old["val_acc"]
    assert to_row(client.get_run(seed_ids[0]), named=True).test_acc == (
        NAMES["seeds"][0]["metrics"]["test_acc"])  # fmt: skip

    served = seed_ids[NAMES["version_run_is_seed"]]
    client.create_registered_model("fmnist-fashion_mnist")
    client.create_model_version("fmnist-fashion_mnist", str(tmp_path / "artifacts"), served,
                                tags=NAMES["version_tags"])  # fmt: skip
    mlflow.set_tracking_uri(uri)
    info = predict.describe("models:/fmnist-fashion_mnist/1")
    own = NAMES["seeds"][NAMES["version_run_is_seed"]]["metrics"]["test_acc"]
    assert info["test_acc"] == own and info["finalist_test_acc"] == 0.8597
    line = predict.summary(info)
    assert f"test accuracy {own:.2%}" in line and "its finalist 85.97% +/- 0.40%" in line


def test_old_metric_names_read_as_todays():
    from fmnist_lab.measures import current_metrics

    assert current_metrics({"val_acc_mean": 0.9, "val_acc_std": 0.01, "params": 5.0}) == {
        "val_acc": 0.9, "val_acc_std": 0.01, "params": 5.0}  # fmt: skip
    # Where a run has both (none should), today's name wins.
    assert current_metrics({"test_acc_mean": 0.8, "test_acc": 0.9}) == {"test_acc": 0.9}
