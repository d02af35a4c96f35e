"""Runs recorded by earlier code still count: a run's params and config.yaml as the code before
conf/runtime/ and the `_target_` schedules and datasets wrote them (captured from a real run of
`reproduce best_50k` at commit 69be181, tests/data/pre_runtime_*), read by today's reproduce,
export and tta through tracking.current_names / current_config."""

from __future__ import annotations

import json
from pathlib import Path

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
