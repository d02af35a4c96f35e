"""The LightningModule every run trains."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import pytorch_lightning as pl
import torch
from torch import nn
from torch.nn import functional as F
from torch.optim.swa_utils import AveragedModel
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from fmnist_lab.augment import BatchAugment

if TYPE_CHECKING:
    from torch.optim.lr_scheduler import LRScheduler


class Classifier(pl.LightningModule):
    """Cross-entropy training of `net` on uint8 batches, normalised and augmented on device.

    `optimizer` is a partial taking the parameters (Hydra's `_partial_: true`); `scheduler`,
    one of fmnist_lab/schedules.py's, takes the optimizer and the run's total steps and is
    stepped every batch (None: a constant rate). `channels_last`
    stores the conv weights NHWC. Metrics are aggregated over the epoch on the device and
    logged once per epoch: train_loss, train_acc, val_loss, val_acc, test_loss, test_acc.
    A loss that is not finite (training or validation) raises FloatingPointError.
    The logits of the last test pass stay in `test_logits`, for the evaluation plots.

    With a `teacher` (knowledge distillation, Hinton et al. 2015), the training loss is
    `(1 - alpha) * cross-entropy + alpha * T^2 * KL(teacher || student)` at temperature T on
    the same augmented batch; validation and test losses stay plain cross-entropy.
    """

    def __init__(
        self,
        net: nn.Module,
        optimizer: Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer],
        mean: float,
        std: float,
        scheduler: Callable[[torch.optim.Optimizer, int], LRScheduler] | None = None,
        augment: BatchAugment | None = None,
        label_smoothing: float = 0.0,
        num_classes: int = 10,
        channels_last: bool = True,
        compile: bool = False,
        teacher: Teacher | None = None,
        ema_decay: float | None = None,
        bn_lr_scale: float = 1.0,
    ) -> None:
        super().__init__()
        if channels_last:
            # Convolutions run markedly faster on this layout, on CPU (oneDNN) and GPU alike.
            # The uint8 input has one channel, so it is already in this layout.
            net = net.to(memory_format=torch.channels_last)
        # The weights' exponential moving average, updated after every optimizer step, is what
        # validation and test see and what gets logged (its batch-norm statistics averaged
        # alike). A submodule: checkpoints hold it, so a continued run goes on averaging.
        self.ema = (AveragedModel(net, multi_avg_fn=ema_with_warmup(ema_decay),
                                  use_buffers=True) if ema_decay else None)  # fmt: skip
        self.bn_lr_scale = bn_lr_scale
        # torch.compile: the original module keeps the weights (what gets logged and served).
        self.net = torch.compile(net) if compile else net
        self.make_optimizer = optimizer
        self.make_scheduler = scheduler
        self.augment = augment or BatchAugment()
        self.loss_fn = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        self.teacher = teacher  # not a submodule: never trained, saved or counted
        self.register_buffer("mean", torch.tensor(mean))
        self.register_buffer("std", torch.tensor(std))
        self.test_logits: list[torch.Tensor] = []
        # Without their input checks (`if nans.any()`, label range checks), the updates
        # never wait for the device; a NaN loss still shows in the epoch mean (_check_finite).
        self.metrics = nn.ModuleDict(
            {
                f"{stage}_{kind}": MulticlassAccuracy(
                    num_classes, average="micro", validate_args=False
                )
                if kind == "acc"
                else MeanMetric(nan_strategy="disable")
                for stage in ("train", "val", "test")
                for kind in ("loss", "acc")
            }
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for uint8 images (N x 1 x 28 x 28), by the evaluated weights."""
        return self.evaluated(self.normalize(x.float() / 255))

    @property
    def evaluated(self) -> nn.Module:
        """The network that validation and test use, and that is logged: the weights' moving
        average with `ema_decay`, else the weights as trained."""
        return self.net if self.ema is None else self.ema.module

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        if self.ema is not None:
            self.ema.update_parameters(self.net)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def _step(self, batch, stage: str) -> torch.Tensor:
        x, y = batch
        x = x.float() / 255
        if stage == "train":
            x = self.augment(x)
        net = self.net if stage == "train" or self.ema is None else self.ema.module
        logits = net(self.normalize(x))
        loss = self.loss_fn(logits, y)
        if stage == "train" and self.teacher is not None:
            loss = self.teacher.blend(loss, logits, x)
        # Accumulated on the device; read once per epoch, so no host sync per step.
        # One entry per image, so that a smaller last batch weighs what it holds (with
        # nan_strategy="disable", MeanMetric ignores a `weight` argument).
        self.metrics[f"{stage}_loss"].update(loss.detach().expand(len(y)))
        self.metrics[f"{stage}_acc"].update(logits.detach(), y)
        if stage == "test":
            self.test_logits.append(logits.detach())
        return loss

    def on_fit_start(self) -> None:
        if self.teacher is not None:
            self.teacher.to(self.device)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "val")

    def on_test_epoch_start(self) -> None:
        self.test_logits = []

    def test_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "test")

    def _log_epoch(self, stage: str) -> None:
        for kind in ("loss", "acc"):
            metric = self.metrics[f"{stage}_{kind}"]
            if metric.update_called:
                self.log(f"{stage}_{kind}", metric.compute())
            metric.reset()

    def _check_finite(self, stage: str) -> None:
        loss = self.metrics[f"{stage}_loss"]
        if loss.update_called and not torch.isfinite(loss.compute()):
            name = "training" if stage == "train" else "validation"
            raise FloatingPointError(f"{name} loss is not finite at epoch {self.current_epoch}")

    def on_train_epoch_end(self) -> None:
        self._check_finite("train")
        self._log_epoch("train")

    def on_validation_epoch_end(self) -> None:
        self._check_finite("val")
        self._log_epoch("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")

    def configure_optimizers(self):
        optimizer = self.make_optimizer(self.param_groups())
        if self.make_scheduler is None:
            return optimizer
        total = int(self.trainer.estimated_stepping_batches)
        if "epochs" in inspect.signature(self.make_scheduler).parameters:  # counts in epochs
            scheduler = self.make_scheduler(optimizer, total, epochs=self.trainer.max_epochs)
        else:
            scheduler = self.make_scheduler(optimizer, total)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

    def param_groups(self) -> list[dict]:
        """The trained parameters; with `bn_lr_scale`, the batch-norm weights and biases in a
        group of their own at that multiple of the learning rate (schedules scale each
        group's rate alike)."""
        params = list(self.net.parameters())
        if self.bn_lr_scale == 1.0:
            return [{"params": params}]
        norms = {id(p) for m in self.net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
                 for p in m.parameters()}  # fmt: skip
        lr = self.make_optimizer.keywords["lr"] * self.bn_lr_scale
        return [{"params": [p for p in params if id(p) not in norms]},
                {"params": [p for p in params if id(p) in norms], "lr": lr}]  # fmt: skip


def ema_with_warmup(decay: float) -> Callable:
    """An exponential moving average for `AveragedModel` whose decay at its n-th update is
    min(decay, (1 + n) / (10 + n)) (TensorFlow's and timm's warm-up): the average of a short
    run, a sweep's one-epoch rung, is not mostly its initial weights. Integer buffers (batch
    norm's step counter) take the current value."""

    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], n: torch.Tensor) -> None:
        steps = float(n)
        rate = min(decay, (1 + steps) / (10 + steps))
        if torch.is_floating_point(averaged[0]):
            torch._foreach_lerp_(averaged, current, 1 - rate)
        else:
            for a, c in zip(averaged, current, strict=True):
                a.copy_(c)

    return update


class Teacher:
    """A trained model's soft labels for distillation: `model` maps float images in 0..1 to
    class probabilities (a logged fmnist_lab model). It runs without gradients at the
    training's precision (bf16 under bf16-mixed: soft labels within 0.01 of fp32's, for a
    third less time on a CPU) and is never put into training mode (its batch-norm statistics
    stay as trained)."""

    def __init__(self, model: nn.Module, alpha: float, temperature: float) -> None:
        self.model = model.requires_grad_(False)
        self.alpha, self.temperature = alpha, temperature

    def to(self, device: torch.device) -> Teacher:
        self.model = self.model.to(device)
        return self

    def log_probs(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            probs = self.model(x).float()
        return probs.clamp_min(torch.finfo(torch.float32).tiny).log()

    def blend(self, hard_loss: torch.Tensor, logits: torch.Tensor, x: torch.Tensor):
        """The student's loss: its cross-entropy mixed with the KL divergence from the
        teacher's distribution at temperature T (log-probabilities are logits up to a
        constant, so they soften the same way), scaled by T^2 to keep gradients comparable."""
        t = self.temperature
        soft = F.kl_div(
            F.log_softmax(logits.float() / t, dim=1),
            F.log_softmax(self.log_probs(x) / t, dim=1),
            reduction="batchmean",
            log_target=True,
        )
        return (1 - self.alpha) * hard_loss + self.alpha * t * t * soft
