"""Shared fixtures: the datasets (small generated ones for the fast tier, the real ones in
shared/data for the slow tier), configs composed like the CLI does, a fresh MLflow store per
test, and two checks on the suite itself: a fast test never reaches the real data, and no test
leaves files in the working tree."""

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
from hypothesis import settings as hypothesis_settings

from .small_data import SmallData
from .small_data import write as write_small_data

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
SHARED_DATA = Path(os.environ.get("FMNIST_LAB_DATA", REPO.parent / "shared" / "data")).resolve()

# Property-based tests keep no example database in the working tree: each run draws afresh.
hypothesis_settings.register_profile("suite", database=None)
hypothesis_settings.load_profile("suite")

# Fixtures that reach the real datasets: only tests marked slow may use them.
REAL_DATA_FIXTURES = ("data_root",)


def pytest_collection_modifyitems(config, items) -> None:
    unmarked = [
        item.nodeid
        for item in items
        if item.get_closest_marker("slow") is None
        and any(name in item.fixturenames for name in REAL_DATA_FIXTURES)
    ]
    if unmarked:
        raise pytest.UsageError(
            "these tests use the real datasets (fixture data_root) but are not marked slow: "
            + ", ".join(unmarked)
        )


# --- the working tree: no test leaves a file in it -----------------------------------------

# Caches and the environment, which running anything creates; everything else that appears
# in the working tree during the suite fails it.
TREE_IGNORED = (".venv", ".pytest_cache", ".ruff_cache", ".mypy_cache", "*.egg-info",
                "**/__pycache__", ".hypothesis")  # fmt: skip
TREE_KEY = pytest.StashKey[set | None]()
LEFT_KEY = pytest.StashKey[list]()


def working_tree() -> set[str] | None:
    """`git status` of the checkout, untracked and ignored files one by one; None without git."""
    excludes = [f":(exclude,glob){pattern}" for pattern in TREE_IGNORED]
    excludes += [f":(exclude,glob){pattern}/**" for pattern in TREE_IGNORED]
    try:
        result = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=all", "--ignored", "--", ".",
             *excludes],
            cwd=REPO, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return None
    return set(result.stdout.splitlines()) if result.returncode == 0 else None


def pytest_sessionstart(session) -> None:
    session.config.stash[TREE_KEY] = working_tree()


def pytest_sessionfinish(session, exitstatus) -> None:
    before = session.config.stash.get(TREE_KEY, None)
    after = working_tree()
    if before is None or after is None:
        return
    new = sorted(after - before)
    session.config.stash[LEFT_KEY] = new
    if new:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    new = config.stash.get(LEFT_KEY, [])
    if new:
        terminalreporter.write_sep("=", "working tree changed: the run fails", red=True)
        terminalreporter.write_line(
            f"the suite left {len(new)} new or changed files in {REPO} "
            "(a test must write only under its tmp_path):"
        )
        for line in new[:50]:
            terminalreporter.write_line(f"  {line}")
        if len(new) > 50:
            terminalreporter.write_line(f"  ... and {len(new) - 50} more")


# --- environment, data and configs ---------------------------------------------------------


@pytest.fixture(scope="session", autouse=True)
def hermetic_environment(tmp_path_factory):
    """No test finds a dataset through the caller's $FMNIST_LAB_DATA, nor writes into the
    caller's cache: a test that wants data names it (data_root, small_data)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("FMNIST_LAB_DATA", raising=False)
        mp.setenv("FMNIST_LAB_CACHE", str(tmp_path_factory.mktemp("default-cache")))
        yield


@pytest.fixture(autouse=True)
def in_tmp_path(tmp_path, monkeypatch):
    """Every test runs in its own empty folder, as a user in a new one: what the code writes
    relative to the working directory (MLflow's default artifact root ./mlruns beside a
    SQLite store, outputs/) lands there, not in the checkout."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The genuine Fashion-MNIST / MNIST .gz files (shared/data beside the checkout); slow
    tests only (a fast test that asks for it is refused at collection)."""
    if not (SHARED_DATA / "fashion-mnist" / "train-images-idx3-ubyte.gz").is_file():
        pytest.fail(f"the real datasets are required at {SHARED_DATA} (or set FMNIST_LAB_DATA)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """torchvision's cache for the real datasets, shared by the slow tests."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def small_data(tmp_path_factory) -> SmallData:
    """Small generated Fashion-MNIST / MNIST (6,000 + 1,000 images each) and Kaggle CSVs;
    see tests/small_data.py."""
    return write_small_data(tmp_path_factory.mktemp("small-data"))


@pytest.fixture
def small_env(small_data) -> dict[str, str]:
    """Environment for a CLI that should load the small generated data."""
    return {"FMNIST_LAB_CACHE": str(small_data.cache)}


def composer(*fixed: str):
    def make(*overrides: str):
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            return compose("train", overrides=[*fixed, *overrides])

    return make


@pytest.fixture
def make_cfg(small_data):
    """Compose conf/train.yaml with overrides, as `python -m fmnist_lab.train` would, on the
    small generated data."""
    return composer(*small_data.cfg_overrides())


@pytest.fixture
def make_real_cfg(data_root, cache_dir):
    """Compose conf/train.yaml with overrides on the real datasets (slow tests)."""
    return composer(f"data.root={data_root}", f"data.cache_dir={cache_dir}")


@pytest.fixture
def tracking_uri(tmp_path) -> str:
    """A real MLflow SQLite store of this test's own (its artifacts in ./mlruns, which is
    this test's tmp_path: see in_tmp_path)."""
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


CHROMIUM = "/usr/bin/chromium"


def playwright_or_skip():
    """Playwright's sync API for the browser tests, with Debian's Chromium at CHROMIUM; a skip
    where either is missing, a failure where $FMNIST_LAB_REQUIRE_BROWSER is set (.ci/run)."""
    try:
        from playwright import sync_api
    except ImportError:
        sync_api = None
    if sync_api is None or not Path(CHROMIUM).exists():
        missing = f"{CHROMIUM} (apt-get install chromium) and Playwright (the dev extra)"
        if os.environ.get("FMNIST_LAB_REQUIRE_BROWSER"):
            pytest.fail(f"the browser test needs {missing}")
        pytest.skip(f"the browser test needs {missing}")
    return sync_api


@pytest.fixture
def machines(tmp_path, data_root, cache_dir):
    """Start `python -m fmnist_lab.sweep` as machine `name` (own directory, own session)."""
    procs: list[subprocess.Popen] = []

    def start(name: str, args: list[str], env: dict | None = None) -> subprocess.Popen:
        home = tmp_path / name
        home.mkdir(exist_ok=True)
        proc = subprocess.Popen(
            [sys.executable, "-m", "fmnist_lab.sweep", "sweep=quick", f"data.root={data_root}",
             f"data.cache_dir={cache_dir}", "data.val_size=1000", *args],
            cwd=home, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}, start_new_session=True,
        )  # fmt: skip
        procs.append(proc)
        return proc

    yield start
    for proc in procs:  # a failed test leaves no process behind
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()


def finish(proc: subprocess.Popen, timeout: float = 600) -> str:
    """Wait for a sweep to exit 0; return what it printed (stdout, then stderr)."""
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"{out[-2000:]}\n{err[-3000:]}"
    return out + err


def exported_vs_trained(folder: Path, name: str, run_id: str, uri: str) -> tuple[dict, dict, dict]:
    """Experiment `name` written into `folder` by `export`, composed as `train experiment=NAME`
    composes it (without its `reference:`), the config run `run_id` trained with, both less
    the machine's keys, and the reference."""
    import mlflow
    from omegaconf import OmegaConf

    from fmnist_lab import export, tracking

    with initialize_config_dir(config_dir=str(export.CONF), version_base="1.3"):
        cfg = compose("train", overrides=[f"hydra.searchpath=[file://{folder.parent}]",
                                          f"experiment={name}"])  # fmt: skip
    composed = OmegaConf.to_container(cfg, resolve=True)
    reference = composed.pop("reference")
    mlflow.set_tracking_uri(uri)  # runs:/ URIs, whichever test ran before
    recorded = mlflow.artifacts.load_text(f"runs:/{run_id}/config.yaml")
    original = OmegaConf.to_container(OmegaConf.create(recorded), resolve=True)
    return tracking.drop_machine_keys(composed), tracking.drop_machine_keys(original), reference
