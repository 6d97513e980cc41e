"""The local audit file: every record, one per line, appended; rotated by size, N files kept.

Every process of a command (``serve``'s receivers, ``scp --workers N``) appends to the same
file. Each line is one ``write(2)`` on a descriptor opened with O_APPEND, under an exclusive
``flock`` on a sidecar lock file that also serialises rotation: the process that finds the
file full renames ``audit.log`` to ``audit.log.1`` (``.1`` to ``.2``, ...; the oldest beyond
``keep`` is removed), and every process notices the rename (the path's inode changed) before
its next write and reopens. Lines are not fsynced: a record survives a crash of the process,
not a power loss.
"""

from __future__ import annotations

import fcntl
import os
import threading
from pathlib import Path


class AuditFile:
    """Appends records to ``path``; rotates when a write would take it past ``max_bytes``."""

    def __init__(self, path: Path, max_bytes: int, keep: int) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.keep = keep
        self._fd: int | None = None
        self._inode: tuple[int, int] | None = None
        self._lock_fd: int | None = None
        self._mutex = threading.Lock()  # threads of this process; flock serialises the processes

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self._lock_fd is None:
            self._lock_fd = os.open(f"{self.path}.lock", os.O_WRONLY | os.O_CREAT, 0o640)
        self._close_file()
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        st = os.fstat(self._fd)
        self._inode = (st.st_dev, st.st_ino)

    def _close_file(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _current(self) -> bool:
        """Is our descriptor still the file at ``path`` (not rotated away by another process)?"""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return False
        return (st.st_dev, st.st_ino) == self._inode

    def _rotate(self) -> None:
        oldest = Path(f"{self.path}.{self.keep}")
        oldest.unlink(missing_ok=True)
        for n in range(self.keep - 1, 0, -1):
            older = Path(f"{self.path}.{n}")
            if older.exists():
                older.rename(f"{self.path}.{n + 1}")
        self.path.rename(f"{self.path}.1")

    def append(self, line: str) -> None:
        """Write ``line`` (no newline in it) and a newline; raises OSError (disk full, ...)."""
        data = line.encode("utf-8") + b"\n"
        with self._mutex:
            if self._fd is None:
                self._open()
            assert self._lock_fd is not None
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
            try:
                if not self._current():
                    self._open()
                assert self._fd is not None
                size = os.fstat(self._fd).st_size
                if size and size + len(data) > self.max_bytes:
                    self._rotate()
                    self._open()
                view = memoryview(data)
                while view:  # a regular file takes it all at once unless the disk is full
                    view = view[os.write(self._fd, view):]
            finally:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def close(self) -> None:
        with self._mutex:
            self._close_file()
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None
