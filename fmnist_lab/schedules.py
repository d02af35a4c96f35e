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


def wsd(optimizer: Optimizer, total_steps: int, warmup: float = 0.05, decay: float = 0.2,
        epochs: int | None = None, warmup_epochs: float | None = None,
        decay_epochs: int | None = None) -> LRScheduler:  # fmt: skip
    """Warmup-stable-decay: up to optimizer.lr linearly over the first `warmup` of the steps,
    held there, then down linearly to 0 over the last `decay` of them (the trapezoid of Hu et
    al. 2024). Unlike one-cycle, the stable phase does not depend on the run's length: a
    checkpoint taken in it can be trained on to any length, then decayed.

    `warmup_epochs` and `decay_epochs`, where set, give the two phases in epochs of the run's
    `epochs` instead (the multi-fidelity sweep's rungs: a warmup that is the same whatever
    the length, so that a rung continued to a longer one takes the very steps a run of that
    length takes straight through)."""
    per_epoch = total_steps / epochs if epochs else None
    if warmup_epochs is not None and per_epoch:
        up = round(warmup_epochs * per_epoch)
    else:
        up = max(1, round(warmup * total_steps)) if warmup else 0
    if decay_epochs is not None and per_epoch:
        down = max(1, round(decay_epochs * per_epoch))
    else:
        down = max(1, round(decay * total_steps))

    def factor(step: int) -> float:  # a closure, so a checkpoint does not keep its lengths
        rise = (step + 1) / up if step < up else 1.0
        return min(rise, 1.0, max(0.0, (total_steps - step) / down))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
