"""Locks a study's processes share across processes and machines, and holding off a Ctrl-C."""

from __future__ import annotations

import fcntl
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from omegaconf import DictConfig

from fmnist_lab.storage import is_postgres, postgres_lock, storage_url


@contextmanager
def study_lock(cfg: DictConfig, purpose: str, wait: bool = True) -> Iterator[bool]:
    """Hold the study's lock named `purpose` across every process and machine of the study:
    a PostgreSQL advisory lock for a PostgreSQL storage, else a file lock beside the sweep's
    output (a journal or SQLite file is on this machine). Yields False, holding nothing,
    when `wait` is false and another process holds it."""
    url = storage_url(cfg)
    if is_postgres(url):
        with postgres_lock(url, f"fmnist_lab:{cfg.study_name}:{purpose}", wait) as held:
            yield held
        return
    lock_path = Path(cfg.output_dir).resolve() / f".{purpose}.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True


@contextmanager
def sigint_held() -> Iterator[None]:
    """Hold a Ctrl-C that arrives in the block until its end (main thread only)."""
    held = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: held.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if held:
            signal.raise_signal(signal.SIGINT)  # now handled as it would have been
