"""Long trainings that survive a stop: `train` and each seed of `reproduce` save a checkpoint
after every epoch, and the same command run again after a kill goes on from the last epoch in
the same MLflow run, instead of starting over (docs/training.md#a-killed-training-resumes).

What makes two commands "the same": the training's whole resolved config but `runtime` (how
this machine trains, not what) and a recipe's `reference:` (what it scored once: filling in a
recipe's test figure while its seeds train does not orphan them), and the tracking store and
experiment it logs to. Its hash is the run's tag `resume_key` and the checkpoint's name,
`<runtime.checkpoints>/<key>.ckpt` (beside it `<key>.ckpt.json`, naming the run;
fmnist_lab/continuation.py). A run with that tag that did not finish (RUNNING: its process was
killed; KILLED: Ctrl-C) is the one to resume, from the checkpoint when the file names that run,
else from its first epoch. A run that FAILED (an error, say a diverged loss) is not resumed: it
would fail again the same way. The checkpoint is removed when its run finishes. While one
process trains a key, it holds `<key>.lock`: a second process of the same command trains a run
of its own, without a checkpoint.
"""

from __future__ import annotations

import fcntl
import hashlib
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException
from omegaconf import DictConfig, OmegaConf

from fmnist_lab import continuation, tracking

KEY_TAG = "resume_key"
RESUMABLE = ("RUNNING", "KILLED")  # a killed process's run; FAILED ones are not resumed


@dataclass(frozen=True)
class Resume:
    """Where a training saves itself, and what a killed attempt left: the run to reopen
    (None: start a new one) and the checkpoint to go on from (None: from the first epoch)."""

    key: str
    checkpoint: Path | None
    run_id: str | None = None
    resume_from: Path | None = None


def key(cfg: DictConfig) -> str:
    """The training's identity: its resolved config but `runtime` and `reference` (module
    docstring), and where it is tracked."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    for outside in ("runtime", "hydra", "reference"):
        resolved.pop(outside, None)
    tracked = {"uri": mlflow.get_tracking_uri(), "experiment": cfg.tracking.experiment}
    text = OmegaConf.to_yaml(OmegaConf.create({"cfg": resolved, "tracking": tracked}))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@contextmanager
def claim(cfg: DictConfig) -> Iterator[Resume]:
    """What `cfg`'s training resumes from; the checkpoint is removed once the block completes
    (the run finished). Without `runtime.checkpoints`, nothing is saved or resumed. The store
    is only read here, and not at all when it does not exist yet: a training refused for bad
    input afterwards (a model that cannot be built, missing data) has recorded nothing."""
    if cfg.tracking.uri:
        mlflow.set_tracking_uri(cfg.tracking.uri)
    k = key(cfg)
    folder = cfg.runtime.get("checkpoints")
    if not folder:
        yield Resume(k, None)
        return
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f"{k}.lock", "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # the same training, running now in another process
            print(f"another process trains this configuration now (resume key {k}); this run "
                  "is a separate one, without a checkpoint", flush=True)  # fmt: skip
            yield Resume(k, None)
            return
        path = folder / f"{k}.ckpt"
        run_id = unfinished(cfg.tracking.experiment, k)
        if run_id is None:
            found = Resume(k, path)
        else:
            saved = path if path.exists() and continuation.owner_of(path) == run_id else None
            found = Resume(k, path, run_id, saved)
            print(f"resuming run {run_id} " + (f"from its last epoch checkpoint ({path})"
                  if saved else "from its first epoch (killed before its first checkpoint)"),
                  flush=True)  # fmt: skip
        yield found
        continuation.remove(path)


def unfinished(experiment: str, k: str) -> str | None:
    """The newest run of `experiment` tagged `resume_key` = `k` that a killed process left
    (RUNNING or KILLED); older ones of the kind are ended FAILED (superseded). A store that
    cannot be used is a UserError here, before anything is recorded."""
    uri = mlflow.get_tracking_uri()
    # One sentence, at once, for a server that does not answer (MLflow's client would retry
    # for minutes) or a damaged store (SQLAlchemy's traceback): the same checks as train's.
    tracking.check_server(uri)
    tracking.check_local_store(uri)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        return None  # no store yet, so no run: do not create one by looking
    client = mlflow.MlflowClient()
    try:
        exp = client.get_experiment_by_name(experiment)
    except Exception:  # an unreachable server, a broken store: train() names the problem
        return None
    if exp is None:
        return None
    runs = tracking.all_runs(client, [exp.experiment_id], f"tags.{KEY_TAG} = '{k}'")
    left = sorted((r for r in runs if r.info.status in RESUMABLE),
                  key=lambda r: r.info.start_time, reverse=True)  # fmt: skip
    for older in left[1:]:
        with suppress(MlflowException):
            client.set_tag(
                older.info.run_id,
                "failure_reason",
                "superseded: a newer attempt of the same training is resumed",
            )
            client.set_terminated(older.info.run_id, "FAILED")
    return left[0].info.run_id if left else None
