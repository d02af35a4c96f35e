"""MLflow: where runs go, what each run records, and how a run always ends in a final state."""

from __future__ import annotations

import copy
import fcntl
import gc
import math
import os
import subprocess
import time
import traceback
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
from mlflow.environment_variables import (
    MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR,
    MLFLOW_HTTP_REQUEST_MAX_RETRIES,
)
from mlflow.exceptions import MlflowException
from omegaconf import DictConfig, OmegaConf

import fmnist_lab
from fmnist_lab import ui
from fmnist_lab.errors import UserError

if TYPE_CHECKING:
    import torch

PACKAGE_DIR = Path(fmnist_lab.__file__).resolve().parent


def configure(uri: str | None, experiment: str, patience_s: float = 0.0) -> None:
    """Point MLflow at `uri` (else $MLFLOW_TRACKING_URI, else MLflow's default) and `experiment`;
    a tracking server that does not answer is asked again for up to `patience_s` seconds."""
    if uri:
        mlflow.set_tracking_uri(uri)
    check_server(mlflow.get_tracking_uri(), patience_s=patience_s)
    check_local_store(mlflow.get_tracking_uri())
    try:
        with first_contact(mlflow.get_tracking_uri()):
            found = mlflow.set_experiment(experiment)
        # When another process creates the experiment at the same moment, MLflow returns it
        # without making it the active one, and new runs would land in "Default".
        mlflow.set_experiment(experiment_id=found.experiment_id)
        if ui.VIEW_TAG not in found.tags:
            try:
                ui.prepare(found.experiment_id)
            except MlflowException:
                # Machines tagging a new experiment at the same moment: a PostgreSQL store
                # refuses the second insert of a tag; setting it again updates it.
                time.sleep(0.5)
                ui.prepare(found.experiment_id)
    except MlflowException as err:
        raise UserError(
            f"MLflow tracking at {mlflow.get_tracking_uri()} refused experiment "
            f"'{experiment}': {err.message}"
        ) from None
    except Exception as err:  # the store's own error (SQLAlchemy, a file system): one line
        reason = " ".join(str(err).split())[:300]
        raise UserError(f"the MLflow store {mlflow.get_tracking_uri()} cannot be used: "
                        f"{reason}") from None  # fmt: skip


SQLITE_MAGIC = b"SQLite format 3\x00"


def check_local_store(uri: str) -> None:
    """A store on this machine (a SQLite file, or a folder of runs) must be one this process
    can write, and a SQLite file one SQLite wrote: one sentence before MLflow touches it."""
    if uri.startswith("sqlite:///"):
        database: Path | None = Path(uri.removeprefix("sqlite:///"))
        folder = _existing_ancestor(database.parent)
    elif "://" not in uri or uri.startswith("file://"):
        database, folder = None, _existing_ancestor(Path(uri.removeprefix("file://")))
    else:
        return  # a server or a database elsewhere: its own errors
    if not folder.is_dir():
        raise UserError(
            f"the MLflow store {uri} cannot be made: {folder} is a file, not a folder; fix "
            f"tracking.uri"
        )
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UserError(
            f"the MLflow store {uri} cannot be written: the folder {folder} is read-only; fix "
            f"its permissions or choose another tracking.uri"
        )
    if database is not None and database.is_file() and database.stat().st_size:
        if not os.access(database, os.R_OK | os.W_OK):
            raise UserError(f"the MLflow store {database} is read-only; fix its permissions")
        with open(database, "rb") as f:
            if f.read(16) != SQLITE_MAGIC:
                raise UserError(
                    f"the MLflow store {database} is not an SQLite database (damaged, or another "
                    f"kind of file); move it away or fix tracking.uri"
                )


def _existing_ancestor(path: Path) -> Path:
    """`path`, or the nearest folder above it that exists (where a new store would be made)."""
    path = path.expanduser().absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


@contextmanager
def first_contact(uri: str) -> Iterator[None]:
    """Hold an exclusive lock on a SQLite store's folder while this process first opens it.

    MLflow creates and migrates a SQLite store's tables on first use, and processes doing so
    at the same moment (seeds trained side by side on a new store) fail on each other's
    tables; after the first, opening finds them and changes nothing."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    folder = Path(uri.removeprefix("sqlite:///")).resolve().parent
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the last descriptor releases the lock


def check_server(uri: str, timeout_s: float = 5.0, patience_s: float = 0.0) -> None:
    """Fail in one sentence when a tracking server does not answer, at once by default: MLflow's
    own client would retry for minutes before the first run could even start."""
    if not uri.startswith(("http://", "https://")):
        return
    give_up = time.monotonic() + patience_s
    while True:
        try:
            with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout_s):
                return
        except urllib.error.HTTPError as err:
            if err.code in (401, 403):  # it answers; credentials are MLflow's business
                return
            reason = f"HTTP {err.code}"
        except (OSError, ValueError) as err:
            reason = str(getattr(err, "reason", err))
        if time.monotonic() >= give_up:
            break
        time.sleep(min(1.0, max(give_up - time.monotonic(), 0.0)))
    raise UserError(
        f"the MLflow tracking server at {uri} does not answer ({reason}); start it "
        f"(python -m fmnist_lab.server) or fix tracking.uri / MLFLOW_TRACKING_URI"
    )


def retry_window_s() -> float:
    """How long MLflow's client keeps retrying a request the server refuses: urllib3's backoff
    (0, 2f, 4f, ... seconds, each at most 120) over MLFLOW_HTTP_REQUEST_MAX_RETRIES retries at
    MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR f."""
    factor = MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR.get()
    return float(
        sum(min(factor * 2**i, 120) for i in range(1, MLFLOW_HTTP_REQUEST_MAX_RETRIES.get()))
    )


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config -> {"model.filters": "[32, 64]", ...}, the form MLflow params take."""
    flat: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = str(value)
    return flat


# Settings of the machine or of one run, not of a recipe; `reference` is the source's figures.
MACHINE_KEYS = ("seed", "tracking", "data.root", "data.cache_dir", "runtime")
# Params that runs recorded before conf/runtime/ existed logged under another name.
RENAMED = {
    **{f"trainer.{key}": f"runtime.{key}"
       for key in ("threads", "channels_last", "compile", "progress_bar", "keep_freed_memory")},
    "trainer.cudnn_benchmark": "trainer.benchmark",
}  # fmt: skip
# `scheduler.name`, as runs logged it before schedules were built from `_target_`.
SCHEDULES = {"none": "constant", "cosine": "cosine", "onecycle": "onecycle"}


def current_names(params: Mapping[str, str]) -> dict[str, str]:
    """A run's logged params under today's names (see RENAMED)."""
    current = {RENAMED.get(key, key): value for key, value in params.items()}
    if "scheduler.name" in current:
        name = current.pop("scheduler.name")
        current["scheduler._target_"] = f"fmnist_lab.schedules.{SCHEDULES.get(name, name)}"
        current["scheduler._partial_"] = "True"
    return current


def current_config(config: Mapping[str, Any]) -> dict:
    """A nested training config as older code recorded it (`config.yaml`), as today's."""
    config = copy.deepcopy(dict(config))
    for old, new in RENAMED.items():
        (old_group, old_key), (new_group, new_key) = old.split("."), new.split(".")
        if old_key in config.get(old_group, {}):
            config.setdefault(new_group, {})[new_key] = config[old_group].pop(old_key)
    if "trainer" in config:  # built by instantiate since conf/runtime/ split from it
        config["trainer"].setdefault("_target_", "pytorch_lightning.Trainer")
    if "data" in config and "_target_" not in config["data"]:
        csv = config["data"].get("name") == "fashion_mnist_csv"
        config["data"] = {"_target_": f"fmnist_lab.data.{'CsvData' if csv else 'IdxData'}",
                          **config["data"]}  # fmt: skip
    if "name" in config.get("scheduler", {}):
        name = config["scheduler"].pop("name")
        target = f"fmnist_lab.schedules.{SCHEDULES.get(name, name)}"
        config["scheduler"] = {"_target_": target, "_partial_": True, **config["scheduler"]}
    return config


def drop_machine_keys(config: Mapping[str, Any]) -> dict:
    """A copy of the nested `config` without the MACHINE_KEYS."""
    config = copy.deepcopy(dict(config))
    for dotted in MACHINE_KEYS:
        *path, last = dotted.split(".")
        node = config
        for key in path:
            node = node.get(key, {})
        node.pop(last, None)
    return config


def recipe_settings(cfg: DictConfig) -> dict[str, str]:
    """`cfg`'s settings as MLflow params, less the machine's (MACHINE_KEYS) and `reference`:
    two runs with equal recipe settings trained the same recipe (their seeds aside)."""
    config = drop_machine_keys(OmegaConf.to_container(cfg, resolve=True))
    config.pop("reference", None)
    return flatten(config)


def git_commit() -> str:
    """The commit of the checkout fmnist_lab runs from ("unknown" outside a git checkout)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=PACKAGE_DIR, capture_output=True, text=True,
            timeout=10, check=True,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip()


def run_name(template: str, model: str, n_params: int | None) -> str:
    """A run's name from `template` with `{model}` and `{size}` filled in: short, and unique
    in its first characters, which is all the MLflow UI's run-name column shows (a sweep's
    trial 12 is `t12-14k`, its finalist `t12-14k-final`, that finalist's seeds `t12-14k-s0`)."""
    size = human_count(n_params) if n_params else "invalid"
    return template.format(model=model, size=size)


def human_count(n: int) -> str:
    """12345 -> '12k', 3_230_000 -> '3.2M': the size part of run names."""
    if n >= 1_000_000:
        return f"{n / 1e6:.1f}M"
    if n >= 1_000:
        return f"{round(n / 1e3)}k"
    return str(n)


@contextmanager
def tracked_run(
    cfg: DictConfig,
    run_name: str,
    tags: dict[str, str],
    parent_run_id: str | None = None,
) -> Iterator[mlflow.ActiveRun]:
    """Start a run that logs `cfg` and always ends FINISHED, FAILED or KILLED (Ctrl-C).

    A run that did not finish carries the reason in its tag `failure_reason`. With
    `parent_run_id` it is a child of that run (a sweep's trial, a finalist's seed).
    """
    run = mlflow.start_run(
        run_name=run_name,
        tags={**tags, "git_commit": git_commit()},
        nested=parent_run_id is not None,
        parent_run_id=parent_run_id,
    )
    with _ended():
        resolved = OmegaConf.to_container(cfg, resolve=True)
        mlflow.log_params(flatten(resolved))
        mlflow.log_text(OmegaConf.to_yaml(cfg, resolve=True), "config.yaml")
        yield run


@contextmanager
def resumed_run(run_id: str, tags: dict[str, str],
                parent_run_id: str | None = None) -> Iterator[mlflow.ActiveRun]:  # fmt: skip
    """Reopen the run of a killed training to go on with it from its last epoch checkpoint
    (fmnist_lab/resume.py): RUNNING again, its config and parameters as first logged, the
    killed attempt's `failure_reason` removed; it ends as `tracked_run`'s runs do. With
    `parent_run_id` it moves under that run (a finalist's seed under its finalist's new run)."""
    client = mlflow.MlflowClient()
    if parent_run_id is not None:
        client.set_tag(run_id, "mlflow.parentRunId", parent_run_id)
    with suppress(MlflowException):  # no such tag: it was never ended with a reason
        client.delete_tag(run_id, "failure_reason")
    resumes = int(client.get_run(run_id).data.tags.get("resumed", "0")) + 1
    run = mlflow.start_run(run_id=run_id, nested=mlflow.active_run() is not None)
    with _ended():
        mlflow.set_tags({**tags, "resumed": str(resumes)})
        yield run


@contextmanager
def _ended() -> Iterator[None]:
    """End the active run FINISHED when the block completes, KILLED on Ctrl-C, else FAILED."""
    try:
        yield
    except KeyboardInterrupt as err:
        release_interrupted_call(err)
        try:
            _end_run("KILLED", "interrupted (Ctrl-C)")
        except MlflowException:
            pass  # the store is still held; a sweep records the run when it stops, or on resume
        raise
    except BaseException as err:
        _end_run("FAILED", f"{type(err).__name__}: {err}")
        raise
    else:
        mlflow.end_run("FINISHED")


@contextmanager
def continued_run(run_id: str, tags: dict[str, str]) -> Iterator[mlflow.ActiveRun]:
    """Reopen a finished run to log more of the same training to it (a sweep's trial trained
    on to its next rung). Its config and parameters stay those it was started with; it ends
    FINISHED however this part ends: the run stands for what it finished before, and the
    caller records why a continuation was cut short."""
    run = mlflow.start_run(run_id=run_id, nested=mlflow.active_run() is not None)
    try:
        mlflow.set_tags(tags)
        yield run
    except KeyboardInterrupt as err:
        release_interrupted_call(err)
        with suppress(MlflowException):  # the store is held: reconcile ends it on resume
            mlflow.end_run("FINISHED")
        raise
    finally:
        if mlflow.active_run() is not None and mlflow.active_run().info.run_id == run_id:
            mlflow.end_run("FINISHED")


def all_runs(client: mlflow.MlflowClient, experiments: list[str], filter_string: str) -> list:
    """Every run of the experiments that matches the filter, page after page."""
    runs, token = [], None
    while True:
        page = client.search_runs(experiments, filter_string, max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def release_interrupted_call(err: BaseException | None = None) -> None:
    """Free what an MLflow call cut short by Ctrl-C still holds, so that runs can be ended.

    The frames of the cut call, kept alive by the KeyboardInterrupt's traceback (in a reference
    cycle), can hold a SQLite store's cursor open and with it a lock on the whole store: every
    write, from this process or another, then waits out MLflow's 20 s busy timeout and fails
    with "database is locked". Given the exception (while it is being handled), its finished
    frames are cleared; call it without one once the except block is left.
    """
    while err is not None:
        traceback.clear_frames(err.__traceback__)  # frames still running are left as they are
        err = err.__context__
    gc.collect()


def _end_run(status: str, reason: str) -> None:
    """End the active run as `status`, recording why in the tag `failure_reason`."""
    try:
        mlflow.set_tag("failure_reason", reason[:5000])
    finally:
        mlflow.end_run(status)


def size_metrics(n_params: int) -> dict[str, float]:
    """The parameter count as metrics: `params` (the UI sorts by it, and searches filter on it:
    `metrics.params < 50000`) and `params_log10`, the x axis of the UI's size-vs-accuracy
    charts (MLflow's scatter charts have no log axis; fmnist_lab/ui.py)."""
    return {"params": n_params, "params_log10": round(math.log10(max(n_params, 1)), 3)}


def log_param_count(n_params: int) -> None:
    mlflow.log_metrics(size_metrics(n_params))


def log_model(predictor: torch.nn.Module, example: torch.Tensor) -> str:
    """Log `predictor` with signature and input example; return the URI that loads it.

    Saved as a torch.export program ("pt2"): loading runs no pickled code and needs no
    fmnist_lab, only torch.
    """
    # Plain NCHW weights export cleanly; the channels-last copies used in training do not.
    import numpy as np
    import torch
    from mlflow.models import infer_signature

    predictor = predictor.to("cpu", memory_format=torch.contiguous_format).eval()
    example_np = example.to("cpu", torch.float32).numpy()
    with torch.no_grad():
        output = predictor(torch.from_numpy(example_np)).numpy()
    info = mlflow.pytorch.log_model(
        predictor,
        name="model",
        signature=infer_signature(example_np, output),
        input_example=example_np,
        serialization_format="pt2",
        # Stated, not inferred: inference re-imports the model in a subprocess (slow).
        pip_requirements=[
            f"torch=={torch.__version__.split('+')[0]}",
            f"mlflow=={mlflow.__version__}",
            f"numpy=={np.__version__}",
        ],
    )
    mlflow.set_tag("model_uri", info.model_uri)
    return info.model_uri
