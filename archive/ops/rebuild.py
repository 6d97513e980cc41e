"""The index message of a stored object, rebuilt from the object alone (the object store is the
source of truth): what ``verify --repair`` re-queues and ``reindex`` writes. Marked ``rebuild``:
it restores derived data only, without change-feed entries, events or forwarding rules."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import tempfile
from pathlib import Path

from pydicom.filereader import read_file_meta_info

from archive.core.models import IndexMessage
from archive.core.ports import ObjectStore
from archive.core.uids import uid_from_key
from archive.ingest.describe import dataset_offset, describe

log = logging.getLogger(__name__)


async def message_of(store: ObjectStore, key: str) -> IndexMessage | None:
    """None (logged) for an object whose key is not ours, that is not DICOM, or whose SOP Instance
    UID differs from its key's."""
    if uid_from_key(key) is None:
        log.warning("object with a foreign key left alone", extra={"key": key[:200]})
        return None
    with tempfile.TemporaryDirectory(prefix="archive-rebuild-") as tmp:
        path = Path(tmp) / "object.dcm"
        digest = hashlib.sha256()
        size = 0
        with open(path, "wb") as fh:
            async for chunk in store.get(key):
                fh.write(chunk)
                digest.update(chunk)
                size += len(chunk)
        try:
            offset = dataset_offset(path)
            if offset == 0:
                raise ValueError("not a DICOM Part 10 file")
            ts = str(read_file_meta_info(path).get("TransferSyntaxUID", ""))
            d = describe(path, ts, offset)
        except Exception as exc:
            log.warning("stored object cannot be described", extra={"key": key[:200], "error": type(exc).__name__})
            return None
    if uid_from_key(key) != d.sop_instance_uid:
        log.warning("stored object's SOP Instance UID does not match its key", extra={"key": key[:200]})
        return None
    return dataclasses.replace(d.index_message(key, size, digest.hexdigest(), source_aet=""), rebuild=True)
