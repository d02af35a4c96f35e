"""A Lightning logger that writes epoch-level metrics to an MLflow run."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import mlflow
from mlflow.entities import Metric
from pytorch_lightning.loggers.logger import Logger
from pytorch_lightning.utilities import rank_zero_only

from fmnist_lab.measures import rounded, split_of


class MlflowEpochLogger(Logger):
    """Lightning logger writing the epoch-level metrics to the active MLflow run.

    The step of each metric is the epoch, so the MLflow UI charts them per epoch; each value
    is rounded to what its split resolves (`sizes`: images per split, `train`, `val`, `test`;
    see fmnist_lab.measures). `history` keeps what was logged, {name: [(epoch, value), ...]},
    for the learning-curve plot.
    """

    def __init__(self, run_id: str, sizes: Mapping[str, int] | None = None) -> None:
        super().__init__()
        self.run_id = run_id
        self.sizes = dict(sizes or {})
        self.client = mlflow.MlflowClient()
        self.history: dict[str, list[tuple[int, float]]] = {}
        self.quiet_from: int | None = None  # epochs from here on are kept in history only
        self.logged_before = 0  # and those before this one (fmnist_lab.continuation)
        self.epoch_logged: Callable[[], None] | None = None  # after an epoch's last metrics

    def preload(self) -> int:
        """Read back what the run logged before (a killed attempt of it, resumed): its
        per-epoch metrics into `history`, for the learning-curve plot; returns the number of
        epochs it logged, which are not logged again."""
        run = self.client.get_run(self.run_id)
        logged = {p.step for p in self.client.get_metric_history(self.run_id, "train_loss")}
        epochs = max(logged) + 1 if logged else 0
        for key in run.data.metrics:
            if key.startswith(("train_", "val_")) and key != "train_time_s":
                points = self.client.get_metric_history(self.run_id, key)
                self.history[key] = sorted((p.step, p.value) for p in points if p.step < epochs)
        return epochs

    @property
    def name(self) -> str:
        return "mlflow"

    @property
    def version(self) -> str:
        return self.run_id

    @rank_zero_only
    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        """The config is logged by `tracked_run`; nothing to add here."""

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        epoch = int(metrics.get("epoch", step or 0))
        now = int(time.time() * 1000)
        batch = [Metric(k, rounded(k, float(v), self.sizes.get(split_of(k))), now, epoch)
                 for k, v in metrics.items() if k != "epoch"]  # fmt: skip
        for m in batch:
            self.history.setdefault(m.key, []).append((epoch, m.value))
        quiet = self.quiet_from is not None and epoch >= self.quiet_from
        if batch and not quiet and epoch >= self.logged_before:
            self.client.log_batch(self.run_id, metrics=batch, synchronous=True)
        if "train_loss" in metrics and self.epoch_logged is not None:  # the epoch's last
            self.epoch_logged()
