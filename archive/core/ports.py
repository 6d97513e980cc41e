"""Ports: the small interfaces every backend adapter implements.

Each has an embedded default (filesystem, SQLite, FTS5) and a distributed
adapter (S3/MinIO, RabbitMQ, PostgreSQL, OpenSearch); the same contract tests
run against both. Capabilities are data, not extra methods.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from archive.core.changes import Change, Deleted, Deletion, UpsertOutcome
from archive.core.identity import Role
from archive.core.models import DicomJson, ObjectInfo, Payload, PutResult, SearchDocument
from archive.core.query import Query
from archive.core.records import CatalogEntry, CatalogInstance
from archive.core.search import SearchRequest, SearchResult


@runtime_checkable
class Backend(Protocol):
    """What every adapter offers for start-up and readiness."""

    name: str  # "filesystem", "s3", "sqlite-queue", "amqp", ... (for logs and /readyz)

    async def migrate(self) -> None:
        """Create or upgrade what the backend needs (idempotent)."""

    async def ping(self) -> None:
        """Raise BackendUnavailable unless the backend answers now."""

    async def close(self) -> None: ...


class ObjectStore(Backend, Protocol):
    # put() fsyncs an adoptable payload's file and links it: a receiver may start the fsync early
    syncs_adoptable: bool

    async def put(self, key: str, payload: Payload, *, if_absent: bool = True) -> PutResult:
        """Store durably. With ``if_absent`` an existing object is kept and reported."""

    async def head(self, key: str) -> ObjectInfo | None: ...

    def get(self, key: str) -> AsyncIterator[bytes]:
        """Stream the object's bytes; raises ObjectNotFound."""

    async def get_range(self, key: str, start: int, length: int) -> bytes: ...

    async def delete(self, key: str) -> None: ...

    def list(self, prefix: str = "") -> AsyncIterator[ObjectInfo]:
        """Every object under ``prefix`` (checksums where the store keeps them)."""


class Delivery(Protocol):
    """One message handed to a consumer; settled exactly once."""

    body: bytes
    delivery_count: int  # 1 on first delivery

    async def ack(self) -> None:
        """Done: remove the message for good."""

    async def retry(self, delay: float) -> None:
        """Give the message back for a later delivery (counts towards the limit)."""


@dataclass(frozen=True)
class QueueDepth:
    ready: int  # waiting or in flight
    dead: int  # in the dead-letter queue


@dataclass(frozen=True)
class DeadLetter:
    body: bytes
    delivery_count: int
    reason: str


class MessageQueue(Backend, Protocol):
    """At-least-once queue of index messages with a dead-letter queue.

    A message delivered ``delivery_limit`` times without an ack is moved to the
    dead-letter queue instead of being delivered again.
    """

    async def publish(self, body: bytes) -> None:
        """Return only once the message is durable (broker confirm / commit)."""

    async def receive(self, max_messages: int, timeout: float) -> list[Delivery]:
        """Up to ``max_messages`` deliveries, waiting at most ``timeout`` for the first."""

    async def depth(self) -> QueueDepth: ...

    async def dead_letters(self, limit: int = 100) -> list[DeadLetter]: ...

    async def replay(self, limit: int = 100) -> int:
        """Move up to ``limit`` dead letters, oldest first, back to the queue as new messages
        (delivery count from zero); how many were moved. Each is queued before it leaves the
        dead-letter queue, so a failure in between duplicates it, never loses it."""


@dataclass(frozen=True)
class InstanceMetadata:
    """One instance's stored DICOM JSON as text, bulk values as ``"BulkDataURI": "bulk:<tag>"``."""

    study_uid: str
    series_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    indexed_at: float
    json: str
    sop_class_uid: str = ""
    patient_id: str = ""  # for the audit trail, never for logs


class Catalog(Backend, Protocol):
    """The relational catalog of patients, studies, series and instances."""

    async def upsert(self, entries: Sequence[CatalogEntry], *, changes: bool = True) -> UpsertOutcome:
        """Insert or update every entry in one transaction (idempotent by SOP UID).

        An entry received (``received_at``) at or before its instance's tombstone is dropped; a
        later one clears the tombstone. The change feed's entries (created, updated) are written
        in the same transaction, unless ``changes`` is False (a rebuild: reindex, verify --repair).
        """

    async def delete(self, deletion: Deletion, at: float) -> Deleted:
        """Remove the instances (and the series, studies and patients left empty), tombstone
        them at ``at`` and write their ``deleted`` changes, in one transaction."""

    async def tombstoned(self, sop_instance_uids: Sequence[str]) -> set[str]:
        """Those of the UIDs that have a tombstone now."""

    async def changes(self, since: int, limit: int) -> list[Change]:
        """The change feed after ``since``, in increasing seq (a prefix of what is committed)."""

    async def find(self, query: Query) -> list[DicomJson]:
        """Match ``query`` at its level; DICOM JSON with the requested return keys."""

    async def count_instances(self) -> int: ...

    def instances(self) -> AsyncIterator[CatalogInstance]: ...

    async def get_instance(self, sop_instance_uid: str) -> CatalogInstance | None: ...

    async def locate(self, query: Query) -> list[CatalogInstance]:
        """The stored instances under what ``query`` matches, at most ``query.limit``.

        Matchers apply as at IMAGE level (a study-level retrieve names study UIDs);
        ordered by study, series and instance number.
        """

    async def metadata(self, query: Query) -> list[InstanceMetadata]:
        """The stored metadata of what :meth:`locate` lists, as JSON text (never decoded),
        honouring ``query.limit`` and ``query.offset`` (WADO-RS metadata)."""


@dataclass(frozen=True)
class SearchHit:
    sop_instance_uid: str
    study_uid: str
    series_uid: str
    score: float


class SearchIndex(Backend, Protocol):
    """Free-text search over every attribute of every instance."""

    async def upsert(self, documents: Sequence[SearchDocument]) -> None:
        """Write documents (id = SOP Instance UID); searchable when this returns."""

    async def delete(self, sop_instance_uids: Sequence[str], study_uids: Collection[str] = ()) -> None:
        """Remove the documents (unknown ids are no error); gone from searches when this returns.
        ``study_uids``: the studies they were in, when the caller knows them (an index keeping
        per-study entries updates these too, also when a retry finds the documents gone)."""

    async def search(self, text: str, limit: int = 20) -> list[SearchHit]:
        """Instances whose text holds every term (plain terms, ``term*`` prefixes), best first."""

    async def query(self, request: SearchRequest) -> SearchResult:
        """Free text and filters at ``request.level``: the total, one page of hits, facets."""

    async def count(self) -> int: ...

    def ids(self) -> AsyncIterator[str]: ...


@runtime_checkable
class StudyDocumentsSearch(SearchIndex, Protocol):
    """A search index that keeps a document per study beside the instance documents (OpenSearch)."""

    async def rebuild_study_documents(self) -> int:
        """Recompute every study's document from the instance documents; the number of studies."""

    async def verify_study_documents(self, repair: bool) -> list[str]:
        """The studies whose document differs from their instance documents; ``repair`` recomputes them."""


@dataclass(frozen=True)
class ApiKey:
    """A long-lived API key as stored: never the key itself, only its SHA-256 digest."""

    name: str
    role: Role
    created_at: float  # seconds since the epoch
    last_used_at: float | None = None


@runtime_checkable
class ApiKeys(Backend, Protocol):
    """API keys of scripts and integrations, in the catalog's database (table ``api_keys``).

    ``digest`` is the SHA-256 of the key (hex): the keys are 256-bit random, so a fast hash
    is enough (nothing to brute-force), and the table never holds a usable key.
    """

    async def create_key(self, name: str, role: Role, digest: str) -> ApiKey:
        """Store a new key; ApiKeyExists when ``name`` is taken."""

    async def key_by_digest(self, digest: str) -> ApiKey | None:
        """The key whose digest this is (None: unknown or revoked)."""

    async def list_keys(self) -> list[ApiKey]:
        """Every key, by name."""

    async def revoke_key(self, name: str) -> bool:
        """Delete the key; False when there is none of that name."""

    async def touch_key(self, name: str, when: float) -> None:
        """Record that the key was used at ``when``."""


@dataclass(frozen=True)
class ForwardRecord:
    """What became of one instance sent to one destination (the forwarding ledger's row)."""

    destination: str
    sop_instance_uid: str
    study_uid: str
    series_uid: str
    rule: str
    sha256: str  # of the stored object that was sent
    outcome: str  # "sent", "failed" (a failure status or the attempts ran out), "gone" (deleted meanwhile)
    detail: str  # the status or the reason, never patient data
    at: float  # seconds since the epoch
    attempts: int = 1


@runtime_checkable
class ForwardLedger(Backend, Protocol):
    """The durable record of forwards, in the catalog's database (table ``forwards``, one row per
    destination and instance: its last outcome). An instance is re-sent to a destination only when
    the ledger has no "sent" row for that destination with the same object checksum."""

    async def record_forwards(self, records: Sequence[ForwardRecord]) -> None:
        """Write the outcomes (the last one per destination and instance wins), in one transaction."""

    async def delivered(self, destination: str, sop_instance_uids: Sequence[str]) -> dict[str, str]:
        """Of these instances, those sent to ``destination``: UID -> SHA-256 of the object sent."""

    async def forwards(self, study_uid: str | None = None, limit: int = 100) -> list[ForwardRecord]:
        """The ledger, newest first (one study's rows with ``study_uid``)."""


@dataclass(frozen=True)
class StablePending:
    """A study that received an instance, due to be stable at ``due_at`` for watcher ``name``
    ('' for the change feed, ``rule:<name>`` for a forwarding rule with ``trigger: stable``)."""

    name: str
    study_uid: str
    due_at: float


@runtime_checkable
class StudyStability(Backend, Protocol):
    """Study-stable detection shared by every indexer, in the catalog's database (``stable_pending``)."""

    async def touch_studies(self, rows: Sequence[StablePending]) -> None:
        """The studies received an instance: each due at the later of its due times."""

    async def claim_stable(self, name: str, now: float, lease: float, limit: int = 100) -> list[tuple[str, float]]:
        """Claim up to ``limit`` studies of ``name`` due by ``now`` that no live lease holds, for
        ``lease`` seconds: [(study, due_at)]. Two claimers never get the same row."""

    async def release_stable(self, name: str, claimed: Sequence[tuple[str, float]]) -> None:
        """Done with them: forget each unless a new instance moved its due time since the claim."""

    async def record_stable(self, now: float, limit: int = 1000) -> list[str]:
        """The change feed's due studies, each written to the feed as ``stable`` and forgotten, in one
        transaction: the studies."""
