"""Shared fixtures: the real datasets in shared/data, configs composed like the CLI does, and
a fresh MLflow store per test."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
SHARED_DATA = Path(os.environ.get("FMNIST_LAB_DATA", REPO.parent / "shared" / "data")).resolve()


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The genuine Fashion-MNIST / MNIST .gz files (shared/data beside the checkout)."""
    if not (SHARED_DATA / "fashion-mnist" / "train-images-idx3-ubyte.gz").is_file():
        pytest.fail(f"the real datasets are required at {SHARED_DATA} (or set FMNIST_LAB_DATA)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def make_cfg(data_root, cache_dir):
    """Compose conf/train.yaml with overrides, as `python -m fmnist_lab.train` would."""

    def make(*overrides: str):
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            return compose(
                "train",
                overrides=[f"data.root={data_root}", f"data.cache_dir={cache_dir}", *overrides],
            )

    return make


@pytest.fixture
def tracking_uri(tmp_path) -> str:
    """A real MLflow SQLite store of this test's own."""
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def run_cli(module: str, *args: str, cwd: Path, env: dict | None = None, timeout: int = 600):
    """Run `python -m <module> args` the way a user would; returns the CompletedProcess."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def default_sigint() -> None:
    """`preexec_fn` for children that a test interrupts: Ctrl-C acts even when the suite
    itself was started with SIGINT ignored (a background job of a non-interactive shell,
    as some CI runners start it), a state children otherwise inherit."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
