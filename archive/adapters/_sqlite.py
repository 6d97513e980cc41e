"""Opening SQLite files the same way for every embedded adapter.

WAL (readers never block the writer), a busy timeout, and errors that mean
"cannot use the file now" mapped to BackendUnavailable.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from archive.core.errors import BackendUnavailable
from archive.core.retry import Backoff, retrying_sync


class _Locked(Exception):
    """Another connection holds the file while we switch it to WAL."""


def enable_wal(con: sqlite3.Connection, busy_timeout: float) -> None:
    """Switch the file to WAL once; the switch fails "locked" at once (the busy timeout does not
    apply to it), so it is tried again for up to ``busy_timeout`` seconds."""

    def switch() -> None:
        try:
            if con.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                con.execute("PRAGMA journal_mode=WAL")
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc):
                raise _Locked(str(exc)) from exc
            raise

    try:
        retrying_sync(Backoff(first=0.02, cap=0.2, within=busy_timeout), _Locked)(switch)
    except _Locked as exc:
        assert isinstance(exc.__cause__, sqlite3.OperationalError)
        raise exc.__cause__ from None


def connect(
    path: Path,
    backend: str,
    *,
    synchronous: str = "NORMAL",
    busy_timeout: float = 30.0,
    reader: bool = False,
    check_same_thread: bool = True,
) -> sqlite3.Connection:
    """An autocommit connection (explicit BEGIN) in WAL mode.

    A file that cannot be opened or set up raises BackendUnavailable(``backend``).
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        con = sqlite3.connect(path, timeout=busy_timeout, isolation_level=None, check_same_thread=check_same_thread)
    except (OSError, sqlite3.Error) as exc:
        raise BackendUnavailable(backend, f"cannot open {path}: {exc}") from exc
    try:
        if not reader:
            enable_wal(con, busy_timeout)
        con.execute(f"PRAGMA synchronous={synchronous}")
        con.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
        if reader:
            con.execute("PRAGMA query_only=ON")
    except (OSError, sqlite3.Error) as exc:
        con.close()
        raise BackendUnavailable(backend, f"cannot open {path}: {exc}") from exc
    except BaseException:
        con.close()
        raise
    return con
