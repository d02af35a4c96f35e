"""The LightningModule itself: what a training step does and does not do."""

from __future__ import annotations

import os
import sys

import pytest
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate

from fmnist_lab.data import DataModule, load_splits
from fmnist_lab.models import build_model
from fmnist_lab.module import Classifier

# The Tensor methods through which a value reaches the host: on a GPU each waits for it.
# (Reads inside torch's C++ ops do not pass through them; on a GPU,
# torch.cuda.set_sync_debug_mode('error') would see those too.)
HOST_READS = (
    "item",
    "tolist",
    "__bool__",
    "__float__",
    "__int__",
    "__index__",
    "__format__",
    "numpy",
    "cpu",
)


class TrapHostReads(pl.Callback):
    """Between a batch's start and end (forward, loss, metrics, backward, optimizer and
    scheduler step), any read of a tensor's value into Python raises."""

    def __init__(self) -> None:
        self.saved = {name: getattr(torch.Tensor, name) for name in HOST_READS}
        self.steps = 0

    def _trap(self, name):
        original = self.saved[name]

        def read(*args, **kwargs):
            # torch's optimizers keep their step counters on the host by design (also on a
            # GPU), so reading those costs no sync.
            if f"torch{os.sep}optim{os.sep}" in sys._getframe(1).f_code.co_filename:
                return original(*args, **kwargs)
            raise AssertionError(f"Tensor.{name} called inside a training step")

        return read

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        for name in HOST_READS:
            setattr(torch.Tensor, name, self._trap(name))

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.restore()
        self.steps += 1

    def restore(self) -> None:
        for name, method in self.saved.items():
            setattr(torch.Tensor, name, method)


@pytest.mark.parametrize("schedule", ["onecycle", "cosine", "none"])
def test_training_steps_never_read_values_back_from_the_device(make_cfg, schedule):
    cfg = make_cfg("model=convnet_20k", "augmentation=crop_flip_erasing", "data.val_size=500",
                   "data.train_fraction=0.01", f"scheduler={schedule}")  # fmt: skip
    splits = load_splits(cfg.data)
    module = Classifier(build_model(cfg.model), instantiate(cfg.optimizer), splits.mean,
                        splits.std, scheduler=instantiate(cfg.scheduler),
                        augment=instantiate(cfg.augmentation), label_smoothing=0.1)  # fmt: skip
    trap = TrapHostReads()
    trainer = pl.Trainer(max_epochs=2, accelerator="cpu", logger=False, callbacks=[trap],
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0)  # fmt: skip
    try:
        trainer.fit(module, datamodule=DataModule(splits, 64, 500, seed=0))
    finally:
        trap.restore()
    assert trap.steps == trainer.global_step > 0
    assert 0.0 < trainer.callback_metrics["train_acc"] <= 1.0  # the metrics still aggregate


def test_epoch_loss_is_the_mean_over_images_when_the_last_batch_is_smaller(make_cfg):
    cfg = make_cfg("model=convnet_20k", "data.val_size=500", "data.train_fraction=0.01")
    splits = load_splits(cfg.data)
    module = Classifier(build_model(cfg.model), instantiate(cfg.optimizer), splits.mean,
                        splits.std, label_smoothing=0.1)  # fmt: skip
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_progress_bar=False,
                         enable_checkpointing=False, enable_model_summary=False,
                         num_sanity_val_steps=0)  # fmt: skip
    # Validation in batches of 300 and 200: a mean of the two batch means would be off.
    trainer.fit(module, datamodule=DataModule(splits, 64, 300, seed=0))
    module.eval()
    with torch.no_grad():
        losses = torch.nn.functional.cross_entropy(
            module(splits.val_x), splits.val_y, label_smoothing=0.1, reduction="none"
        )
    batch_means = (losses[:300].mean() + losses[300:].mean()) / 2
    assert abs(losses.mean() - batch_means) > 1e-4  # the two ways differ on these images
    assert float(trainer.callback_metrics["val_loss"]) == pytest.approx(float(losses.mean()),
                                                                        rel=1e-5)  # fmt: skip
