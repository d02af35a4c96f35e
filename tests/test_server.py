"""`python -m fmnist_lab.server`: a real MLflow tracking server with proxied artifacts; a
real training run logs to it over HTTP and is read back through it."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pandas as pd
from mlflow import MlflowClient

from .conftest import run_cli
from .test_report import free_port


def wait_for(url: str, proc: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"{url} never answered")


def test_runs_log_through_the_server_with_proxied_artifacts(tmp_path, data_root, cache_dir):
    port = free_port()
    store, artifacts = tmp_path / "server" / "mlflow.db", tmp_path / "server" / "artifacts"
    store.parent.mkdir()
    server = subprocess.Popen(
        [sys.executable, "-m", "fmnist_lab.server", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{store}", "--artifacts-destination", str(artifacts),
         "--workers", "1"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(url, server)
        client_dir = tmp_path / "client"  # a client with no path to the server's files
        client_dir.mkdir()
        result = run_cli(
            "fmnist_lab.train", f"tracking.uri={url}", f"data.root={data_root}",
            f"data.cache_dir={cache_dir}", "data.train_fraction=0.02", "data.val_size=500",
            "trainer.max_epochs=1", "model.filters=[8,16]", "trainer.progress_bar=false",
            cwd=client_dir,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]

        client = MlflowClient(url)
        (run,) = client.search_runs([client.get_experiment_by_name("fmnist_lab").experiment_id])
        assert run.info.status == "FINISHED" and run.info.artifact_uri.startswith(
            "mlflow-artifacts:"
        )  # proxied: the run names the server, not a path
        assert run.data.metrics["val_acc"] > 0.3 and "test_acc" in run.data.metrics
        assert len(client.get_metric_history(run.info.run_id, "val_acc")) == 1
        paths = {a.path for a in client.list_artifacts(run.info.run_id, "evaluation")}
        assert "evaluation/confusion_matrix.png" in paths
        local = client.download_artifacts(run.info.run_id, "evaluation/confusion_matrix.csv",
                                          str(tmp_path))  # fmt: skip
        assert pd.read_csv(local, index_col=0).to_numpy().sum() == 10000
        # The bytes live where the server keeps artifacts, and nowhere on the client's side.
        assert list(artifacts.rglob("confusion_matrix.png"))
        assert not list(client_dir.rglob("confusion_matrix.png"))
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_unreachable_server_is_one_clear_error_within_seconds(tmp_path, data_root):
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    start = time.monotonic()
    result = run_cli("fmnist_lab.train", f"tracking.uri={url}", f"data.root={data_root}",
                     cwd=tmp_path)  # fmt: skip
    assert result.returncode == 2 and time.monotonic() - start < 30
    assert f"tracking server at {url} does not answer" in result.stderr
    assert result.stderr.strip().count("\n") == 0


def test_server_refuses_a_port_in_use(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        result = run_cli("fmnist_lab.server", "--port", str(port), cwd=tmp_path, timeout=60)
    assert result.returncode == 2 and f"cannot serve on 127.0.0.1:{port}" in result.stderr
    assert not (Path(tmp_path) / "mlflow.db").exists()
