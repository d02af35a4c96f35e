"""Real training runs, read back from a real MLflow store: on the real data where a run's
accuracy is asserted (slow), on small generated data where only the mechanics are."""

from __future__ import annotations

import json
import math
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import pytorch_lightning as pl
import torch
import yaml
from mlflow import MlflowClient
from PIL import Image

from fmnist_lab import ui
from fmnist_lab.data import load_splits
from fmnist_lab.evaluate import class_metric_names
from fmnist_lab.models import build_model
from fmnist_lab.train import resolve_precision, scaled_lr, train

from .conftest import CONF, default_sigint, run_cli

# A small CNN on 4,400 real training images for 3 epochs.
SHORT_RUN = [
    "model=convnet", "data.train_fraction=0.08", "data.val_size=2000",
    "trainer.max_epochs=3", "runtime.progress_bar=false",
]  # fmt: skip
MIN_VAL_ACC = 0.82  # what this run must reach on the 2,000 validation images


def runs_in(uri: str, experiment: str = "fmnist_lab") -> list:
    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    return client.search_runs([found.experiment_id]) if found else []


def only_run(uri: str):
    runs = runs_in(uri)
    assert len(runs) == 1
    return runs[0]


@pytest.fixture(scope="module")
def short_run(tmp_path_factory, data_root, cache_dir):
    """The CLI as a user runs it, in an empty folder, with MLflow's default local store."""
    tmp_path = tmp_path_factory.mktemp("short_run")
    env = {"FMNIST_LAB_DATA": str(data_root), "FMNIST_LAB_CACHE": str(cache_dir)}
    result = run_cli("fmnist_lab.train", *SHORT_RUN, cwd=tmp_path,
                     env={**env, "MLFLOW_TRACKING_URI": ""})  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"  # MLflow's default, in the working directory
    mlflow.set_tracking_uri(uri)
    return result, only_run(uri), MlflowClient(uri)


@pytest.mark.slow
def test_short_run_learns_and_records_everything(short_run, make_real_cfg):
    result, run, client = short_run
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "convnet-422k"
    metrics, params, tags = run.data.metrics, run.data.params, run.data.tags
    assert metrics["val_acc"] >= MIN_VAL_ACC
    assert metrics["test_acc"] >= MIN_VAL_ACC - 0.03
    assert f"val_acc {metrics['val_acc']:.4f}" in result.stdout

    # The resolved config, flattened, and the parameter count as a metric only.
    assert params["model.filters"] == "[32, 64]" and params["data.train_fraction"] == "0.08"
    assert params["optimizer._target_"] == "torch.optim.AdamW" and params["seed"] == "0"
    assert metrics["params"] == 421738 and "params" not in params
    assert metrics["params_log10"] == round(math.log10(421738), 3)
    assert tags["dataset"] == "fashion_mnist" and tags["model"] == "convnet"
    assert params["trainer.precision"] == "auto" and tags["precision"] == "32-true"  # a CPU
    assert len(tags["git_commit"]) in (40, len("unknown"))

    # One value per epoch for the training curves; test metrics once.
    for key in ("train_loss", "train_acc", "val_loss", "val_acc"):
        history = client.get_metric_history(run.info.run_id, key)
        assert [m.step for m in history] == [0, 1, 2], key
    losses = [m.value for m in client.get_metric_history(run.info.run_id, "train_loss")]
    assert losses[2] < losses[0]
    assert len(client.get_metric_history(run.info.run_id, "test_acc")) == 1
    assert metrics["train_time_s"] > 0
    # Accuracies are logged to what their split resolves (2,000 validation and 10,000 test
    # images, 4,640 training images: 4 decimals), not float32 noise; losses: 4 significant digits.
    for key in ("val_acc", "train_acc", "test_acc"):
        values = [m.value for m in client.get_metric_history(run.info.run_id, key)]
        assert all(v == round(v, 4) for v in values), key
    assert all(float(f"{m.value:.4g}") == m.value
               for m in client.get_metric_history(run.info.run_id, "val_loss"))  # fmt: skip

    # The data it saw, as MLflow dataset inputs: one per split, the files' MD5s behind it.
    inputs = {i.tags[0].value: i.dataset for i in client.get_run(run.info.run_id).inputs
              .dataset_inputs}  # fmt: skip
    assert set(inputs) == {"training", "validation", "test"}
    assert {d.name for d in inputs.values()} == {"fashion_mnist"}
    assert len({d.digest for d in inputs.values()}) == 3
    profiles = {context: json.loads(d.profile) for context, d in inputs.items()}
    assert profiles["validation"]["num_rows"] == 2000 and profiles["test"]["num_rows"] == 10000
    assert profiles["training"]["num_rows"] == round(0.08 * 58000)
    assert profiles["test"]["files"]["t10k-images-idx3-ubyte"] == "8181f5470baa50b63fa0f6fddb340f0a"

    # The resolved config YAML is an artifact and matches the params.
    config_path = client.download_artifacts(run.info.run_id, "config.yaml")
    with open(config_path) as f:
        config = yaml.safe_load(f)
    assert config["model"]["filters"] == [32, 64] and config["trainer"]["max_epochs"] == 3

    # The model loads through pyfunc, by its model URI and by the run, and predicts like the
    # trained net: on real test images it is as accurate as the logged test accuracy says.
    model = mlflow.pyfunc.load_model(tags["model_uri"])
    assert model.metadata.signature is not None
    assert model.metadata.get_input_schema().inputs[0].shape == (-1, 1, 28, 28)
    splits = load_splits(make_real_cfg("data.val_size=2000").data)
    x = (splits.test_x.float() / 255).numpy()
    probs = model.predict(x)
    assert probs.shape == (10000, 10)
    np.testing.assert_allclose(probs.sum(1), 1, rtol=1e-5)
    accuracy = (probs.argmax(1) == splits.test_y.numpy()).mean()
    assert accuracy == pytest.approx(metrics["test_acc"], abs=1e-4)
    by_run = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/model")
    np.testing.assert_allclose(by_run.predict(x[:16]), probs[:16], rtol=1e-5, atol=1e-6)
    # 0..255 pixels are refused, not answered with confident nonsense.
    with pytest.raises(Exception, match=r"pixel values must be floats in 0\.\.1"):
        model.predict(x[:2] * 255)


@pytest.mark.slow
def test_experiment_is_ready_for_the_mlflow_ui(short_run):
    _, run, client = short_run
    tags = client.get_experiment(run.info.experiment_id).tags
    assert tags["mlflow.experimentKind"] == "custom_model_development"
    view = json.loads(tags[ui.VIEW_TAG])
    state = json.loads(view["state"])
    scatters = [(c["xaxis"]["key"], c["yaxis"]["key"])
                for c in state["compareRunCharts"] if c["type"] == "SCATTER"]  # fmt: skip
    assert ("params_log10", "val_acc") in scatters and ("params_log10", "test_acc") in scatters
    assert "metrics.`params`" in state["selectedColumns"]


@pytest.mark.slow
def test_tested_run_logs_its_evaluation(short_run, make_real_cfg):
    _, run, client = short_run
    run_id, metrics = run.info.run_id, run.data.metrics
    folder = Path(client.download_artifacts(run_id, "evaluation"))
    classes = load_splits(make_real_cfg("data.val_size=2000").data).classes

    # The confusion matrix covers the 10,000 test images; its diagonal is the test accuracy.
    cm = pd.read_csv(folder / "confusion_matrix.csv", index_col=0)
    assert list(cm.index) == list(cm.columns) == classes
    assert cm.to_numpy().sum() == 10000
    assert np.trace(cm.to_numpy()) / 10000 == pytest.approx(metrics["test_acc"], abs=1e-4)

    # Per-class metrics agree with the matrix, in the CSV and as MLflow metrics.
    counts = cm.to_numpy().astype(float)
    table = pd.read_csv(folder / "per_class.csv")
    for i, name in enumerate(class_metric_names(classes)):
        precision = counts[i, i] / counts[:, i].sum()
        recall = counts[i, i] / counts[i].sum()
        assert table.loc[i, "precision"] == pytest.approx(precision)
        assert table.loc[i, "recall"] == pytest.approx(recall)
        assert table.loc[i, "miss_rate"] == pytest.approx(1 - recall)
        assert table.loc[i, "f1"] == pytest.approx(2 * precision * recall / (precision + recall))
        # As MLflow metrics, to 4 significant digits (fmnist_lab/measures.py).
        assert metrics[f"test_recall/{name}"] == float(f"{recall:.4g}")
        assert metrics[f"test_precision/{name}"] == float(f"{precision:.4g}")
        assert metrics[f"test_miss_rate/{name}"] == pytest.approx(1 - recall, abs=5e-5)
    assert "test_f1/6_shirt" in metrics and "test_recall/0_tshirt_top" in metrics

    # The most confident mistakes: 25, all wrong, most confident first.
    mistakes = pd.read_csv(folder / "confident_mistakes.csv")
    assert len(mistakes) == 25 and (mistakes["true"] != mistakes["predicted"]).all()
    assert mistakes["probability"].is_monotonic_decreasing
    assert (mistakes["true_class"] == [classes[i] for i in mistakes["true"]]).all()

    # Learning curves: the per-epoch metrics MLflow holds.
    curves = pd.read_csv(folder / "learning_curves.csv")
    assert list(curves["epoch"]) == [0, 1, 2]
    for key in ("train_loss", "train_acc", "val_loss", "val_acc"):
        logged = [m.value for m in client.get_metric_history(run_id, key)]
        np.testing.assert_allclose(curves[key], logged, rtol=1e-6)

    # Sample predictions with their top-3 probabilities, highest first.
    samples = json.loads((folder / "sample_predictions.json").read_text())
    assert len(samples) == 20
    for s in samples:
        assert len(s["top3"]) == 3 and s["probabilities"] == sorted(s["probabilities"])[::-1]
        assert s["true_class"] == classes[s["true"]]

    # Each plot is a PNG of the size it is drawn at, with real content on it.
    sizes = {"confusion_matrix": (1600, 700), "confident_mistakes": (1200, 1350),
             "sample_predictions": (1300, 1440), "learning_curves": (1200, 450)}  # fmt: skip
    for name, size in sizes.items():
        assert_real_png(folder / f"{name}.png", size)


def assert_real_png(path: Path, size: tuple[int, int]) -> None:
    """A valid PNG of `size` (width, height) that is not blank."""
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.size == size, path
        pixels = np.asarray(image.convert("L"), dtype=float)
    values, counts = np.unique(pixels, return_counts=True)
    background = values[counts.argmax()]
    assert pixels.std() > 10 and (pixels != background).mean() > 0.02, f"{path} looks blank"


def test_same_seed_same_run(make_cfg, tracking_uri):
    overrides = ["model=convnet_20k", "data.train_fraction=0.03", "data.val_size=500",
                 "trainer.max_epochs=1", "runtime.progress_bar=false", "test=false",
                 "log_model=false", f"tracking.uri={tracking_uri}"]  # fmt: skip
    first = train(make_cfg(*overrides, "seed=7"))
    second = train(make_cfg(*overrides, "seed=7"))
    other = train(make_cfg(*overrides, "seed=8"))
    assert first.metrics["val_loss"] == second.metrics["val_loss"]
    assert first.metrics["val_loss"] != other.metrics["val_loss"]
    assert "test_acc" not in first.metrics and first.model_uri is None


@pytest.mark.slow
def test_augmented_run_with_schedule_and_mnist(make_real_cfg, tracking_uri):
    cfg = make_real_cfg("data=mnist", "model=convnet_20k", "augmentation=crop",
                   "optimizer=sgd", "scheduler=cosine", "label_smoothing=0.1",
                   "data.train_fraction=0.05", "data.val_size=1000", "trainer.max_epochs=2",
                   "runtime.progress_bar=false", "log_model=false",
                   f"tracking.uri={tracking_uri}")  # fmt: skip
    result = train(cfg)
    assert result.metrics["val_acc"] > 0.85
    run = MlflowClient(tracking_uri).get_run(result.run_id)
    assert run.data.tags["dataset"] == "mnist"
    assert run.data.params["augmentation.crop_padding"] == "2"


@pytest.mark.slow  # a training run of the CLI
def test_diverging_run_ends_failed_with_the_reason(tmp_path, small_data):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = run_cli(
        "fmnist_lab.train", "model=convnet_20k", "optimizer=sgd", "optimizer.lr=1e30",
        "data.train_fraction=0.02", "trainer.max_epochs=2", "runtime.progress_bar=false",
        *small_data.cfg_overrides(), f"tracking.uri={uri}", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: training diverged")
    run = only_run(uri)
    assert run.info.status == "FAILED"
    assert "not finite" in run.data.tags["failure_reason"]


@pytest.mark.slow  # a training run of the CLI
def test_ctrl_c_ends_the_run_killed_with_exit_130(tmp_path, small_data):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    client.search_experiments()  # creates the store now, not in a race with the child
    proc = subprocess.Popen(
        [sys.executable, "-m", "fmnist_lab.train", "model=convnet_20k",
         "data.val_size=1000", "trainer.max_epochs=200", "runtime.progress_bar=false",
         *small_data.cfg_overrides(), f"tracking.uri={uri}"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"}, preexec_fn=default_sigint,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # wait until an epoch has been recorded
            time.sleep(0.5)
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            runs = runs_in(uri)
            if runs and client.get_metric_history(runs[0].info.run_id, "val_acc"):
                break
        else:
            pytest.fail("the run never logged an epoch")
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr[-3000:]
    run = client.get_run(runs[0].info.run_id)
    assert run.info.status == "KILLED"
    assert run.data.tags["failure_reason"] == "interrupted (Ctrl-C)"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.filters=[4,4,4,4,4,4]", "model 'convnet' cannot be built: 6 poolings shrink "
         "a 28x28 image below 1x1; at most 4 fit"),
        ("lr_scaling.rule=cubic", "lr_scaling.rule=cubic: must be 'none', 'linear' or 'sqrt'"),
    ],
)  # fmt: skip
def test_bad_config_exits_2_before_recording(tmp_path, small_data, override, message):
    result = run_cli("fmnist_lab.train", override, *small_data.cfg_overrides(),
                     cwd=tmp_path)  # fmt: skip
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [f"error: {message}"]
    assert not (tmp_path / "mlflow.db").exists()


@pytest.mark.parametrize(("rule", "factor"), [("none", 1.0), ("linear", 4.0), ("sqrt", 2.0)])
def test_lr_scaling_follows_the_batch_size(make_cfg, rule, factor):
    cfg = make_cfg("optimizer=sgd", "data.batch_size=512", f"lr_scaling.rule={rule}")
    assert scaled_lr(cfg) == pytest.approx(0.01 * factor)
    at_base = make_cfg("optimizer=sgd", f"lr_scaling.rule={rule}")  # batch 128 = the base
    assert scaled_lr(at_base) == pytest.approx(0.01)


class FirstStepLR(pl.Callback):
    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if batch_idx == 0:
            self.lr, self.batch = trainer.optimizers[0].param_groups[0]["lr"], len(batch[1])


def test_large_batch_run_trains_at_the_scaled_rate(make_cfg, tracking_uri):
    cfg = make_cfg("model=convnet_20k", "optimizer=sgd", "scheduler=none",
                   "data.batch_size=512", "lr_scaling.rule=linear", "data.val_size=500",
                   "trainer.max_epochs=1", "runtime.progress_bar=false", "test=false",
                   "log_model=false", f"tracking.uri={tracking_uri}")  # fmt: skip
    seen = FirstStepLR()
    result = train(cfg, callbacks=[seen])
    assert (seen.batch, seen.lr) == (512, pytest.approx(0.04))
    params = MlflowClient(tracking_uri).get_run(result.run_id).data.params
    assert float(params["lr_effective"]) == pytest.approx(0.04)
    assert params["optimizer.lr"] == "0.01" and params["lr_scaling.rule"] == "linear"


@pytest.mark.parametrize("experiment", sorted(p.stem for p in (CONF / "experiment").glob("*.yaml")))
def test_reference_recipes_compose(make_cfg, experiment):
    cfg = make_cfg(f"experiment={experiment}")
    net = build_model(cfg.model)
    with torch.no_grad():
        assert net.eval()(torch.rand(1, 1, 28, 28)).shape == (1, 10)
    assert cfg.trainer.max_epochs >= 3


def test_r2_recipe_is_sgd_002_for_30_epochs(make_cfg):
    cfg = make_cfg("experiment=r2_mlp")
    assert cfg.model.name == "mlp_r2" and cfg.optimizer._target_ == "torch.optim.SGD"
    assert cfg.optimizer.lr == 0.02 and cfg.trainer.max_epochs == 30


def test_precision_auto_means_bf16_only_on_a_gpu_that_has_it():
    expected = "32-true"
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        expected = "bf16-mixed"
    assert resolve_precision("auto", "auto") == expected
    assert resolve_precision("auto", "cpu") == "32-true"
    assert resolve_precision("16-mixed", "gpu") == "16-mixed"  # an explicit choice stands


# Allocates and frees 64 MB tensors (a large CNN's activations) and prints the page faults
# that took; argv[1] == "keep" applies keep_freed_memory() first.
FAULTS = """
import resource, sys, torch
from fmnist_lab.train import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(6):  # the heap settles after a few rounds
    torch.ones(2**24)
before = faults()
for _ in range(20):
    torch.ones(2**24)
print(faults() - before)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="a setting of glibc's malloc")
def test_kept_memory_is_not_faulted_in_again_at_every_step(make_cfg):
    # glibc's own malloc, as configured by nothing but the code under test
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MALLOC_", "GLIBC_TUNABLES", "LD_PRELOAD"))}  # fmt: skip
    counts = {}
    for mode in ("keep", "default"):
        out = subprocess.run([sys.executable, "-c", FAULTS, mode], capture_output=True,
                             text=True, check=True, env=env)  # fmt: skip
        counts[mode] = int(out.stdout.split()[-1])
    # By default each free unmaps the block and each allocation faults 64 MB in again (16,384
    # pages of 4 kB; 32 of 2 MB where huge pages are always on); kept, the same memory is
    # reused and nothing is faulted in (measured: 0 against 327,700).
    assert counts["default"] >= 20 * 30, counts
    assert counts["keep"] <= counts["default"] / 100, counts
    assert make_cfg().runtime.keep_freed_memory is True  # every training applies it
