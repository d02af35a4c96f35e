"""`python -m fmnist_lab.server`: a real MLflow tracking server with proxied artifacts; a
real training run logs to it over HTTP and is read back through it."""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
from mlflow import MlflowClient

from fmnist_lab import server as server_cli
from fmnist_lab import tracking
from fmnist_lab.errors import UserError

from .conftest import free_port, run_cli, wait_for_server


@pytest.mark.slow
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
        wait_for_server(url, server)
        client_dir = tmp_path / "client"  # a client with no path to the server's files
        client_dir.mkdir()
        result = run_cli(
            "fmnist_lab.train", f"tracking.uri={url}", f"data.root={data_root}",
            f"data.cache_dir={cache_dir}", "data.train_fraction=0.02", "data.val_size=500",
            "trainer.max_epochs=1", "model.filters=[8,16]", "runtime.progress_bar=false",
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


def test_unreachable_server_is_one_clear_error_within_seconds(tmp_path, small_data):
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    start = time.monotonic()
    result = run_cli("fmnist_lab.train", f"tracking.uri={url}", *small_data.cfg_overrides(),
                     cwd=tmp_path)  # fmt: skip
    assert result.returncode == 2 and time.monotonic() - start < 30
    assert f"tracking server at {url} does not answer" in result.stderr
    assert result.stderr.strip().count("\n") == 0


@pytest.mark.slow
def test_a_sweep_worker_waits_out_a_server_that_is_restarting(tmp_path, monkeypatch):
    """A sweep checks the server once and fails at once; its workers, started after that
    check, wait for a server that went away (a restart) as long as MLflow's client would."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    start = time.monotonic()
    with pytest.raises(UserError, match=f"tracking server at {url} does not answer"):
        tracking.check_server(url)  # the sweep's own check: no patience
    assert time.monotonic() - start < 5
    start = time.monotonic()
    with pytest.raises(UserError, match="does not answer"):
        tracking.check_server(url, patience_s=3)  # patience runs out: the same one sentence
    assert 3 <= time.monotonic() - start < 10

    server = subprocess.Popen(
        [sys.executable, "-m", "fmnist_lab.server", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
         "--artifacts-destination", str(tmp_path / "artifacts")],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        start = time.monotonic()
        tracking.check_server(url, patience_s=120)  # refused while the server starts ...
        assert time.monotonic() - start > 0.5 and server.poll() is None  # ... then it answers
    finally:
        server.terminate()
        server.wait(timeout=30)

    # The workers' patience is MLflow's own retry window: urllib3 waits 0, 2f, 4f, ... s.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "6")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    assert tracking.retry_window_s() == 2 + 4 + 8 + 16 + 32
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "9")
    assert tracking.retry_window_s() == 2 + 4 + 8 + 16 + 32 + 64 + 120 + 120  # 120 s at most


def test_server_refuses_a_port_in_use(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        result = run_cli("fmnist_lab.server", "--port", str(port), cwd=tmp_path, timeout=60)
    assert result.returncode == 2 and f"cannot serve on 127.0.0.1:{port}" in result.stderr
    assert not (Path(tmp_path) / "mlflow.db").exists()


def test_basic_auth_is_one_flag_or_one_setting(monkeypatch):
    monkeypatch.delenv(server_cli.AUTH_ENV, raising=False)
    assert not server_cli.parse_args([]).basic_auth
    assert server_cli.parse_args(["--basic-auth"]).basic_auth
    monkeypatch.setenv(server_cli.AUTH_ENV, "true")  # as docker-compose.yml sets it
    assert server_cli.parse_args([]).basic_auth


@pytest.mark.slow
def test_basic_auth_refuses_requests_without_credentials(tmp_path, monkeypatch):
    port = free_port()
    # Switched on as docker-compose.yml does it: the one setting in the environment.
    env = {**os.environ, "MLFLOW_AUTH_ADMIN_PASSWORD": "s3cret-for-tests",
           server_cli.AUTH_ENV: "true"}  # fmt: skip
    server = subprocess.Popen(
        [sys.executable, "-m", "fmnist_lab.server", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--workers", "1"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    search = f"{url}/api/2.0/mlflow/experiments/search?max_results=10"
    try:
        wait_for_server(url, server)
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(search, timeout=10)
        assert refused.value.code == 401
        wrong = urllib.request.Request(search, headers={"Authorization": basic("admin", "nope")})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(wrong, timeout=10)
        assert refused.value.code == 401
        right = urllib.request.Request(
            search, headers={"Authorization": basic("admin", "s3cret-for-tests")}
        )
        with urllib.request.urlopen(right, timeout=10) as reply:
            assert reply.status == 200 and "experiments" in json.load(reply)
        # MLflow's own client, with the credentials in its environment variables.
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "s3cret-for-tests")
        experiment_id = MlflowClient(url).create_experiment("with_auth")
        assert MlflowClient(url).get_experiment(experiment_id).name == "with_auth"
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_basic_auth_needs_the_admin_password(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_AUTH_ADMIN_PASSWORD", raising=False)
    result = run_cli("fmnist_lab.server", "--port", str(free_port()), "--basic-auth",
                     cwd=tmp_path, timeout=60)  # fmt: skip
    assert result.returncode == 2 and "MLFLOW_AUTH_ADMIN_PASSWORD" in result.stderr


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.mark.slow  # four real processes racing
def test_processes_starting_at_once_on_a_new_sqlite_store_all_get_it(tmp_path):
    """Seeds trained side by side (`reproduce --only-seeds`) on a store no process has made
    yet: each first contact would create MLflow's tables, and two creating them at once failed
    with 'duplicate column name'. All four processes, released at the same moment, must get
    the store and the one experiment."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    go = tmp_path / "go"
    script = (
        "import pathlib, sys, time\n"
        "from fmnist_lab import tracking\n"
        "pathlib.Path(sys.argv[1]).touch()\n"
        f"while not pathlib.Path({str(go)!r}).exists(): time.sleep(0.01)\n"
        f"tracking.configure({uri!r}, 'side_by_side')\n"
    )
    ready = [tmp_path / f"ready{i}" for i in range(4)]
    procs = [
        subprocess.Popen([sys.executable, "-c", script, str(r)], stderr=subprocess.PIPE, text=True)
        for r in ready
    ]
    deadline = time.monotonic() + 120
    while not all(r.exists() for r in ready) and time.monotonic() < deadline:
        time.sleep(0.05)
    go.touch()
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, "\n".join(e[-600:] for e in errors)
    names = [e.name for e in MlflowClient(uri).search_experiments()]
    assert names.count("side_by_side") == 1
