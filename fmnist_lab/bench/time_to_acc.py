"""Seconds of training from scratch, on all training images, until the test accuracy reaches
a target (the test set is evaluated after each epoch, timed apart from the training)."""

from __future__ import annotations

import contextlib
import io
import tempfile
import time

import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir

from fmnist_lab.bench import CONF_DIR
from fmnist_lab.bench.paths import sync
from fmnist_lab.data import load_splits
from fmnist_lab.train import train


class TimeToAccuracy(pl.Callback):
    """After each training epoch, the test accuracy (its evaluation timed apart from the
    training); stops the fit once it reaches `target`."""

    def __init__(self, splits, target: float) -> None:
        self.x, self.y, self.target = splits.test_x, splits.test_y, target
        self.train_s, self.reached = 0.0, None
        self.curve: list[tuple[int, float, float]] = []  # (epoch, training seconds, test acc)

    def on_train_epoch_start(self, trainer, module) -> None:
        self.started = time.perf_counter()

    def on_train_epoch_end(self, trainer, module) -> None:
        sync(module.device)
        self.train_s += time.perf_counter() - self.started
        acc = test_accuracy(module, self.x, self.y)
        self.curve.append((trainer.current_epoch + 1, self.train_s, acc))
        if acc >= self.target:
            self.reached = self.train_s
            trainer.should_stop = True


@torch.no_grad()
def test_accuracy(module, x: torch.Tensor, y: torch.Tensor, batch: int = 5000) -> float:
    was_training = module.training
    module.eval()
    correct = 0
    for i in range(0, len(y), batch):
        logits = module(x[i : i + batch].to(module.device))
        correct += int((logits.argmax(1).cpu() == y[i : i + batch]).sum())
    module.train(was_training)
    return correct / len(y)


def time_to_accuracy(target: float, train_args: list[str], max_epochs: int):
    """Train from scratch on all training images (`train_args`: Hydra overrides of
    conf/train.yaml) until the test accuracy reaches `target`; the callback's record."""
    with tempfile.TemporaryDirectory() as tmp:
        overrides = [
            *train_args,
            "data.val_size=0",
            f"trainer.max_epochs={max_epochs}",
            "test=false",
            "log_model=false",
            "evaluate=false",
            "runtime.progress_bar=false",
            f"tracking.uri=sqlite:///{tmp}/mlflow.db",
        ]
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            cfg = compose("train", overrides=overrides)
        splits = load_splits(cfg.data)
        clock = TimeToAccuracy(splits, target)
        with contextlib.redirect_stdout(io.StringIO()):
            train(cfg, callbacks=[clock], splits=splits)
    return clock


def print_time_to_acc(target: float, train_args: list[str], max_epochs: int,
                      extra: list[str]) -> None:  # fmt: skip
    """The test accuracy after each epoch, and the training seconds it took to reach `target`
    (`extra`: overrides not shown, such as the malloc setting)."""
    clock = time_to_accuracy(target, [*train_args, *extra], max_epochs)
    print(f"\ntime to {target:.1%} test accuracy, from scratch on all training "
          f"images ({' '.join(train_args) or 'the default model'}):")  # fmt: skip
    for epoch, seconds, acc in clock.curve:
        print(f"  epoch {epoch:>3}: {seconds:7.1f} s of training, test accuracy {acc:.4f}")
    if clock.reached is None:
        print(f"  not reached in {max_epochs} epochs")
    else:
        print(f"  reached after {clock.reached:.1f} s of training")
