"""A long training survives a stop (fmnist_lab/resume.py): `train` killed at an epoch and run
again goes on from its last epoch checkpoint in the same MLflow run and ends with the weights
of a training that was never stopped (fp32, CPU); a sweep's finalist seed does the same. On the
small generated data; the kills are real signals from outside, at whatever step the process
is in once a checkpoint exists."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import torch
from mlflow import MlflowClient

from fmnist_lab import resume

from .conftest import default_sigint, run_cli

EPOCHS = 3
TRAIN = [
    f"trainer.max_epochs={EPOCHS}", "trainer.precision=32-true", "runtime.threads=1",
    "runtime.progress_bar=false", "model.dropout=0.2", "augmentation=crop_flip",
    "data.train_fraction=0.4", "data.val_size=500", "evaluate=false",
]  # fmt: skip


def start(module: str, args: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", module, *args], cwd=cwd, text=True, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, start_new_session=True, preexec_fn=default_sigint,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip


def kill_once_saved(proc: subprocess.Popen, folder: Path, signame: str) -> None:
    """Signal the process once it has saved a checkpoint of an epoch under `folder` (a new
    one: a file there before it started does not count)."""
    before = {p: p.stat().st_mtime_ns for p in folder.rglob("*.ckpt")}
    deadline = time.monotonic() + 300
    while not [p for p in folder.rglob("*.ckpt") if before.get(p) != p.stat().st_mtime_ns]:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "no checkpoint was saved"
        time.sleep(0.05)
    os.killpg(proc.pid, getattr(signal, signame))
    proc.communicate(timeout=120)


def model_weights(run_id: str) -> dict[str, torch.Tensor]:
    return mlflow.pytorch.load_model(f"runs:/{run_id}/model", map_location="cpu").state_dict()


def test_a_killed_training_resumes_from_its_last_epoch_to_the_same_weights(
    small_data, tmp_path, tracking_uri
):  # fmt: skip
    common = [*small_data.cfg_overrides(), *TRAIN, f"tracking.uri={tracking_uri}"]
    straight = run_cli("fmnist_lab.train", *common, "tracking.experiment=straight",
                       cwd=tmp_path)  # fmt: skip
    assert straight.returncode == 0, straight.stderr[-3000:]

    # Killed (its run left RUNNING), resumed and interrupted by Ctrl-C (its run KILLED), each
    # once it had saved an epoch; then resumed to the end.
    args = [*common, "tracking.experiment=killed"]
    for signame in ("SIGKILL", "SIGINT"):
        kill_once_saved(start("fmnist_lab.train", args, tmp_path), tmp_path / "outputs", signame)
    again = run_cli("fmnist_lab.train", *args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "from its last epoch checkpoint" in again.stdout, again.stdout

    client = MlflowClient(tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("killed").experiment_id])
    (ref,) = client.search_runs([client.get_experiment_by_name("straight").experiment_id])
    assert run.info.status == "FINISHED" and "failure_reason" not in run.data.tags
    assert run.data.tags["resumed"] == "2"
    assert run.data.tags[resume.KEY_TAG] != ref.data.tags[resume.KEY_TAG]  # another store key
    # Each epoch logged once, with the uninterrupted run's values; the same weights.
    for key in ("val_acc", "train_loss"):
        points, expected = (sorted((p.step, p.value) for p in client.get_metric_history(r, key))
                            for r in (run.info.run_id, ref.info.run_id))  # fmt: skip
        assert points == expected and len(points) == EPOCHS, key
    assert run.data.metrics["test_acc"] == ref.data.metrics["test_acc"]
    mlflow.set_tracking_uri(tracking_uri)
    a, b = model_weights(run.info.run_id), model_weights(ref.info.run_id)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not list((tmp_path / "outputs" / "checkpoints").glob("*.ckpt*"))  # removed at the end


def test_only_a_killed_processes_run_is_resumed_and_the_newest_wins(tracking_uri):
    mlflow.set_tracking_uri(tracking_uri)
    client = MlflowClient(tracking_uri)
    exp = client.create_experiment("e")
    tags = {resume.KEY_TAG: "k"}
    failed = client.create_run(exp, tags=tags)  # an error (say, a diverged loss): not resumed
    client.set_terminated(failed.info.run_id, "FAILED")
    assert resume.unfinished("e", "k") is None
    older = client.create_run(exp, tags=tags, start_time=1)
    client.set_terminated(older.info.run_id, "KILLED")
    newer = client.create_run(exp, tags=tags, start_time=2)  # RUNNING: its process was killed
    client.create_run(exp, tags={resume.KEY_TAG: "other"})
    assert resume.unfinished("e", "k") == newer.info.run_id
    superseded = client.get_run(older.info.run_id)
    assert superseded.info.status == "FAILED" and "superseded" in superseded.data.tags[
        "failure_reason"]  # fmt: skip
    assert resume.unfinished("e", "nothing") is None and resume.unfinished("none", "k") is None


def test_a_finalist_seed_killed_mid_training_resumes_in_its_own_run(small_data, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = ["sweep=quick", *small_data.cfg_overrides(), f"tracking.uri={uri}", "workers=1",
            "sweep.budget.n_trials=2", "sweep.budget.epochs=1", "sweep.finalists.select=top_k",
            "sweep.finalists.top_k=1", "sweep.finalists.seeds=1", "sweep.finalists.epochs=4",
            "registry.enabled=false", "runtime.threads=1",
            'sweep.finalists.overrides=["data.val_size=0","data.train_fraction=0.5",'
            '"test=true","log_model=false","evaluate=false"]']  # fmt: skip
    folder = tmp_path / "outputs" / "sweeps" / "quick" / "checkpoints" / "finalists"
    kill_once_saved(start("fmnist_lab.sweep", args, tmp_path), folder, "SIGKILL")
    result = run_cli("fmnist_lab.sweep", *args, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("quick")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    assert not [r.info.run_name for r in runs if r.info.status == "RUNNING"]
    (seed,) = [r for r in runs if r.data.tags.get("role") == "finalist_seed"]
    assert seed.info.status == "FINISHED" and seed.data.tags["resumed"] == "1"
    steps = [p.step for p in client.get_metric_history(seed.info.run_id, "train_loss")]
    assert sorted(steps) == list(range(4))  # each epoch once: the killed attempt's and the rest
    finalists = [r for r in runs if r.data.tags.get("role") == "finalist"]
    finished = [r for r in finalists if r.info.status == "FINISHED"]
    assert len(finished) == 1 and len(finalists) == 2  # the cut attempt's run, and the new one
    assert seed.data.tags["mlflow.parentRunId"] == finished[0].info.run_id
    assert not folder.parent.exists()  # no checkpoint outlives the sweep


def test_a_refused_training_records_nothing_by_looking_for_one_to_resume(small_data, tmp_path):
    # The lookup for a killed attempt reads the store only if it exists: a model that cannot
    # be built is refused after it, and there is still no store at all.
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = run_cli("fmnist_lab.train", *small_data.cfg_overrides(), f"tracking.uri={uri}",
                     "model.filters=[58,8]", "model.residual=true", "model.shortcut=pad",
                     cwd=tmp_path)  # fmt: skip
    assert result.returncode == 2, result.stderr[-2000:]
    assert len(result.stderr.strip().splitlines()) == 1 and "cannot be built" in result.stderr
    assert not (tmp_path / "mlflow.db").exists()


def test_the_resume_key_ignores_how_and_what_a_recipe_scored_not_what_it_trains(tracking_uri):
    """A recipe's `reference:` (its test figure, filled in while its seeds still train) and
    `runtime` leave the key as it is; the model, the seed or the store change it."""
    from omegaconf import OmegaConf

    from fmnist_lab.reproduce import run_config

    def key(*overrides: str, uri: str = tracking_uri) -> str:
        return resume.key(run_config("search_10k_cpu", 0, None, overrides, uri))

    cfg = run_config("search_10k_cpu", 0, None, [], tracking_uri)
    assert "reference" in cfg  # the recipe has the block the key must not see
    base = key()
    scored = run_config("search_10k_cpu", 0, None, [], tracking_uri)
    OmegaConf.set_struct(scored, False)
    scored.reference.test_acc = 0.9
    assert resume.key(scored) == base
    assert key("runtime.threads=2", "runtime.progress_bar=true") == base
    assert key("model.dropout=0.3") != base
    assert resume.key(run_config("search_10k_cpu", 1, None, [], tracking_uri)) != base
    assert key(uri=tracking_uri + "-other") != base
