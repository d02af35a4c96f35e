"""Shared fixtures: the real datasets in shared/data, configs composed like the CLI does, and
a fresh MLflow store per test."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(cwd: Path, port: int, backend: str, artifacts: Path, *args: str):
    """`python -m fmnist_lab.server` on 127.0.0.1:`port`; returns the process once it answers."""
    server = subprocess.Popen(
        [sys.executable, "-m", "fmnist_lab.server", "--port", str(port),
         "--backend-store-uri", backend, "--artifacts-destination", str(artifacts),
         "--workers", "1", *args],
        cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    wait_for_server(f"http://127.0.0.1:{port}", server)
    return server


def wait_for_server(url: str, proc: subprocess.Popen, timeout: float = 120,
                    path: str = "/health") -> None:  # fmt: skip
    """Until `url + path` answers 2xx; fails at once if `proc` dies meanwhile."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        try:
            with urllib.request.urlopen(f"{url}{path}", timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"{url} never answered")


POSTGRES_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"


@pytest.fixture
def postgres_db():
    """Make fresh databases on the PostgreSQL at 127.0.0.1:5432; each is dropped afterwards.

    Without a server the test skips, except where $FMNIST_LAB_REQUIRE_POSTGRES is set (by
    .ci/run) or $CI: there it fails, so CI cannot pass without the distributed path."""
    import psycopg

    try:
        psycopg.connect(POSTGRES_ADMIN, connect_timeout=5).close()
    except psycopg.OperationalError as err:
        if os.environ.get("FMNIST_LAB_REQUIRE_POSTGRES") or os.environ.get("CI"):
            pytest.fail(f"PostgreSQL at 127.0.0.1:5432 is required here: {err}")
        pytest.skip(f"no PostgreSQL at 127.0.0.1:5432 ({' '.join(str(err).split())[:200]})")
    made = []

    def new() -> str:
        name = f"fmnist_lab_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        made.append(name)
        return f"postgresql://postgres@127.0.0.1:5432/{name}"

    yield new
    with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as conn:
        for name in made:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def postgres_url(postgres_db) -> str:
    """One fresh PostgreSQL database (see postgres_db)."""
    return postgres_db()
