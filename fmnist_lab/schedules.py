"""Learning-rate schedules, one per conf/scheduler/ file. Each takes the optimizer and the
run's total number of optimizer steps (known once Lightning has the data) and is stepped
every batch; the config's other keys are its own settings (`_partial_: true`)."""

from __future__ import annotations

import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler


def constant(optimizer: Optimizer, total_steps: int) -> LRScheduler:
    """optimizer.lr throughout."""
    return torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)


def cosine(optimizer: Optimizer, total_steps: int) -> LRScheduler:
    """Cosine decay from optimizer.lr to 0 over the run."""
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)


def onecycle(optimizer: Optimizer, total_steps: int, pct_start: float = 0.25) -> LRScheduler:
    """Warm up to optimizer.lr over `pct_start` of the run, then anneal to ~0 (OneCycleLR).
    A run of under 3 steps keeps optimizer.lr; a short one warms up over at least 2 steps
    (OneCycleLR divides by zero when the warm-up is exactly one step)."""
    if total_steps < 3:
        return constant(optimizer, total_steps)
    return torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=[group["lr"] for group in optimizer.param_groups],
        total_steps=total_steps,
        pct_start=max(pct_start, 2 / total_steps),
    )
