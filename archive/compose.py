"""The composition root: settings -> adapters. The only module that knows them all."""

from __future__ import annotations

import asyncio
import hashlib
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from archive.audit import syslog
from archive.audit.logfile import AuditFile
from archive.audit.messages import Source
from archive.audit.trail import Trail
from archive.core.ports import (
    ApiKeys,
    Backend,
    Catalog,
    ForwardLedger,
    MessageQueue,
    ObjectStore,
    SearchIndex,
    StudyStability,
)
from archive.core.events import Event
from archive.core.routing import is_url
from archive.settings import Settings


def _sqlite_path(url: str) -> Path:
    # sqlite:///abs/path -> /abs/path ; sqlite://relative/path -> relative/path
    rest = url.split("://", 1)[1]
    return Path(rest)


def object_store(settings: Settings) -> ObjectStore:
    url = settings.object_store
    if url.startswith("file://"):
        from archive.adapters.filesystem_store import FilesystemStore

        return FilesystemStore(Path(url[len("file://"):]), fsync=settings.fsync)
    from archive.adapters.s3_store import S3Store

    parts = urlsplit(url)
    options = parse_qs(parts.query)
    return S3Store(
        parts.netloc,
        parts.path.strip("/"),
        settings.s3_access_key,
        settings.s3_secret_key,
        secure=options.get("secure", ["false"])[0].lower() == "true",
        region=options.get("region", [None])[0],
    )


def message_queue(settings: Settings) -> MessageQueue:
    url = settings.queue
    if url.startswith("sqlite://"):
        from archive.adapters.sqlite_queue import SqliteQueue

        return SqliteQueue(_sqlite_path(url), delivery_limit=settings.delivery_limit)
    from archive.adapters.amqp_queue import AmqpQueue

    return AmqpQueue(url, queue=settings.queue_name, delivery_limit=settings.delivery_limit,
                     prefetch=settings.indexer_prefetch)


def indexer_batch(settings: Settings) -> int:
    """The indexer's batch: RabbitMQ hands out no more than the prefetch, and a batch larger than
    that would never fill (so it would always linger)."""
    if settings.queue.startswith("sqlite://"):
        return settings.indexer_batch
    return min(settings.indexer_batch, settings.indexer_prefetch)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def forward_queue(settings: Settings, destination: str) -> MessageQueue:
    """The queue of forward jobs to one destination (an AE title the rules file was checked against):
    embedded, a SQLite file beside the index queue named by a digest of the name (never a path
    from a name); RabbitMQ, the quorum queue ``<ARCHIVE_QUEUE_NAME>.forward.<AET>`` (e.g.
    ``archive.index.forward.PACS``; a DICOMweb URL: ``...forward.web-<digest>``; dead letters in ``.dead``)."""
    url = settings.queue
    if url.startswith("sqlite://"):
        from archive.adapters.sqlite_queue import SqliteQueue

        path = _sqlite_path(url).parent / "forward" / f"{_digest(destination)}.db"
        path.parent.mkdir(parents=True, exist_ok=True)
        return SqliteQueue(path, delivery_limit=settings.forward_attempts, poll_interval=0.2)
    from archive.adapters.amqp_queue import AmqpQueue

    name = f"web-{_digest(destination)[:16]}" if is_url(destination) else destination
    return AmqpQueue(url, queue=f"{settings.queue_name}.forward.{name}",
                     delivery_limit=settings.forward_attempts, prefetch=2 * settings.forward_batch)


class ForwardQueues:
    """The forward queues this process uses, each made and migrated on first use."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._queues: dict[str, MessageQueue] = {}
        self._lock = asyncio.Lock()

    async def __call__(self, destination: str) -> MessageQueue:
        queue = self._queues.get(destination)
        if queue is not None:
            return queue
        async with self._lock:
            if destination not in self._queues:
                queue = self._make(destination)
                await queue.migrate()
                self._queues[destination] = queue
            return self._queues[destination]

    def _make(self, name: str) -> MessageQueue:
        return forward_queue(self.settings, name)

    async def close(self) -> None:
        await asyncio.gather(*(q.close() for q in self._queues.values()), return_exceptions=True)


def webhook_queue(settings: Settings, url: str) -> MessageQueue:
    """The durable queue of one webhook's events (archive.forward.webhooks)."""
    if settings.queue.startswith("sqlite://"):
        from archive.adapters.sqlite_queue import SqliteQueue

        path = _sqlite_path(settings.queue).parent / "webhook" / f"{_digest(url)}.db"
        path.parent.mkdir(parents=True, exist_ok=True)
        return SqliteQueue(path, delivery_limit=settings.forward_attempts, poll_interval=0.2)
    from archive.adapters.amqp_queue import AmqpQueue

    return AmqpQueue(settings.queue, queue=f"{settings.queue_name}.webhook.{_digest(url)[:16]}",
                     delivery_limit=settings.forward_attempts, prefetch=200)


class WebhookQueues(ForwardQueues):
    """The webhook queues this process uses, each made and migrated on first use."""

    def _make(self, name: str) -> MessageQueue:
        return webhook_queue(self.settings, name)


class Events:
    """The EventSink of every role: the topic exchange ``archive.events`` when the queue is RabbitMQ,
    and each webhook's queue (the types ARCHIVE_WEBHOOK_EVENTS names)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.exchange = None
        if not settings.queue.startswith("sqlite://"):
            from archive.adapters.amqp_events import AmqpEvents

            self.exchange = AmqpEvents(settings.queue)
        self.queues: dict[str, MessageQueue] = {}
        self._lock = asyncio.Lock()

    async def _webhook(self, url: str) -> MessageQueue:
        async with self._lock:
            if url not in self.queues:
                queue = webhook_queue(self.settings, url)
                await queue.migrate()
                self.queues[url] = queue
            return self.queues[url]

    async def publish(self, events: Sequence[Event]) -> None:
        if not events:
            return
        from archive import metrics

        if self.exchange is not None:
            await self.exchange.publish(events)
        wanted = [e for e in events if e.type.value in self.settings.webhook_events]
        for url in self.settings.webhooks:
            if wanted:
                queue = await self._webhook(url)
                await asyncio.gather(*(queue.publish(e.to_bytes()) for e in wanted))
        for e in events:
            metrics.EVENTS.labels(e.type.value).inc()

    async def close(self) -> None:
        if self.exchange is not None:
            await self.exchange.close()
        await asyncio.gather(*(q.close() for q in self.queues.values()), return_exceptions=True)


def catalog(settings: Settings) -> Catalog:
    url = settings.catalog
    if url.startswith("sqlite://"):
        from archive.adapters.sqlite_catalog import SqliteCatalog

        return SqliteCatalog(_sqlite_path(url))
    from archive.adapters.postgres_catalog import PostgresCatalog

    return PostgresCatalog(url.replace("postgres://", "postgresql://", 1))


def search_index(settings: Settings) -> SearchIndex:
    url = settings.search
    if url.startswith("sqlite://"):
        from archive.adapters.fts5_search import Fts5Search

        return Fts5Search(_sqlite_path(url))
    from archive.adapters.opensearch_search import OpenSearchIndex

    return OpenSearchIndex(url, index=settings.search_index)


@dataclass
class Backends:
    store: ObjectStore
    queue: MessageQueue
    catalog: Catalog
    search: SearchIndex

    @classmethod
    def from_settings(cls, settings: Settings) -> "Backends":
        for url in (settings.queue, settings.catalog, settings.search):
            if url.startswith("sqlite://"):
                _sqlite_path(url).parent.mkdir(parents=True, exist_ok=True)
        return cls(object_store(settings), message_queue(settings), catalog(settings), search_index(settings))

    @property
    def api_keys(self) -> ApiKeys:
        """The API keys live in the catalog's database (its ``api_keys`` table)."""
        assert isinstance(self.catalog, ApiKeys)
        return self.catalog

    @property
    def ledger(self) -> ForwardLedger:
        """The forwarding ledger lives in the catalog's database (its ``forwards`` table)."""
        assert isinstance(self.catalog, ForwardLedger)
        return self.catalog

    @property
    def stability(self) -> StudyStability:
        """Study-stable detection lives in the catalog's database (its ``stable_pending`` table)."""
        assert isinstance(self.catalog, StudyStability)
        return self.catalog

    def all(self) -> list[Backend]:
        return [self.store, self.queue, self.catalog, self.search]

    async def migrate(self) -> None:
        for backend in self.all():
            await backend.migrate()

    async def close(self) -> None:
        await asyncio.gather(*(b.close() for b in self.all()), return_exceptions=True)


def audit_trail(settings: Settings) -> Trail:
    """The audit trail: the local file always, the syslog collector when ARCHIVE_AUDIT_SYSLOG is set."""
    host = socket.gethostname()
    source = Source(settings.audit_source_id or f"{settings.aet}@{host}", settings.aet, host)
    file = AuditFile(Path(settings.audit_file), settings.audit_file_max_bytes, settings.audit_file_keep)
    collector = None
    if settings.audit_syslog:
        def pem(value: str) -> Path | None:
            return Path(value) if value else None

        tls = syslog.TlsFiles(pem(settings.audit_tls_ca), pem(settings.audit_tls_cert), pem(settings.audit_tls_key))
        collector = syslog.collector(settings.audit_syslog, tls)
    return Trail(source, file, collector, buffer=settings.audit_buffer).start()
