"""Stores that cannot be used: the MLflow store and the study storage as a file where a folder
should be, a damaged file, a read-only folder. Each is one sentence and exit 2, before anything
is recorded; a sweep whose tracking store is broken leaves no study behind."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from fmnist_lab.errors import UserError
from fmnist_lab.storage import open_storage
from fmnist_lab.tracking import check_local_store

from .conftest import REPO, run_cli


def test_an_mlflow_store_under_a_file_is_refused(tmp_path):
    (tmp_path / "afile").write_text("not a folder")
    with pytest.raises(UserError, match="afile is a file, not a folder"):
        check_local_store(f"sqlite:///{tmp_path / 'afile' / 'sub' / 'mlflow.db'}")
    with pytest.raises(UserError, match="afile is a file, not a folder"):
        check_local_store(str(tmp_path / "afile" / "mlruns"))  # a folder store


def test_a_damaged_sqlite_store_is_refused_and_a_good_one_is_not(tmp_path):
    damaged = tmp_path / "mlflow.db"
    damaged.write_bytes(b"this was a database once" * 100)
    with pytest.raises(UserError, match="is not an SQLite database"):
        check_local_store(f"sqlite:///{damaged}")
    good = tmp_path / "good.db"
    sqlite3.connect(good).execute("create table t (x)").connection.close()
    check_local_store(f"sqlite:///{good}")
    check_local_store(f"sqlite:///{tmp_path / 'new' / 'mlflow.db'}")  # to be made: fine
    (tmp_path / "empty.db").touch()  # SQLite takes an empty file as a new database
    check_local_store(f"sqlite:///{tmp_path / 'empty.db'}")


def test_a_broken_journal_is_refused(tmp_path):
    (tmp_path / "afile").write_text("not a folder")
    with pytest.raises(UserError, match="cannot be opened"):
        open_storage(f"journal:{tmp_path / 'afile' / 'optuna.journal'}")
    damaged = tmp_path / "optuna.journal"
    damaged.write_bytes(b'{"op_code": 0, "worker_id": "x", "study_name": ' + bytes(range(200)))
    with pytest.raises(UserError, match="cannot be opened"):
        open_storage(f"journal:{damaged}")
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"no database here" * 64)
    with pytest.raises(UserError, match="cannot be opened"):
        open_storage(f"sqlite:///{garbage}")


@pytest.mark.slow  # two command starts
def test_a_sweep_with_a_broken_tracking_store_leaves_no_study(tmp_path, small_data):
    store = tmp_path / "mlflow.db"
    store.write_bytes(b"damaged" * 1000)
    for verb, args in (("fmnist_lab.train", []), ("fmnist_lab.sweep", ["sweep=quick"])):
        result = run_cli(verb, *args, f"tracking.uri=sqlite:///{store}",
                         *small_data.cfg_overrides(), cwd=tmp_path)  # fmt: skip
        assert result.returncode == 2, result.stderr[-2000:]
        (line,) = result.stderr.strip().splitlines()
        assert "is not an SQLite database" in line
    assert store.read_bytes() == b"damaged" * 1000
    assert not (tmp_path / "outputs" / "sweeps" / "quick" / "optuna.journal").exists()
    # A study storage under a file: one sentence too, and no MLflow run is made.
    (tmp_path / "afile").write_text("not a folder")
    journal = tmp_path / "afile" / "optuna.journal"
    result = run_cli(
        "fmnist_lab.sweep", "sweep=quick", f"tracking.uri=sqlite:///{store}2",
        f"storage=journal:{journal}", *small_data.cfg_overrides(), cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-2000:]
    (line,) = result.stderr.strip().splitlines()
    assert "cannot be opened" in line and "afile" in line, line


@pytest.mark.slow  # a command start, as another user
def test_a_read_only_store_folder_is_one_sentence(small_data):
    """The command runs as a user who may not write the store's folder (root may write any:
    as root, the test runs it as `nobody`)."""
    base = Path(tempfile.mkdtemp(prefix="fmnist-ro-"))
    try:
        readonly, home = base / "store", base / "home"
        readonly.mkdir()
        cache = base / "cache"
        shutil.copytree(small_data.cache, cache)
        for path in (cache, *cache.rglob("*")):  # the data cache is the user's own
            path.chmod(0o777 if path.is_dir() else 0o666)
        fonts = home / ".cache" / "matplotlib"  # matplotlib's font list, not built again
        if (Path.home() / ".cache" / "matplotlib").is_dir():
            shutil.copytree(Path.home() / ".cache" / "matplotlib", fonts, dirs_exist_ok=True)
        fonts.mkdir(parents=True, exist_ok=True)
        for path in (home, *home.rglob("*")):
            path.chmod(0o777 if path.is_dir() else 0o666)
        base.chmod(0o755)
        as_other = []
        if os.geteuid() == 0:
            as_other = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
        else:
            readonly.chmod(0o555)
        result = subprocess.run(
            [*as_other, sys.executable, "-m", "fmnist_lab.train",
             f"tracking.uri=sqlite:///{readonly / 'mlflow.db'}", "data.root=null",
             f"data.cache_dir={cache}", "hydra.run.dir=.", "hydra.output_subdir=null"],
            cwd=home, capture_output=True, text=True, timeout=300,
            env={**os.environ, "HOME": str(home), "PYTHONPATH": str(REPO)},
        )  # fmt: skip
        assert result.returncode == 2, result.stderr[-2000:]
        (line,) = result.stderr.strip().splitlines()
        assert "cannot be written" in line and "read-only" in line, line
        assert list(readonly.iterdir()) == []
    finally:
        shutil.rmtree(base)
