"""Several machines on one study: sweep processes that share a real PostgreSQL storage and log
to a real `mlflow server` (PostgreSQL backend, proxied artifacts), and what happens when a
machine dies or the server restarts. Each process stands for one machine: its own working
directory, nothing shared but the two URLs."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import mlflow
import optuna
import pandas as pd
import pytest
from mlflow import MlflowClient
from mlflow.tracking._tracking_service import utils as tracking_uri_state
from optuna.trial import TrialState

from .conftest import finish, free_port, run_cli, start_server
from .test_scheduler import FIDELITY, check_one_record
from .test_sweep import runs_by_role as roles_of


def wait_for_trial(storage: str, proc: subprocess.Popen | None = None, pgid: int | None = None):
    """Block until a trial (of a worker in process group `pgid`, if given) is RUNNING and
    training (within the quick sweep's 100 k parameter budget, its MLflow run started)."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc is not None:
            assert proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(0.5)
        try:
            trials = optuna.load_study(study_name="quick", storage=storage).get_trials()
        except KeyError:  # not created yet
            continue
        for t in trials:
            if t.state != TrialState.RUNNING or "mlflow_run_id" not in t.user_attrs:
                continue
            if t.user_attrs.get("params", 10**9) > 100_000:  # ends without training
                continue
            pid = int(t.user_attrs["worker"].rsplit(":", 1)[1])
            try:
                if pgid is None or os.getpgid(pid) == pgid:
                    return t
            except ProcessLookupError:
                continue
    pytest.fail("no trial started")


def runs_by_role(client: MlflowClient) -> dict[str, list]:
    exp = client.get_experiment_by_name("quick")
    roles: dict[str, list] = {}
    for run in client.search_runs([exp.experiment_id], max_results=1000):
        roles.setdefault(run.data.tags.get("role"), []).append(run)
    return roles


@pytest.mark.slow
def test_three_machines_share_one_study_and_one_tracking_server(
    tmp_path, postgres_db, machines
):  # fmt: skip
    """Three machines on one PostgreSQL study and one tracking server, searching with the
    multi-fidelity scheduler (tests/test_scheduler.py's sweep): the trials and the promotions
    are shared, each promotion taken once by whichever machine was free."""
    storage, backend = postgres_db(), postgres_db()  # Optuna's and MLflow's databases
    port, artifacts = free_port(), tmp_path / "server-artifacts"
    server = start_server(tmp_path, port, backend, artifacts)
    url = f"http://127.0.0.1:{port}"
    try:
        args = [*FIDELITY[1:], f"storage={storage}", f"tracking.uri={url}", "workers=1",
                "sweep.budget.train_fraction=0.04"]  # fmt: skip
        procs = [machines(f"machine{i}", args) for i in range(3)]
        outputs = [finish(p) for p in procs]

        study = optuna.load_study(study_name="quick", storage=storage)
        trials = study.get_trials()
        assert len({t.user_attrs["worker"] for t in trials}) >= 2  # the work was shared
        client = MlflowClient(url)
        # Exactly N trials, every finished rung trained once, each promotion decided once
        # under the study's lock (PostgreSQL advisory lock), no run RUNNING, the finalist
        # from the top rung; none of it cut, so every rung is a first attempt.
        records = check_one_record(study, client, roles_of(url, "quick"))
        assert all(rec["attempt"] == 1 for rec in records.values()), records
        # One process trained the finalists; the other two waited for it, then printed the
        # same results.
        assert sum("finalist trial" in o for o in outputs) == 1
        assert sum("another process of this study trains its finalists" in o
                   for o in outputs) == 2  # fmt: skip
        tables = {o[o.index("test_acc (mean +/- std)") : o.index("study quick:")] for o in outputs}
        assert len(tables) == 1

        roles = runs_by_role(client)
        assert len(roles["study"]) == 1 and roles["study"][0].info.status == "FINISHED"
        (finalist,) = roles["finalist"]
        (seed,) = roles["finalist_seed"]
        assert seed.data.metrics["test_acc"] > 0.5
        # Artifacts proxied into the server's folder and read back through it.
        assert finalist.info.artifact_uri.startswith("mlflow-artifacts:")
        csv = client.download_artifacts(finalist.info.run_id, "evaluation/confusion_matrix.csv",
                                        str(tmp_path / "downloaded"))  # fmt: skip
        assert pd.read_csv(csv, index_col=0).to_numpy().sum() == 10000
        assert list(artifacts.rglob("confusion_matrix.csv"))
        for i in range(3):  # nothing tracked on the machines themselves, no checkpoint left
            home = tmp_path / f"machine{i}"
            assert not list(home.rglob("confusion_matrix*")) and not (home / "mlruns").exists()
            assert not (home / "outputs" / "sweeps" / "quick" / "checkpoints").exists()
    finally:
        server.terminate()
        server.wait(timeout=60)


@pytest.mark.slow
def test_a_dead_machines_trial_fails_and_the_others_finish(
    tmp_path, postgres_url, machines, cache_dir
):  # fmt: skip
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    MlflowClient(uri).search_experiments()  # the store exists before two processes race
    args = [f"storage={postgres_url}", f"tracking.uri={uri}", "sweep.budget.n_trials=5",
            "sweep.budget.epochs=4", "sweep.budget.train_fraction=0.05", "sweep.finalists.seeds=0",
            "heartbeat.interval_s=1", "heartbeat.grace_s=5"]  # fmt: skip
    doomed = machines("doomed", args)
    survivor = machines("survivor", args)
    victim = wait_for_trial(postgres_url, doomed, pgid=doomed.pid)
    os.killpg(doomed.pid, signal.SIGKILL)  # the machine dies: sweep process and its workers
    doomed.communicate()
    out = finish(survivor)

    trials = {t.number: t for t in optuna.load_study(study_name="quick",
                                                    storage=postgres_url).get_trials()}  # fmt: skip
    assert sorted(trials) == list(range(5))
    assert not [t for t in trials.values() if not t.state.is_finished()]
    assert trials[victim.number].state == TrialState.FAIL
    assert f"trial {victim.number}: FAIL, no heartbeat" in out
    client = MlflowClient(uri)
    run = client.get_run(victim.user_attrs["mlflow_run_id"])
    assert run.info.status == "FAILED" and run.data.tags["optuna.state"] == "FAIL"
    assert "no heartbeat" in run.data.tags["optuna.reason"]
    # The survivor did the rest: every other trial finished, every run ended.
    others = [t for n, t in trials.items() if n != victim.number]
    assert any(t.state == TrialState.COMPLETE for t in others)
    roles = runs_by_role(client)
    assert all(r.info.status != "RUNNING" for runs in roles.values() for r in runs)
    assert len(roles["study"]) == 1 and roles["study"][0].info.status == "FINISHED"


@pytest.mark.slow
def test_tracking_server_restart_mid_sweep_loses_no_finished_trial(
    tmp_path, postgres_db, machines, monkeypatch
):  # fmt: skip
    storage, backend = postgres_db(), postgres_db()
    port, artifacts = free_port(), tmp_path / "server-artifacts"
    server = start_server(tmp_path, port, backend, artifacts)
    url = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)  # MLflow resolves a run's model with it
    # ... unless a URI set in this process by an earlier test takes precedence over it.
    monkeypatch.setattr(tracking_uri_state, "_tracking_uri", None)
    # MLflow's client retries a refused request with exponential backoff: 6 retries at
    # factor 1 wait about a minute in all (MLflow's defaults: about 4 minutes).
    retries = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "6", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}
    args = [f"storage={storage}", f"tracking.uri={url}", "workers=2", "sweep.budget.n_trials=4",
            "sweep.budget.epochs=3", "sweep.budget.train_fraction=0.1", "sweep.finalists.seeds=0",
            "sweep.log_models=true"]  # fmt: skip
    sweep = machines("machine", args, env=retries)
    try:
        victim = wait_for_trial(storage, sweep)
        server.terminate()  # the server goes away mid-trial ...
        server.wait(timeout=60)
        gone = time.time()
        time.sleep(5)
        server = start_server(tmp_path, port, backend, artifacts)  # ... and comes back
        back = time.time()
        finish(sweep)
        client = MlflowClient(url)
        # The trial that was training through the outage kept its run, start to end.
        run = client.get_run(victim.user_attrs["mlflow_run_id"])
        assert run.info.start_time / 1000 < gone and run.info.end_time / 1000 > back
        trials = optuna.load_study(study_name="quick", storage=storage).get_trials()
        assert sorted(t.number for t in trials) == list(range(4))
        roles = runs_by_role(client)
        by_number = {int(r.data.tags["optuna.trial"]): r for r in roles["trial"]}
        assert sorted(by_number) == list(range(4))
        for t in trials:
            run = by_number[t.number]
            assert run.data.tags["optuna.state"] == t.state.name
            if t.state == TrialState.COMPLETE:  # every finished trial has its whole run
                assert run.info.status == "FINISHED"
                assert run.data.metrics["val_acc"] == pytest.approx(t.values[0])
                assert len(client.get_metric_history(run.info.run_id, "val_acc")) == 3
                assert [a.path for a in client.list_artifacts(run.info.run_id, "model")]
        assert any(t.state == TrialState.COMPLETE for t in trials)
    finally:
        server.terminate()
        server.wait(timeout=60)


@pytest.mark.slow
def test_unreachable_server_stops_a_sweep_at_once_and_records_nothing(
    tmp_path, postgres_url, data_root
):  # fmt: skip
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    start = time.monotonic()
    result = run_cli("fmnist_lab.sweep", "sweep=quick", f"storage={postgres_url}",
                     f"tracking.uri={url}", f"data.root={data_root}", cwd=tmp_path)  # fmt: skip
    assert result.returncode == 2 and time.monotonic() - start < 30
    assert result.stderr.strip() == (
        f"error: the MLflow tracking server at {url} does not answer ([Errno 111] Connection "
        f"refused); start it (python -m fmnist_lab.server) or fix tracking.uri / "
        f"MLFLOW_TRACKING_URI"
    )
    assert optuna.get_all_study_names(storage=postgres_url) == []  # no study begun


@pytest.mark.slow
def test_heartbeat_longer_than_its_grace_period_is_refused(tmp_path, postgres_url, data_root):
    result = run_cli("fmnist_lab.sweep", "sweep=quick", f"storage={postgres_url}",
                     f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}", f"data.root={data_root}",
                     "heartbeat.interval_s=60", "heartbeat.grace_s=30", cwd=tmp_path)  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "error: heartbeat.interval_s=60 must be below heartbeat.grace_s=30"
    )
    assert not (tmp_path / "mlflow.db").exists()  # refused before anything was recorded


def test_the_process_that_loses_the_experiment_creation_race_still_logs_into_it(
    tmp_path, monkeypatch
):  # fmt: skip
    """MLflow's set_experiment, when another process creates the experiment between its
    lookup and its create, returns it without making it active: runs would land in
    "Default" and the study's other machines could not resume their parent run."""
    from mlflow.tracking._tracking_service.client import TrackingServiceClient

    from fmnist_lab import tracking

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    created = MlflowClient(uri).create_experiment("quick")  # by "another machine"
    lookup = TrackingServiceClient.get_experiment_by_name
    calls = []

    def first_lookup_misses(self, name):
        calls.append(name)
        return None if len(calls) == 1 else lookup(self, name)

    monkeypatch.setattr(TrackingServiceClient, "get_experiment_by_name", first_lookup_misses)
    tracking.configure(uri, "quick")
    monkeypatch.setattr(TrackingServiceClient, "get_experiment_by_name", lookup)
    with mlflow.start_run() as run:
        pass
    assert len(calls) >= 2 and run.info.experiment_id == created
