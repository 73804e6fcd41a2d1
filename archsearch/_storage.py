"""What a storage URL names on disk: one reading of ``sqlite:///`` URLs for every caller."""
from __future__ import annotations

from pathlib import Path
from typing import Optional


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
