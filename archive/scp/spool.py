"""Where receivers spool incoming datasets: one directory per process, swept of the dead.

A receiver killed mid-transfer (kill -9, or pynetdicom on an aborted association)
leaves partial spool files; they are removed when the next receiver starts.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

log = logging.getLogger(__name__)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def process_spool(data_dir: Path) -> Path:
    """This process's spool directory, after removing those of processes that are gone."""
    root = data_dir / "spool"
    root.mkdir(parents=True, exist_ok=True)
    removed = 0
    for entry in root.iterdir():
        if entry.is_dir() and entry.name.isdigit() and int(entry.name) != os.getpid() and not _alive(int(entry.name)):
            shutil.rmtree(entry, ignore_errors=True)
            removed += 1
        elif entry.is_file():  # spool files of older versions, before per-process directories
            entry.unlink(missing_ok=True)
            removed += 1
    if removed:
        log.info("removed spool left by receivers that are gone", extra={"entries": removed})
    mine = root / str(os.getpid())
    mine.mkdir(exist_ok=True)
    return mine
