"""Training that can be continued: a run of the warmup-stable-decay schedule saves itself at
the end of its stable phase, and a longer run started from that file takes exactly the steps
it would have taken straight through (the multi-fidelity sweep's rungs, docs/run_state.md);
a long training saves itself after every epoch, and a killed one resumes from its last epoch
with the same steps (`EpochCheckpoint`, fmnist_lab/resume.py).

Lightning's checkpoint holds the weights, the optimizer, the learning-rate schedule's step and
the loops' progress; `StableCheckpoint` adds what it lacks for an identical continuation: the
random generators of dropout and augmentation (torch's) and of the data order (the training
batches' own generator)."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch


class StableCheckpoint(pl.Callback):
    """Save the run to `path` at the end of epoch `at` (counted from 1; 0: nothing to save),
    to a temporary name first, so that a file under `path` is always whole. With `quiet`, the
    epochs after `at` (the decayed branch of a rung below the top) are kept out of the run's
    per-epoch metrics: the continuation logs those epochs again, at the stable rate. With
    `logged`, the first `logged` epochs are not logged again (a continuation trained from the
    start where its checkpoint is on another machine: the same steps, the same values)."""

    def __init__(self, at: int, path: str | Path | None, quiet: bool = False,
                 logged: int = 0) -> None:  # fmt: skip
        self.at, self.path, self.quiet = at, Path(path) if path else None, quiet
        self.logged = logged  # epochs the run has logged before (trained again from 0)
        self.trainer: pl.Trainer | None = None
        self.restored: dict[str, Any] | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.trainer = trainer
        if self.quiet and hasattr(trainer.logger, "quiet_from"):
            trainer.logger.quiet_from = self.at
        if self.logged and hasattr(trainer.logger, "logged_before"):
            trainer.logger.logged_before = self.logged

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.restored is None:
            return
        torch.set_rng_state(self.restored["torch"])
        trainer.train_dataloader.generator.set_state(self.restored["data"])
        if self.restored.get("cuda") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(self.restored["cuda"])

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.path is None or trainer.current_epoch + 1 != self.at:
            return
        self.save()

    def save(self) -> None:
        """The run, to `path` (under a temporary name first, so that the file is whole)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        self.trainer.save_checkpoint(partial)
        os.replace(partial, self.path)

    def state_dict(self) -> dict[str, Any]:
        trainer = self.trainer
        data = getattr(trainer.train_dataloader, "generator", None) if trainer else None
        return {
            "torch": torch.get_rng_state(),
            "data": data.get_state() if data is not None else None,
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.restored = state_dict  # applied once the data is set up (on_train_start)


class EpochCheckpoint(StableCheckpoint):
    """Save the run to `path` at the end of every epoch, with the seconds trained so far
    (`elapsed`, over every attempt: a resumed run's `train_time_s` counts them all), and
    beside it `<path>.json` naming the MLflow run it belongs to (written by `own` before the
    training starts). With `logged`, the first
    `logged` epochs are not logged again (a killed attempt logged them before its last
    checkpoint)."""

    def __init__(self, path: str | Path, run_id: str, logged: int = 0) -> None:
        super().__init__(0, path, logged=logged)
        self.run_id, self.before, self.started = run_id, 0.0, time.perf_counter()

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        if self.restored is not None:
            self.before = float(self.restored.get("elapsed", 0.0))
        self.started = time.perf_counter()

    @property
    def elapsed(self) -> float:
        """Seconds trained, this attempt and those before it."""
        return self.before + time.perf_counter() - self.started

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        # Saved once the epoch's last metrics are logged (the training ones, which Lightning
        # hands the logger after every epoch-end hook): a kill between the two would leave an
        # epoch trained, in the checkpoint, but not all of it logged.
        trainer.logger.epoch_logged = self.save

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        pass  # (see setup)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "elapsed": self.elapsed, "run_id": self.run_id}


def write_atomically(path: Path, data: bytes) -> None:
    """Write `path` under a temporary name first, so that it is always whole."""
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    partial.write_bytes(data)
    os.replace(partial, path)


def own(path: str | Path, run_id: str) -> None:
    """Make `path` the `EpochCheckpoint` of run `run_id`: a checkpoint there of another run
    (one that finished before its file was removed) is removed first."""
    path = Path(path)
    if owner_of(path) == run_id:
        return
    remove(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path.with_name(path.name + ".json"), json.dumps({"run_id": run_id}).encode())


def owner_of(path: str | Path) -> str | None:
    """The MLflow run an `EpochCheckpoint` at `path` belongs to (None: no checkpoint)."""
    path = Path(path)
    try:
        return json.loads(path.with_name(path.name + ".json").read_text())["run_id"]
    except (OSError, ValueError, KeyError):
        return None


def remove(path: str | Path) -> None:
    """Remove an `EpochCheckpoint` and its owner file (its training finished)."""
    path = Path(path)
    for p in (path, path.with_name(path.name + ".json")):
        p.unlink(missing_ok=True)


def stable_end(epochs: int, decay: float) -> int:
    """Where a run of `epochs` ends its stable phase: the last ceil(decay * epochs) epochs
    decay (at least one)."""
    return epochs - max(1, math.ceil(decay * epochs - 1e-9))
