"""A sweep's search timed from a cold start of its command, per number of workers: trials
per hour."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
import uuid

import optuna
from optuna.storages.journal import JournalFileBackend, JournalStorage

from fmnist_lab.errors import UserError
from fmnist_lab.storage import redact


def bench_sweep(name: str, workers: int, storage: str | None = None, n_trials: int | None = None,
                overrides: list[str] | None = None) -> tuple[int, float]:  # fmt: skip
    """Run sweep `name` (search only, no finalists; `overrides`: more Hydra overrides) in a
    scratch folder under a fresh study name, on `storage` (else a journal file there):
    (trials, seconds). A study made in a shared database is deleted again afterwards."""
    study_name = f"bench-{name}-w{workers}-{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "fmnist_lab.sweep", f"sweep={name}", f"workers={workers}",
             f"study_name={study_name}", "sweep.finalists.seeds=0",
             f"tracking.uri=sqlite:///{tmp}/mlflow.db", *([f"storage={storage}"] * bool(storage)),
             *([f"sweep.budget.n_trials={n_trials}"] * bool(n_trials)), *(overrides or [])],
            cwd=tmp, capture_output=True, text=True,
        )  # fmt: skip
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise UserError(f"the sweep with workers={workers} failed: {last}")
        seconds = time.perf_counter() - start
        journal = f"{tmp}/outputs/sweeps/{study_name}/optuna.journal"
        backend = storage or JournalStorage(JournalFileBackend(journal))
        trials = len(optuna.load_study(study_name=study_name, storage=backend).trials)
        if storage:
            optuna.delete_study(study_name=study_name, storage=storage)
        return trials, seconds


def print_sweep(name: str, workers: list[int], storage: str | None, n_trials: int | None,
                overrides: list[str]) -> None:  # fmt: skip
    """Sweep `name`'s search with each number of `workers`: its trials per hour."""
    where = redact(storage) if storage else "a journal file"
    print(f"\nsweep '{name}' (search only, from a cold start of the command; "
          f"storage: {where}):")  # fmt: skip
    for n in workers:
        trials, seconds = bench_sweep(name, n, storage, n_trials, overrides)
        print(f"  workers={n}: {trials} trials in {seconds:.0f} s = "
              f"{trials / seconds * 3600:.0f} trials/hour")  # fmt: skip
