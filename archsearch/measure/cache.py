"""On-disk cache of measurements: a repeated measurement is a lookup.

Keys are (metric, spec hash, resolution, device fingerprint, backend and its options) as canonical
JSON; values are the JSON of the result. SQLite (WAL) so that many search workers on one machine can
share it safely. Location: ``$ARCHSEARCH_CACHE_DIR`` or ``~/.cache/archsearch``.
"""
from __future__ import annotations

import json
import os
import sqlite3
import threading
from pathlib import Path
from typing import Any, Mapping, Optional

__all__ = ["MeasureCache", "default_cache_dir"]


def default_cache_dir() -> Path:
    return Path(os.environ.get("ARCHSEARCH_CACHE_DIR") or Path.home() / ".cache" / "archsearch")


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
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("CREATE TABLE IF NOT EXISTS measurements (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            conn.commit()
            self._conn = conn
        return self._conn

    @staticmethod
    def key(**parts: Any) -> str:
        return json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)

    def get(self, key: str) -> Optional[dict]:
        if not self.enabled:
            return None
        with self._lock:
            row = self._db().execute("SELECT value FROM measurements WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def put(self, key: str, value: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        with self._lock:
            db = self._db()
            db.execute("INSERT OR REPLACE INTO measurements (key, value) VALUES (?, ?)", (key, json.dumps(value)))
            db.commit()

    def __len__(self) -> int:
        if not self.enabled:
            return 0
        with self._lock:
            return self._db().execute("SELECT COUNT(*) FROM measurements").fetchone()[0]

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
