"""The study's record of work after the search, the fault-injection points and the registry's
choice rule, on a real in-memory Optuna study (fast tier). The whole story, killed in every
phase, is tests/test_chaos.py."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import optuna
import pytest

from fmnist_lab import registry
from fmnist_lab.errors import UserError
from fmnist_lab.sweep import faults
from fmnist_lab.sweep.record import HOST, INTERRUPTED, Record, gone, owner


@pytest.fixture
def record() -> Record:
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    return Record(optuna.create_study())


def test_work_is_running_then_done_with_its_run(record):
    record.start("rerank:2ep:t3")
    started = record.get("rerank:2ep:t3")
    assert started | {"owner": None, "since": None} == {
        "state": "running", "owner": None, "attempt": 1, "run_id": None, "reason": None,
        "result": None, "since": None, "beat": None,
    }  # fmt: skip
    assert abs(started["since"] - time.time()) < 60
    assert record.get("rerank:2ep:t3")["owner"] == owner()
    assert record.done("rerank:2ep:t3") is None
    record.finish("rerank:2ep:t3", {"val_acc": 0.9}, "run-1")
    assert record.done("rerank:2ep:t3") == {"val_acc": 0.9}
    assert record.get("rerank:2ep:t3")["run_id"] == "run-1"
    assert list(record.all()) == ["rerank:2ep:t3"]


def test_an_attempt_cut_short_is_stopped_with_its_reason_and_counted(record):
    with pytest.raises(KeyboardInterrupt), record.attempt("finalist:t1:2x1ep"):
        raise KeyboardInterrupt
    assert record.get("finalist:t1:2x1ep")["state"] == "stopped"
    assert record.get("finalist:t1:2x1ep")["reason"] == INTERRUPTED
    with pytest.raises(RuntimeError), record.attempt("finalist:t1:2x1ep"):
        raise RuntimeError("out of memory")
    assert record.get("finalist:t1:2x1ep")["reason"] == "RuntimeError: out of memory"
    with record.attempt("finalist:t1:2x1ep"):
        record.finish("finalist:t1:2x1ep", {"test_accs": [0.9]}, "run-3")
    assert record.get("finalist:t1:2x1ep")["attempt"] == 3
    assert record.done("finalist:t1:2x1ep") == {"test_accs": [0.9]}


def test_a_rerank_score_kept_the_old_way_counts_as_done(record):
    record.study.set_user_attr("rerank:20ep:t7", 0.91)
    record.study.set_user_attr("mlflow_parent_run_id", "abc")  # not work
    assert record.done("rerank:20ep:t7") == {"val_acc": 0.91}
    assert list(record.all()) == ["rerank:20ep:t7"]


def test_a_process_is_gone_only_when_it_ran_here_and_ended():
    proc = subprocess.Popen(["true"])
    proc.wait()
    assert gone(f"{HOST}:{proc.pid}")
    assert not gone(owner())
    assert not gone(f"another-machine:{proc.pid}")  # left to heartbeats
    assert not gone(None)


@pytest.fixture
def ctrl_c():
    """Python's own Ctrl-C handler, also where pytest runs with SIGINT ignored (as a
    background job of a shell does)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_a_fault_point_signals_the_real_process_the_nth_time(monkeypatch, capfd, ctrl_c):
    monkeypatch.setenv(faults.FAULT_ENV, "rerank:2")
    monkeypatch.setenv(faults.SIGNAL_ENV, "SIGINT")
    monkeypatch.setattr(faults, "_reached", faults.Counter())
    faults.point("trial")  # another phase
    faults.point("rerank")  # the first time
    with pytest.raises(KeyboardInterrupt):
        faults.point("rerank")
        os.sched_yield()  # the signal is handled at the next bytecode at the latest
    assert "fault injection: SIGINT at rerank" in capfd.readouterr().err
    assert faults.callbacks("trial") == [] and len(faults.callbacks("rerank")) == 1


@pytest.mark.parametrize(
    ("fault", "signame"),
    [("rernak", "SIGKILL"), ("trial:0", "SIGKILL"), ("trial:x", "SIGKILL"), ("trial", "SIGTERM")],
)
def test_a_misspelt_fault_is_refused(monkeypatch, fault, signame):
    monkeypatch.setenv(faults.FAULT_ENV, fault)
    monkeypatch.setenv(faults.SIGNAL_ENV, signame)
    with pytest.raises(UserError, match="must be"):
        faults.check()


def test_choosing_the_champion_on_the_test_set_must_say_so():
    assert registry.check_select_by("val_acc") is None
    assert registry.check_select_by("test_acc_mean_on_test_set") is None
    assert "chose the champion on the test set" in registry.check_select_by("test_acc_mean")
    assert "must be one of" in registry.check_select_by("accuracy")
    tags = registry.selection_tags("test_acc_mean_on_test_set", 0.9, "fashion_mnist test set")
    assert tags["selection_split"] == "test" and tags["selected_by"] == "test_acc_mean_on_test_set"
