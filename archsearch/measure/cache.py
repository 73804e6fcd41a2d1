"""On-disk cache of measurements: a repeated measurement is a lookup.

Keys are (metric, spec hash, resolution, device fingerprint, backend and its options) as canonical
JSON; values are the JSON of the result. SQLite (WAL) so that many search workers on one machine can
share it safely. Location: ``$ARCHSEARCH_CACHE_DIR`` or ``~/.cache/archsearch``.
"""
from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, TypeVar

__all__ = ["MeasureCache", "default_cache_dir", "set_aside"]

T = TypeVar("T")
#: How long a cache operation waits for a database another process holds locked before the cache is dropped.
LOCK_WAIT_S = 60.0


def _is_lock(e: sqlite3.OperationalError) -> bool:
    text = str(e).lower()
    return "locked" in text or "busy" in text

_log = logging.getLogger("archsearch")


def default_cache_dir() -> Path:
    return Path(os.environ.get("ARCHSEARCH_CACHE_DIR") or Path.home() / ".cache" / "archsearch")


def set_aside(path: Path, reason: str, suffixes: tuple = ("",)) -> Optional[Path]:
    """Move a damaged cache file out of the way (``NAME.damaged-TIME``) with one warning; a cache is
    disposable, so the caller goes on with a fresh one. Another process may have moved it already."""
    stamp = time.strftime("%Y%m%dT%H%M%S")
    moved = None
    for suffix in suffixes:
        src = Path(f"{path}{suffix}")
        dst = src.with_name(f"{path.name}.damaged-{stamp}-{os.getpid()}{suffix}")
        try:
            src.replace(dst)
        except FileNotFoundError:
            continue
        moved = moved or dst
    if moved is not None:
        _log.warning("damaged cache %s (%s): moved to %s; starting a fresh one", path, reason, moved)
    return moved


class MeasureCache:
    def __init__(self, path: Optional[Path | str] = None, *, enabled: bool = True) -> None:
        self.enabled = enabled
        self.path = Path(path) if path else default_cache_dir() / "measurements.sqlite"
        self._conn: Optional[sqlite3.Connection] = None
        self._lock = threading.Lock()

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=30, check_same_thread=False)
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("CREATE TABLE IF NOT EXISTS measurements (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
                conn.commit()
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    def _recovering(self, op: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``op`` on the database; a damaged file (not a lock or a full disk) is set aside once and
        ``op`` runs again on a fresh one. A database another process holds locked is waited for: SQLite's
        own busy wait does not cover every case (two processes creating the file and switching it to WAL at
        once get "database is locked" at once), so ``op`` is retried for up to ``LOCK_WAIT_S``."""
        deadline = time.monotonic() + LOCK_WAIT_S
        pause = 0.01
        attempt = 0
        while True:
            try:
                return op(self._db())
            except sqlite3.OperationalError as e:
                if not _is_lock(e) or time.monotonic() > deadline:
                    raise
                if self._conn is not None and self._conn.in_transaction:
                    self._conn.rollback()
                time.sleep(pause)
                pause = min(pause * 2, 0.5)
            except sqlite3.DatabaseError as e:
                if attempt:
                    raise
                attempt += 1
                self.close()
                set_aside(self.path, str(e), suffixes=("", "-wal", "-shm"))

    @staticmethod
    def key(**parts: Any) -> str:
        return json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)

    def _unusable(self, e: Exception) -> None:
        """A cache that cannot be read or written (a full disk, a read-only directory) is dropped for this
        process with one warning naming it: measurements go on, uncached."""
        _log.warning("measurement cache %s unusable (%s); going on without it", self.path, str(e).splitlines()[0][:120])
        self.enabled = False
        self.close()

    def get(self, key: str) -> Optional[dict]:
        if not self.enabled:
            return None
        try:
            with self._lock:
                row = self._recovering(lambda db: db.execute("SELECT value FROM measurements WHERE key = ?", (key,)).fetchone())
        except (sqlite3.OperationalError, OSError) as e:
            self._unusable(e)
            return None
        try:
            return json.loads(row[0]) if row else None
        except ValueError:  # a damaged row is a miss: it is measured again and replaced
            return None

    def put(self, key: str, value: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        def op(db: sqlite3.Connection) -> None:
            db.execute("INSERT OR REPLACE INTO measurements (key, value) VALUES (?, ?)", (key, json.dumps(value)))
            db.commit()

        try:
            with self._lock:
                self._recovering(op)
        except (sqlite3.OperationalError, OSError) as e:
            self._unusable(e)

    def __len__(self) -> int:
        if not self.enabled:
            return 0
        with self._lock:
            return self._recovering(lambda db: db.execute("SELECT COUNT(*) FROM measurements").fetchone()[0])

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
