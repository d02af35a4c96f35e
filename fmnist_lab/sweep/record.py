"""The study's record of work other than a trial's first training (docs/run_state.md): one
study attribute per piece of work (a trial's later rung, a rerank, a finalist, one finalist
seed, the registration), saying whether it is running, done or stopped, which process owns
it, and the one run that did it.

Trials need no such record: Optuna's trial states are theirs. Both go through `owner()` and
`gone()`, which say which process does a piece of work and whether it died."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import optuna

HOST = socket.gethostname()
PREFIXES = ("rung:", "rerank:", "finalist:", "registration")  # the study attributes that are work
INTERRUPTED = "interrupted (Ctrl-C)"
_WRITING = threading.Lock()  # a rung's heartbeat thread and its trainer write one record


def owner() -> str:
    """This process, as a record names it: host:pid."""
    return f"{HOST}:{os.getpid()}"


def gone(who: str | None) -> bool:
    """Whether process `who` (host:pid) ran on this machine and has ended."""
    host, _, pid = (who or ":").rpartition(":")
    if host != HOST or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def is_work(key: str) -> bool:
    return key.startswith(PREFIXES)


def _record(value: Any) -> dict[str, Any] | None:
    if isinstance(value, float):  # a rerank score as studies before the record kept it
        return {"state": "done", "run_id": None, "result": {"val_acc": value}}
    return value


class Record:
    """The work records of `study`, read fresh from its storage on every call."""

    def __init__(self, study: optuna.Study) -> None:
        self.study = study

    def get(self, key: str) -> dict[str, Any] | None:
        return _record(self.study.user_attrs.get(key))

    def all(self) -> dict[str, dict[str, Any]]:
        """Every work record, from one read of the study's attributes."""
        return {k: _record(v) for k, v in self.study.user_attrs.items() if is_work(k)}

    def done(self, key: str) -> dict[str, Any] | None:
        """The result of `key`, if it is done."""
        rec = self.get(key)
        return rec["result"] if rec and rec["state"] == "done" else None

    def _put(self, key: str, **fields: Any) -> None:
        with _WRITING:
            self.study.set_user_attr(key, {**(self.get(key) or {}), **fields})

    def start(self, key: str, **fields: Any) -> None:
        """Written before the work's run exists (with `fields` of the caller's own)."""
        attempt = (self.get(key) or {}).get("attempt", 0) + 1
        self._put(key, state="running", owner=owner(), attempt=attempt, run_id=None,
                  reason=None, result=None, since=time.time(), beat=None, **fields)  # fmt: skip

    def ran(self, key: str, run_id: str) -> None:
        self._put(key, run_id=run_id)

    def finish(self, key: str, result: dict[str, Any], run_id: str | None = None) -> None:
        """Written while the work's run is still RUNNING (it ends FINISHED after)."""
        fields = {"state": "done", "result": result, "finished": time.time()}
        self._put(key, **fields, **({"run_id": run_id} if run_id else {}))

    def beat(self, key: str) -> None:
        """The owner is alive (rungs on RDB storages: fmnist_lab.sweep.fidelity.running)."""
        self._put(key, beat=time.time())

    def stop(self, key: str, reason: str) -> None:
        self._put(key, state="stopped", reason=reason)

    @contextmanager
    def attempt(self, key: str, started: bool = False) -> Iterator[None]:
        """Do `key` once more: `running` now (`started`: the caller wrote that already, as a
        promotion is taken), `stopped` with the reason if it is cut short."""
        if not started:
            self.start(key)
        try:
            yield
        except KeyboardInterrupt:
            self.stop(key, INTERRUPTED)
            raise
        except Exception as err:
            self.stop(key, f"{type(err).__name__}: {err}"[:2000])
            raise
