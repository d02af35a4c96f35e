"""Fault injection for the chaos test (docs/run_state.md#fault-injection): with
`FMNIST_LAB_FAULT=<phase>[:<n>]` the sweep signals its own main process the n-th time it
reaches that phase's point, with `FMNIST_LAB_FAULT_SIGNAL` (SIGKILL, the default, or SIGINT).
The real process is killed or interrupted; nothing is simulated. Unset, every point is a
dictionary lookup."""

from __future__ import annotations

import os
import signal
import sys
from collections import Counter

PHASES = ("startup", "trial", "rung", "rerank", "finalist_seed", "registration")
FAULT_ENV, SIGNAL_ENV = "FMNIST_LAB_FAULT", "FMNIST_LAB_FAULT_SIGNAL"

_reached: Counter[str] = Counter()
_sweep_pid: int | None = None  # the sweep's main process, as seen from a worker


def armed(phase: str) -> bool:
    """Whether this process is to be signalled at `phase`'s point."""
    return os.environ.get(FAULT_ENV, "").partition(":")[0] == phase


def point(phase: str) -> None:
    """The point of `phase`: signal the sweep's main process here if armed for it."""
    if not armed(phase):
        return
    _, _, nth = os.environ[FAULT_ENV].partition(":")
    _reached[phase] += 1
    if _reached[phase] != int(nth or 1):
        return
    name = os.environ.get(SIGNAL_ENV, "SIGKILL")
    print(f"fault injection: {name} at {phase}", file=sys.stderr, flush=True)
    try:
        os.kill(_sweep_pid or os.getpid(), getattr(signal, name))
    except ProcessLookupError:  # another worker's fault killed it first
        pass


def check() -> None:
    """Refuse a misspelt phase or signal, which would silently never fire."""
    from fmnist_lab.errors import UserError

    phase = os.environ.get(FAULT_ENV)
    if phase is None:
        return
    name, _, nth = phase.partition(":")
    if name not in PHASES or not (nth == "" or nth.isdigit() and int(nth) > 0):
        raise UserError(f"{FAULT_ENV}={phase} must be one of {', '.join(PHASES)}, "
                        f"optionally followed by :<n>")  # fmt: skip
    if os.environ.get(SIGNAL_ENV, "SIGKILL") not in ("SIGKILL", "SIGINT"):
        raise UserError(f"{SIGNAL_ENV} must be SIGKILL or SIGINT")


def in_worker(sweep_pid: int) -> None:
    """Called in a worker process: its points signal the sweep's main process."""
    global _sweep_pid
    _sweep_pid = sweep_pid


def callbacks(phase: str) -> list:
    """A Lightning callback reaching `phase`'s point after the first training batch, when
    armed for it (none otherwise)."""
    if not armed(phase):
        return []
    import pytorch_lightning as pl

    class AfterFirstBatch(pl.Callback):  # of this fit (a continued rung starts mid-run)
        seen = 0

        def on_train_batch_end(self, trainer, *args) -> None:
            self.seen += 1
            if self.seen == 1:
                point(phase)

    return [AfterFirstBatch()]
