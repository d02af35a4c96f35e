"""Where Optuna studies live: storage URLs, opening a storage, and PostgreSQL advisory locks.

Shared by the sweep (which writes studies) and the report (which reads them).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy.engine import make_url

from fmnist_lab.errors import UserError

if TYPE_CHECKING:
    import optuna
    from omegaconf import DictConfig
    from optuna.trial import FrozenTrial

    StaleCallback = Callable[[optuna.Study, FrozenTrial], None]


def storage_url(cfg: DictConfig) -> str:
    """`storage=` as given, or the journal file in the sweep's output directory."""
    return cfg.storage or f"journal:{Path(cfg.output_dir).resolve() / 'optuna.journal'}"


def redact(url: str) -> str:
    """The storage URL without its password, fit for tags and logs."""
    if url.startswith("journal:"):
        return url
    return make_url(url).render_as_string(hide_password=True)


def open_storage(url: str, heartbeat: DictConfig | None = None,
                 on_stale: StaleCallback | None = None) -> optuna.storages.BaseStorage:  # fmt: skip
    """The Optuna storage at `url`. With `heartbeat` (an RDB storage such as PostgreSQL), a
    RUNNING trial whose worker sent no heartbeat for `grace_s` seconds is ended FAIL by the
    next worker that asks for a trial, and `on_stale` is called with it: a dead machine's
    trial."""
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    if url.startswith("journal:"):
        path = Path(url.removeprefix("journal:"))
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if (
                not os.access(path.parent, os.W_OK)
                or path.exists()
                and not os.access(path, os.R_OK | os.W_OK)
            ):
                raise PermissionError("read-only")
            return JournalStorage(JournalFileBackend(str(path)))  # reads the whole journal
        except Exception as err:  # a file where a folder should be, read-only, damaged
            reason = " ".join(str(err).split())[:300] or type(err).__name__
            raise UserError(
                f"storage {url} cannot be opened ({reason}); fix its folder, or move a damaged "
                f"journal away"
            ) from None
    beats = {}
    if heartbeat is not None:
        check_heartbeat(heartbeat)
        beats = {
            "heartbeat_interval": heartbeat.interval_s,
            "grace_period": heartbeat.grace_s,
            "heartbeat_stale_trial_callback": on_stale,
        }
    try:
        # Machines starting at once on a new database would race to create Optuna's tables.
        with postgres_lock(url, "fmnist_lab:optuna-schema") if is_postgres(url) else nullcontext():
            return optuna.storages.RDBStorage(url, **beats)
    except ImportError:
        raise UserError(f"storage {redact(url)} needs its database driver installed") from None
    except Exception as err:  # unreachable server, bad credentials, malformed URL
        reason = " ".join(str(err).split())[:300]
        raise UserError(f"storage {redact(url)} cannot be opened: {reason}") from None


def check_heartbeat(heartbeat: DictConfig) -> None:
    if not 0 < heartbeat.interval_s < heartbeat.grace_s:
        raise UserError(f"heartbeat.interval_s={heartbeat.interval_s} must be positive and "
                        f"below heartbeat.grace_s={heartbeat.grace_s}")  # fmt: skip


def is_postgres(url: str) -> bool:
    return url.startswith(("postgresql", "postgres"))


@contextmanager
def postgres_lock(url: str, name: str, wait: bool = True) -> Iterator[bool]:
    """A PostgreSQL advisory lock named `name`, held by a connection of its own; yields
    whether it is held (False only when `wait` is false and another session holds it)."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    key = int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big",
                         signed=True)  # fmt: skip
    take = "pg_advisory_lock" if wait else "pg_try_advisory_lock"
    try:
        with engine.connect() as conn:
            got = conn.execute(sqlalchemy.text(f"SELECT {take}(:k)"), {"k": key}).scalar()
            held = wait or bool(got)  # pg_advisory_lock returns void once it holds it
            try:
                yield held
            finally:
                if held:
                    conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
    finally:
        engine.dispose()


def trial_id(storage: optuna.storages.BaseStorage, study_name: str, number: int) -> int:
    """Optuna's id of trial `number`, which heartbeats and `optuna.Trial` take: found through
    the storage's public API, since FrozenTrial and Trial keep theirs private."""
    study_id = storage.get_study_id_from_name(study_name)
    return storage.get_trial_id_from_study_id_trial_number(study_id, number)


def beats(storage) -> bool:
    """Whether an Optuna storage keeps heartbeats (an RDB storage opened with an interval)."""
    interval = getattr(storage, "get_heartbeat_interval", None)
    return interval is not None and bool(interval())
