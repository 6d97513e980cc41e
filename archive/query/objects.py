"""Stored objects read back to local files: :func:`spool`, and the :class:`ObjectCache` over it.

:func:`spool` streams an instance's object from the object store into a file and
verifies its SHA-256 against the catalog's; DIMSE retrieve
(:mod:`archive.query.dimse.retrieve`) sends such files, WADO-RS converts them.

:class:`ObjectCache` keeps recently read objects as local files for frames,
rendering and bulk data (:mod:`archive.query.dicomweb`). A viewer asks for the
frames of a multi-frame instance one request at a time; without a cache each
request would copy the whole object out of the object store again. Files stay
while the total is under ``capacity`` bytes; the least recently used file goes
first, never while a request is reading it. One download per object at a time:
concurrent requests for it wait for the same file. Files are keyed by object key
and SHA-256, so a replaced object (duplicate policy ``replace``) is never served
from an older copy.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import tempfile
from collections import OrderedDict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from archive import metrics
from archive.core.errors import ArchiveError
from archive.core.ports import ObjectStore
from archive.core.records import CatalogInstance

log = logging.getLogger(__name__)


class RetrieveError(ArchiveError):
    """An instance could not be read back (missing object, checksum mismatch)."""


async def spool(store: ObjectStore, instance: CatalogInstance, directory: Path) -> Path:
    """Stream the instance's object into a file under ``directory``; verify its checksum."""
    fd, name = tempfile.mkstemp(prefix="retrieve-", suffix=".dcm", dir=directory)
    path = Path(name)
    digest = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out:
            async for chunk in store.get(instance.object_key):
                digest.update(chunk)
                out.write(chunk)
        if instance.sha256 and digest.hexdigest() != instance.sha256:
            raise RetrieveError(f"{instance.sop_instance_uid}: stored object does not match its checksum")
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path


@dataclass
class _Entry:
    path: Path
    size: int
    readers: int = 0


class ObjectCache:
    def __init__(self, store: ObjectStore, directory: Path, capacity: int) -> None:
        self.store = store
        self.directory = directory
        self.capacity = capacity
        self._entries: OrderedDict[tuple[str, str], _Entry] = OrderedDict()
        self._downloads: dict[tuple[str, str], asyncio.Lock] = {}
        self.total = 0

    @asynccontextmanager
    async def open(self, instance: CatalogInstance) -> AsyncIterator[Path]:
        """The instance's object as a local file, readable for the duration of the block."""
        key = (instance.object_key, instance.sha256)
        entry = self._entries.get(key)
        if entry is None:
            lock = self._downloads.setdefault(key, asyncio.Lock())
            try:
                async with lock:
                    entry = self._entries.get(key)
                    if entry is None:  # nobody fetched it while we waited
                        metrics.OBJECT_CACHE.labels("miss").inc()
                        path = await spool(self.store, instance, self.directory)
                        entry = self._entries.get(key)
                        if entry is None:
                            entry = self._entries[key] = _Entry(path, path.stat().st_size)
                            self.total += entry.size
                        else:  # fetched meanwhile by a request that came after a failed download
                            path.unlink(missing_ok=True)
            finally:
                self._downloads.pop(key, None)
        else:
            metrics.OBJECT_CACHE.labels("hit").inc()
        self._entries.move_to_end(key)
        entry.readers += 1
        try:
            yield entry.path
        finally:
            entry.readers -= 1
            self._evict()

    def _evict(self) -> None:
        for key in list(self._entries):
            if self.total <= self.capacity:
                return
            entry = self._entries[key]
            if entry.readers:
                continue
            del self._entries[key]
            self.total -= entry.size
            entry.path.unlink(missing_ok=True)

    def clear(self) -> None:
        """Remove every file (shutdown); files being read are removed too."""
        for entry in self._entries.values():
            entry.path.unlink(missing_ok=True)
        self._entries.clear()
        self.total = 0
