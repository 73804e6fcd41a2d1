"""Where a study lives and who works on it: the storage URL, worker liveness, and the claim on the budget.

* One reading of ``sqlite:///`` URLs for every caller (:func:`sqlite_file`).
* :func:`open_storage`: Optuna's RDB storage with heartbeats (a dead worker's trial is failed and retried),
  created once even when workers start together on a fresh database.
* Worker liveness on this host: each trial names its process (:data:`WORKER`); a trial whose process is
  gone is failed at once (:func:`fail_trials_of_dead_workers`) instead of after the heartbeat's grace.
* :class:`BudgetLock`: "count the study's trials, then start one" as one step across processes (a
  PostgreSQL advisory lock, or a file lock beside a SQLite file), so that N workers stop at exactly
  ``n_trials``.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import socket
import warnings
from pathlib import Path
from typing import Callable, Iterator, Optional

from . import _optuna
from ._record import ATTR_WORKER

__all__ = ["BudgetLock", "WORKER", "dead_local_worker", "fail_running", "fail_trials_of_dead_workers", "open_storage",
           "process_gone", "quiet_experimental", "retry_callback", "sqlite_file"]


def sqlite_file(url: str) -> Optional[Path]:
    """The database file of a file-backed SQLite URL (``sqlite:///rel.db``, ``sqlite:////abs.db``, query
    parameters allowed); None for other databases, ``:memory:``, ``file:`` URIs and malformed URLs."""
    if not url.startswith("sqlite:"):
        return None
    from sqlalchemy.engine import make_url

    try:
        db = make_url(url).database
    except Exception:  # noqa: BLE001 - a malformed URL is reported by whoever opens it
        return None
    if not db or db == ":memory:" or db.startswith("file:"):
        return None
    return Path(db)


@contextlib.contextmanager
def quiet_experimental() -> Iterator[None]:
    """Optuna's ExperimentalWarning silenced for the block: archsearch uses the heartbeat retry, metric names and
    the newer samplers on purpose, and a user cannot act on the warning."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


def retry_callback(max_retry: int):
    """The one retry rule for a trial whose worker died: re-queued with the same parameters, ``max_retry`` times."""
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    with quiet_experimental():
        return RetryHeartbeatStaleTrialCallback(max_retry=max_retry)


def open_storage(url: str, *, heartbeat_s: int, grace_s: int, max_retry: int):
    """The Optuna storage behind ``url`` (``memory``: one process, nothing kept); one-line errors."""
    import optuna
    from optuna.storages import RDBStorage

    from .errors import ConfigError, mask_secrets

    if url == "memory":  # one process, nothing kept: benchmarks and experiments in a notebook
        return optuna.storages.InMemoryStorage()
    if url.startswith("sqlite") and sqlite_file(url) is None:
        # Every SQLAlchemy connection to sqlite:// is a database of its own: the heartbeat thread would find
        # no tables (a 76-line traceback), and nothing would be kept anyway.
        raise ConfigError("storage", f"{url}: an in-memory SQLite database cannot hold a study that workers and "
                                     "heartbeats share; use sqlite:///FILE.db, or storage=memory for one process")
    # A worker needs two connections at once (its loop and its heartbeat thread): SQLAlchemy's default pool keeps up
    # to 5 idle and 10 more per process, so a few dozen workers would fill a PostgreSQL server's 100 connections.
    engine_kwargs = ({"connect_args": {"timeout": 60}} if url.startswith("sqlite")
                     else {"pool_pre_ping": True, "pool_size": 2, "max_overflow": 2})
    try:
        # Workers that start together on a fresh database would all create Optuna's tables at once (on
        # PostgreSQL one dies with a UniqueViolation): the first creates them, the others wait for it.
        with quiet_experimental(), BudgetLock(url, "__schema__").held():
            return RDBStorage(url, engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat_s, grace_period=grace_s,
                              heartbeat_stale_trial_callback=retry_callback(max_retry))
    except Exception as e:  # noqa: BLE001 - SQLAlchemy raises many kinds; the user needs one line
        raise ConfigError("storage",
                          mask_secrets(f"cannot open {url}: {type(e).__name__}: {str(e).splitlines()[0][:200]}")) from None


# --- worker liveness -------------------------------------------------------------------------------------------

def _proc_start(pid: int) -> Optional[str]:
    """Start time (clock ticks since boot) of a live process, None when there is none (or a zombie)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] in ("Z", "X") else fields[19]


def process_gone(pid: int) -> bool:
    """Whether no live process has ``pid`` on this host (a zombie counts as gone)."""
    return _proc_start(pid) is None


#: This process as a trial's ``worker`` attribute: host, pid and start time (a reused pid is another process).
WORKER = f"{socket.gethostname()}:{os.getpid()}:{_proc_start(os.getpid()) or 0}"


def dead_local_worker(worker: Optional[str]) -> Optional[int]:
    """The pid of ``worker`` when it ran on this host and its process is gone, else None."""
    parts = (worker or "").rsplit(":", 2)
    if len(parts) != 3 or parts[0] != socket.gethostname() or not parts[1].isdigit():
        return None
    pid = int(parts[1])
    if pid == os.getpid():
        return None
    if os.path.isdir("/proc/self"):
        start = _proc_start(pid)
        return None if start is not None and parts[2] in ("0", start) else pid
    try:  # no /proc: a signal 0 tells whether the pid exists
        os.kill(pid, 0)
    except ProcessLookupError:
        return pid
    except PermissionError:
        pass
    return None


def fail_running(storage, trial_id: int, error: str) -> bool:
    """Fail a RUNNING trial with ``error`` as its reason; False when it has finished already (another worker, or
    Optuna, got there first). Other storage errors propagate."""
    import optuna
    from optuna.trial import TrialState

    try:
        storage.set_trial_user_attr(trial_id, "error", error)
        return storage.set_trial_state_values(trial_id, TrialState.FAIL)
    except (optuna.exceptions.UpdateFinishedTrialError, RuntimeError):
        return False


def fail_trials_of_dead_workers(study, *, max_retry: int, warn: Callable[[str], None]) -> None:
    """Fail (and re-queue) every RUNNING trial whose worker ran on this host and is gone, then every trial
    whose heartbeat went stale elsewhere: neither may hold a budget slot."""
    import optuna
    from optuna.trial import TrialState

    storage = _optuna.storage_of(study)
    if isinstance(storage, optuna.storages.InMemoryStorage):
        return
    with quiet_experimental():
        retry = retry_callback(max_retry)
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            pid = dead_local_worker(t.user_attrs.get(ATTR_WORKER))
            if pid is None:
                continue
            if not fail_running(storage, _optuna.trial_id(t), f"its worker (pid {pid} on this host) died"):
                continue  # another worker got there first
            warn(f"trial {t.number}: its worker (pid {pid}) is gone; the trial is failed and retried")
            retry(study, storage.get_trial(_optuna.trial_id(t)))
        optuna.storages.fail_stale_trials(study)


# --- the claim on the budget -----------------------------------------------------------------------------------

class BudgetLock:
    """Serialises "count the study's trials, then start one" across processes sharing a storage."""

    def __init__(self, url: str, study_name: str) -> None:
        self.url = url
        self.key = int(hashlib.sha256(f"archsearch:{study_name}".encode()).hexdigest()[:15], 16)
        self._held: Optional[Callable[[], None]] = None

    def acquire(self) -> None:
        path = sqlite_file(self.url)
        if path is not None:
            lock = open(f"{path}.{self.key:x}.lock", "w")
            fcntl.flock(lock, fcntl.LOCK_EX)

            def release() -> None:
                fcntl.flock(lock, fcntl.LOCK_UN)
                lock.close()
        elif self.url.startswith("postgresql"):
            import sqlalchemy

            engine = sqlalchemy.create_engine(self.url, poolclass=sqlalchemy.pool.NullPool)
            conn = engine.connect()
            conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": self.key})

            def release() -> None:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": self.key})
                conn.close()
                engine.dispose()
        else:  # memory (also sqlite :memory:) and other databases: one process at a time is still exact
            def release() -> None:
                pass

        self._held = release

    def release(self) -> None:
        if self._held is not None:
            held, self._held = self._held, None
            held()

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        self.acquire()
        try:
            yield
        finally:
            self.release()
