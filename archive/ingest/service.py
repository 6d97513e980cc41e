"""The ingest service: a received instance becomes durable and queued, or nothing.

``prepare`` does the local work on the receiver's thread (parse the header up
to the pixel data, validate UIDs, checksum). ``commit`` talks to the backends:
object store first, then the queue. Success means both are durable.

If the publish fails the answer is a failure, but the object is not deleted: the
broker may have taken the message before the failure showed (a lost confirm), and
another association may have just answered Success for the same bytes. Deleting
could leave an indexed instance without its object or lose an acknowledged one. The
left object is complete; a re-send (identical, so published again) or
``dicom-archive verify --repair`` indexes it.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from archive import metrics
from archive.core.errors import BackendUnavailable, DuplicateConflict, UIDMismatch
from archive.core.models import FilePart, Payload
from archive.core.ports import MessageQueue, ObjectStore
from archive.core.uids import object_key, validate_uid
from archive.ingest.describe import Description, dataset_offset, describe, file_meta_bytes
from archive.settings import DuplicatePolicy

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Spooled:
    """A spool file written as the object will be stored: ``header`` (preamble and File Meta
    built with ``file_meta_bytes`` from the command's UIDs) ahead of the dataset, ``size``
    bytes in all with this SHA-256 (hashed as it arrived). When the dataset proves to be the
    instance the command named, the file is the object and an object store may link it
    instead of copying it."""

    header: bytes
    size: int
    sha256: str


@dataclass(frozen=True)
class Received:
    """One instance as a receiver got it: the dataset spooled to a local file."""

    dataset_path: Path  # the encoded dataset, with or without preamble + File Meta
    transfer_syntax_uid: str
    source_aet: str
    affected_sop_class_uid: str | None = None  # from the C-STORE command, if any
    affected_sop_instance_uid: str | None = None
    spooled: Spooled | None = None  # the file starts with our own File Meta (see Spooled)


@dataclass(frozen=True)
class Prepared:
    description: Description
    payload: Payload
    key: str
    source_aet: str
    message: bytes  # the index message, encoded off the event loop


class Outcome(str, Enum):
    STORED = "stored"
    IDENTICAL = "identical"  # re-sent, same bytes: success, re-queued
    KEPT_FIRST = "kept_first"  # same UID, other bytes: first kept (warning)
    REPLACED = "replaced"  # same UID, other bytes: replaced (policy)


@dataclass(frozen=True)
class StoreResult:
    outcome: Outcome
    sop_instance_uid: str
    key: str


def _sha256(parts: tuple[bytes | Path | FilePart, ...]) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    for chunk in Payload(parts, 0, "").chunks():
        digest.update(chunk)
        size += len(chunk)
    return digest.hexdigest(), size


class IngestService:
    def __init__(self, store: ObjectStore, queue: MessageQueue, policy: DuplicatePolicy) -> None:
        self.store = store
        self.queue = queue
        self.policy = policy

    def prepare(self, received: Received) -> Prepared:
        """Parse and validate locally (blocking; call from a worker thread)."""
        if received.affected_sop_instance_uid is not None:
            validate_uid(received.affected_sop_instance_uid, "AffectedSOPInstanceUID")
        if received.affected_sop_class_uid is not None:
            validate_uid(received.affected_sop_class_uid, "AffectedSOPClassUID")
        spooled = received.spooled
        offset = dataset_offset(received.dataset_path, len(spooled.header) if spooled else 0)
        description = describe(received.dataset_path, received.transfer_syntax_uid, offset)
        # PS3.4 B.2.3: the dataset must be the instance the command announced
        if (
            received.affected_sop_instance_uid is not None
            and description.sop_instance_uid != received.affected_sop_instance_uid
        ):
            raise UIDMismatch("SOP Instance UID in the dataset differs from the command's Affected SOP Instance UID")
        if (
            received.affected_sop_class_uid is not None
            and description.sop_class_uid != received.affected_sop_class_uid
        ):
            raise UIDMismatch("SOP Class UID in the dataset differs from the command's Affected SOP Class UID")
        # No Source AE Title in the stored File Meta: the same instance sent by two peers
        # must be the same bytes (the sender is recorded in the index message instead).
        header = file_meta_bytes(
            description.sop_class_uid,
            description.sop_instance_uid,
            description.transfer_syntax_uid,
        )
        if spooled is not None and spooled.header == header and offset == len(header):
            parts: tuple[bytes | Path | FilePart, ...] = (FilePart(received.dataset_path),)
            size, sha256 = spooled.size, spooled.sha256
        else:
            parts = (header, FilePart(received.dataset_path, offset))
            sha256, size = _sha256(parts)
        payload = Payload(parts=parts, size=size, sha256=sha256, adoptable=len(parts) == 1)
        key = object_key(description.sop_instance_uid)
        return Prepared(
            description=description,
            payload=payload,
            key=key,
            source_aet=received.source_aet,
            message=description.index_message(key, size, sha256, received.source_aet).to_bytes(),
        )

    async def _existing_sha256(self, key: str, recorded: str | None) -> str:
        if recorded:
            return recorded
        digest = hashlib.sha256()
        async for chunk in self.store.get(key):
            digest.update(chunk)
        return digest.hexdigest()

    async def commit(self, prepared: Prepared) -> StoreResult:
        uid = prepared.description.sop_instance_uid
        result = await self.store.put(prepared.key, prepared.payload, if_absent=True)
        if result.created:
            await self._publish(prepared)
            metrics.INGEST_BYTES.inc(prepared.payload.size)
            return StoreResult(Outcome.STORED, uid, prepared.key)

        existing = await self._existing_sha256(prepared.key, result.info.sha256)
        if existing == prepared.payload.sha256:
            await self._publish(prepared)
            metrics.DUPLICATES.labels("identical").inc()
            log.info("identical instance received again", extra={"sop_instance_uid": uid})
            return StoreResult(Outcome.IDENTICAL, uid, prepared.key)

        if self.policy is DuplicatePolicy.REPLACE:
            await self.store.put(prepared.key, prepared.payload, if_absent=False)
            await self._publish(prepared)
            metrics.DUPLICATES.labels("replaced").inc()
            log.warning("instance replaced by different content", extra={"sop_instance_uid": uid})
            return StoreResult(Outcome.REPLACED, uid, prepared.key)
        if self.policy is DuplicatePolicy.REJECT:
            metrics.DUPLICATES.labels("rejected").inc()
            log.warning("different content under an archived SOP Instance UID rejected",
                        extra={"sop_instance_uid": uid})
            raise DuplicateConflict(f"SOP Instance UID {uid} is archived with different content")
        metrics.DUPLICATES.labels("kept_first").inc()
        log.warning("different content under an archived SOP Instance UID; first kept",
                    extra={"sop_instance_uid": uid})
        return StoreResult(Outcome.KEPT_FIRST, uid, prepared.key)

    async def _publish(self, prepared: Prepared) -> None:
        """Queue the index message; on failure the object stays (see the module docstring)."""
        try:
            await self.queue.publish(prepared.message)
        except BackendUnavailable:
            log.warning("object stored but not queued; a re-send or `verify --repair` indexes it",
                        extra={"sop_instance_uid": prepared.description.sop_instance_uid})
            raise
