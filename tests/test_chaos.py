"""The chaos test (docs/run_state.md): a real sweep on the real data (two workers, a journal
store, a SQLite MLflow store, small models) is killed once in each phase, by SIGKILL and, in
a second run, by SIGINT, and resumed after each. At the end the study and MLflow tell one
story: exactly N trials, one FINISHED run per finished piece of work, none RUNNING, one
parent run, one registry version.

The kills come from the sweep's fault-injection points (FMNIST_LAB_FAULT), since rerank, a
seed and registration are too short to hit from outside; the signal is real and goes to the
sweep's real main process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest
from mlflow import MlflowClient
from optuna.trial import TrialState

from fmnist_lab.sweep.record import Record

from .conftest import default_sigint
from .test_sweep import load, runs_by_role, stores

N_TRIALS = 6
# Each phase once, in the order a sweep meets them; the seed is the second one trained, so
# that a finalist killed after a finished seed is exercised.
PHASES = ("startup", "trial", "rerank", "finalist_seed:2", "registration")
# Ctrl-C in the phases where stopping cleanly has work to do (a trial, a rerank and a seed
# training, each ended KILLED and recorded stopped); SIGKILL covers start-up and registration.
INTERRUPTED = ("trial", "rerank", "finalist_seed:2")
SWEEP = [
    "sweep=quick", "workers=2", f"sweep.budget.n_trials={N_TRIALS}", "sweep.budget.epochs=1",
    "sweep.space.model.filters.high=16",  # small models: every trial within the budget
    "sweep.finalists.select=budgets", "+sweep.finalists.budgets=[5000,100000]",
    "sweep.finalists.rerank=1", "sweep.finalists.seeds=2", "sweep.finalists.epochs=1",
    # 3,000 training images for a finalist's seed and a rerank, not 60,000: the mechanics
    # are the point, on the real images.
    'sweep.finalists.overrides=["data.val_size=0","data.train_fraction=0.05","test=true",'
    '"log_model=true"]',
    'sweep.finalists.rerank_overrides=["data.train_fraction=0.05","test=false",'
    '"log_model=false","seed=0"]',
]  # fmt: skip


@pytest.fixture
def real_sweep(tmp_path, data_root, cache_dir):
    return stores(tmp_path, [f"data.root={data_root}", f"data.cache_dir={cache_dir}"])


def sweep(tmp_path, args: list[str], env: dict[str, str],
          base: list[str] = SWEEP) -> subprocess.CompletedProcess:  # fmt: skip
    """Run the sweep (`base`, then `args`) in its own process group; once it has exited, wait
    until none of its worker processes is left either."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "fmnist_lab.sweep", *base, *args], cwd=tmp_path, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **env}, preexec_fn=default_sigint,
    )  # fmt: skip
    try:
        out, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        pytest.fail("worker processes outlived their sweep")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.mark.slow
@pytest.mark.parametrize("signame", ["SIGKILL", "SIGINT"])
def test_a_sweep_killed_in_every_phase_ends_with_one_record(real_sweep, signame, capsys):
    tmp_path, uri, args = real_sweep
    killed = -signal.SIGKILL if signame == "SIGKILL" else 130
    phases = PHASES if signame == "SIGKILL" else INTERRUPTED
    for phase in phases:
        env = {"FMNIST_LAB_FAULT": phase, "FMNIST_LAB_FAULT_SIGNAL": signame}
        result = sweep(tmp_path, args, env)
        hit = f"fault injection: {signame} at {phase.partition(':')[0]}"
        assert hit in result.stderr, result.stdout[-2000:] + result.stderr[-3000:]
        assert result.returncode == killed, result.stderr[-3000:]
        with capsys.disabled():
            print(f"\n  chaos: {signame} at {phase}: exit {result.returncode}", end="")
    result = sweep(tmp_path, args, {})
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    with capsys.disabled():
        print(f"\n  chaos: resumed after {len(phases)} kills: exit 0", end="")

    # Exactly N trials, all finished; the one the kill cut ended FAIL and counts.
    study = load(tmp_path, "quick")
    trials = study.get_trials()
    assert [t.number for t in trials] == list(range(N_TRIALS))
    assert all(t.state.is_finished() for t in trials)
    reason = "interrupted (Ctrl-C)" if signame == "SIGINT" else "worker process died"
    assert any(t.state == TrialState.FAIL and reason in t.user_attrs["reason"] for t in trials)

    # None RUNNING; one parent run, FINISHED.
    client = MlflowClient(uri)
    roles = runs_by_role(uri, "quick")
    everything = [r for runs in roles.values() for r in runs]
    assert not [r.info.run_name for r in everything if r.info.status == "RUNNING"]
    assert [r.info.status for r in roles["study"]] == ["FINISHED"]

    # One run per trial, in the state its trial says.
    runs = Counter(r.data.tags["optuna.trial"] for r in roles["trial"])
    assert runs == Counter(str(t.number) for t in trials)
    for run in roles["trial"]:
        trial = trials[int(run.data.tags["optuna.trial"])]
        assert run.data.tags["optuna.state"] == trial.state.name
        finished = trial.state in (TrialState.COMPLETE, TrialState.PRUNED)
        assert (run.info.status == "FINISHED") == finished, run.info.run_name

    # Every piece of work after the search is done, by exactly one FINISHED run: the one the
    # study records. The attempts the kills cut ended KILLED (SIGINT) or FAILED (SIGKILL).
    records = Record(study).all()
    assert records and all(rec["state"] == "done" for rec in records.values()), records
    by_work: dict[str, list] = {}
    for run in everything:
        if "work" in run.data.tags:
            by_work.setdefault(run.data.tags["work"], []).append(run)
    assert set(by_work) == {k for k in records if k != "registration"}
    cut = "KILLED" if signame == "SIGINT" else "FAILED"
    for key, work_runs in by_work.items():
        finished = [r for r in work_runs if r.info.status == "FINISHED"]
        assert [r.info.run_id for r in finished] == [records[key]["run_id"]], key
        assert all(r.info.status == cut for r in work_runs if r not in finished), key
    for role in ("rerank", "finalist", "finalist_seed"):  # each phase was cut once
        assert any(r.info.status == cut for r in roles[role]), role
    # A finalist cut after its first seed took that seed's run, not a second one.
    finalists = {r.info.run_id for r in roles["finalist"] if r.info.status == "FINISHED"}
    for seed in roles["finalist_seed"]:
        if seed.info.status == "FINISHED":
            assert seed.data.tags["mlflow.parentRunId"] in finalists

    # One registry version, the alias on it, chosen on validation.
    versions = client.search_model_versions("name = 'fmnist-fashion_mnist'")
    assert len(versions) == 1
    champion = client.get_model_version_by_alias("fmnist-fashion_mnist", "champion")
    assert champion.version == versions[0].version
    assert champion.tags["selected_by"] == "val_acc"
    assert champion.tags["finalist_run"] in finalists
