"""The multi-fidelity scheduler on real Fashion-MNIST (slow tier): asynchronous successive
halving with two workers on a journal store, killed with SIGKILL in the middle of a rung and
resumed (three machines sharing a PostgreSQL study and a tracking server run the same sweep in
tests/test_distributed.py, with `check_one_record`). What must hold whatever the timing: each
promotion is decided once (a rung has at most 1/eta of the rung below's results promoted from
it), every finished rung is trained once (one `rung_val_acc` point per trial and rung), a rung
cut short is trained again and finished, no run is left RUNNING, the finalists come from the
top rung, and no checkpoint outlives the search."""

from __future__ import annotations

import math
from collections import Counter

import optuna
import pytest
from mlflow import MlflowClient
from optuna.trial import TrialState

from fmnist_lab.sweep import fidelity
from fmnist_lab.sweep.record import Record

from .conftest import exported_vs_trained, run_cli
from .test_chaos import sweep
from .test_sweep import load, runs_by_role, stores

N_TRIALS = 6
RUNGS = [1, 2, 4]  # min_epochs 1, max_epochs 4, eta 2
FIDELITY = [
    "sweep=quick", "workers=2", f"sweep.budget.n_trials={N_TRIALS}",
    "sweep.space.model.filters.high=16",  # small models: every trial within the budget
    "sweep.fidelity={min_epochs:1,max_epochs:4,eta:2}",
    "sweep.finalists.select=top_k", "sweep.finalists.top_k=1", "sweep.finalists.seeds=1",
    "sweep.finalists.epochs=4", "registry.enabled=false",
    'sweep.finalists.overrides=["data.val_size=0","data.train_fraction=0.02","test=true",'
    '"log_model=false"]',
]  # fmt: skip


@pytest.fixture
def real_sweep(tmp_path, data_root, cache_dir):
    return stores(tmp_path, [f"data.root={data_root}", f"data.cache_dir={cache_dir}"])


def check_one_record(study: optuna.Study, client: MlflowClient, roles: dict[str, list]) -> dict:
    """What every scheduler sweep must leave, however it was run or cut; the rung records."""
    trials = study.get_trials()
    assert [t.number for t in trials] == list(range(N_TRIALS))
    assert all(t.state.is_finished() for t in trials)
    records = {k: v for k, v in Record(study).all().items() if fidelity.parse(k)}
    assert records and all(rec["state"] == "done" for rec in records.values()), records

    # Each promotion decided once, under the lock, by the rule: when it was taken, the trial
    # was within the best floor(n / eta) of the n results its rung had then (asynchronous:
    # later results may rank it lower, so more than n / eta can go on in the end).
    for rec in records.values():
        if "decided" in rec:
            assert rec["decided"]["rank"] < rec["decided"]["results"] // 2, rec
    results = {e: set() for e in RUNGS}
    results[1] = {t.number for t in trials if t.user_attrs.get("rung_epochs") == 1
                  and t.state == TrialState.COMPLETE}  # fmt: skip
    for key in records:
        number, epochs = fidelity.parse(key)
        results[epochs].add(number)
    for lower, upper in zip(RUNGS, RUNGS[1:], strict=False):
        assert results[upper] <= results[lower]
    assert all("decided" in rec for rec in records.values() if rec["attempt"] == 1)

    # Every finished rung trained once: one rung_val_acc point per (trial, rung), in the
    # trial's own run, equal to what the study holds.
    everything = [r for runs in roles.values() for r in runs]
    assert not [r.info.run_name for r in everything if r.info.status == "RUNNING"]
    by_trial = {int(r.data.tags["optuna.trial"]): r for r in roles["trial"]}
    assert sorted(by_trial) == list(range(N_TRIALS))
    for number, run in by_trial.items():
        points = client.get_metric_history(run.info.run_id, "rung_val_acc")
        steps = Counter(p.step for p in points)
        reached = sorted(e for e in RUNGS if number in results[e])
        assert sorted(steps) == reached and set(steps.values()) <= {1}, (number, points)
        for p in points:
            held = (trials[number].user_attrs["val_acc"] if p.step == 1
                    else records[fidelity.key(number, p.step)]["result"]["val_acc"])  # fmt: skip
            assert p.value == held
        # The per-epoch curve: each epoch once, the stable phase up to where the trial's
        # highest rung began to decay (what a continuation goes on from), all of the top rung.
        if reached:
            high = max(reached)
            shown = high if high == RUNGS[-1] else high - max(1, math.ceil(0.2 * high))
            epochs = [p.step for p in client.get_metric_history(run.info.run_id, "val_acc")]
            assert sorted(epochs) == list(range(shown)), (number, epochs)

    # The finalist: the most accurate at the top rung, scored there.
    top = {n: records[fidelity.key(n, 4)]["result"]["val_acc"] for n in results[4]}
    assert top, "no trial reached the top rung"
    (finalist,) = roles["finalist"]
    assert int(finalist.data.tags["optuna.trial"]) == max(top, key=top.get)
    return records


@pytest.mark.slow
def test_two_workers_killed_mid_rung_finish_every_rung_once(real_sweep, capsys):
    tmp_path, uri, args = real_sweep
    for nth in ("first",):  # in the first rung a worker trains on to
        env = {"FMNIST_LAB_FAULT": "rung", "FMNIST_LAB_FAULT_SIGNAL": "SIGKILL"}
        result = sweep(tmp_path, [*FIDELITY, *args], env, base=[])
        assert "fault injection: SIGKILL at rung" in result.stderr, result.stderr[-3000:]
        assert result.returncode == -9
        with capsys.disabled():
            print(f"\n  scheduler: SIGKILL in a rung ({nth} time): exit -9", end="")
    result = sweep(tmp_path, [*FIDELITY, *args], {}, base=[])
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "rung 4ep val_acc" in result.stdout or "rung 2ep val_acc" in result.stdout

    study = load(tmp_path, "quick")
    client = MlflowClient(uri)
    records = check_one_record(study, client, runs_by_role(uri, "quick"))
    # The rung the kill cut (and any the other worker was training) was trained again, from
    # its record, and finished.
    again = [k for k, rec in records.items() if rec["attempt"] > 1]
    assert len(again) >= 1, records
    assert not (tmp_path / "outputs" / "sweeps" / "quick" / "checkpoints").exists()

    # export --chosen, from the trials alone: the top rung's pick, with the config its
    # finalist seed trained (the finalists' length, WSD decay and overrides on the trial's).
    out = tmp_path / "experiment"
    result = run_cli("fmnist_lab.export", "--study", "quick", "--tracking-uri", uri, "--out",
                     str(out), "--chosen", "chosen=1e7", cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    (seed,) = runs_by_role(uri, "quick")["finalist_seed"]
    composed, trained, reference = exported_vs_trained(out, "chosen", seed.info.run_id, uri)
    assert composed == trained and composed["trainer"]["max_epochs"] == 4
    assert reference["params"] == seed.data.metrics["params"] and reference["test_acc"] is None
