"""Delete on the embedded adapters: the order of its steps, a crash between them and what verify
says and repairs, the tombstone against late index messages, the audit record and the metric."""

from __future__ import annotations

import hashlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from archive import metrics
from archive.adapters.filesystem_store import FilesystemStore
from archive.adapters.fts5_search import Fts5Search
from archive.adapters.sqlite_catalog import SqliteCatalog
from archive.adapters.sqlite_queue import SqliteQueue
from archive.core.audit import Action, AuditEvent, EventKind
from archive.core.changes import Deletion
from archive.core.identity import Principal, PrincipalKind
from archive.core.models import IndexMessage, Payload
from archive.core.uids import object_key
from archive.indexer.worker import Indexer
from archive.ops.delete import DeleteService
from archive.ops.verify import verify
from tests.factories import make_ct, make_message, new_uid, write_part10

ADMIN = Principal(PrincipalKind.API_KEY, "ops-admin", "192.0.2.1")


@dataclass
class Stores:
    store: FilesystemStore
    queue: SqliteQueue
    catalog: SqliteCatalog
    search: Fts5Search
    tmp: Path

    async def ingest(self, count: int, study: str | None = None) -> list[IndexMessage]:
        """Store ``count`` instances of one study, as the receiver would, and index them."""
        study, series, messages = study or new_uid(), new_uid(), []
        for n in range(count):
            ds = make_ct(study_uid=study, series_uid=series, instance_number=n + 1, seed=n, patient_id="PID-DEL")
            path = write_part10(ds, self.tmp / f"{ds.SOPInstanceUID}.dcm")
            data = path.read_bytes()
            sha = hashlib.sha256(data).hexdigest()
            await self.store.put(object_key(str(ds.SOPInstanceUID)), Payload((path,), len(data), sha))
            messages.append(make_message(ds, self.tmp, sha256=sha, size=len(data)))
        await self.index(messages)
        return messages

    async def index(self, messages: list[IndexMessage]) -> None:
        for message in messages:
            await self.queue.publish(message.to_bytes())
        await Indexer(self.queue, self.catalog, self.search).handle(await self.queue.receive(100, timeout=5))
        assert (await self.queue.depth()).ready == 0  # acked


@pytest.fixture
async def stores(tmp_path: Path) -> AsyncIterator[Stores]:
    found = Stores(FilesystemStore(tmp_path / "objects", fsync=False), SqliteQueue(tmp_path / "q.db"),
                   SqliteCatalog(tmp_path / "c.db"), Fts5Search(tmp_path / "s.db"), tmp_path)
    for backend in (found.store, found.queue, found.catalog, found.search):
        await backend.migrate()
    yield found
    for backend in (found.store, found.queue, found.catalog, found.search):
        await backend.close()


class Recorded:
    def __init__(self) -> None:
        self.events: list[AuditEvent] = []

    def record(self, event: AuditEvent) -> None:
        self.events.append(event)


async def test_a_delete_removes_everything_audits_and_counts(stores: Stores) -> None:
    messages = await stores.ingest(3)
    kept = await stores.ingest(1)
    trail = Recorded()
    before = metrics.DELETED._value.get()
    service = DeleteService(stores.catalog, stores.search, stores.store, trail)
    deleted = await service.delete(Deletion(messages[0].study_uid), ADMIN, service="/dicom-web/studies/x")
    assert len(deleted.instances) == 3
    assert metrics.DELETED._value.get() == before + 3
    [event] = trail.events
    assert (event.kind, event.action, event.who, event.service) == (
        EventKind.STUDY_DELETED, Action.DELETE, ADMIN, "/dicom-web/studies/x")
    assert event.study is not None and event.study.study_uid == messages[0].study_uid
    assert (event.study.patient_id, event.study.instances) == ("PID-DEL", 3)
    report = await verify(stores.store, stores.catalog, stores.search)
    assert report.consistent and report.objects == 1 == report.catalog_instances == report.search_documents
    assert [h.sop_instance_uid for h in await stores.search.search("PID-DEL", 10)] == [kept[0].sop_instance_uid]
    nothing = await service.delete(Deletion(messages[0].study_uid), ADMIN)
    assert nothing.instances == [] and len(trail.events) == 1


async def test_verify_explains_and_repair_finishes_a_delete_cut_short(stores: Stores) -> None:
    """A crash after the catalog's transaction: objects and search documents no catalog entry names.
    verify lists them as orphans that are tombstoned; --repair removes them, never re-indexes them."""
    messages = await stores.ingest(2)
    uids = sorted(m.sop_instance_uid for m in messages)
    await stores.catalog.delete(Deletion(messages[0].study_uid), time.time())  # step 1, then the crash
    report = await verify(stores.store, stores.catalog, stores.search)
    assert not report.consistent
    assert (report.counts["orphaned_objects"], report.counts["orphaned_search_documents"]) == (2, 2)
    assert report.counts["tombstoned"] == 4 and sorted(set(report.tombstoned)) == uids
    repaired = await verify(stores.store, stores.catalog, stores.search, queue=stores.queue)
    assert repaired.repaired == 4
    assert (await stores.queue.depth()).ready == 0  # nothing re-queued: it would come back otherwise
    after = await verify(stores.store, stores.catalog, stores.search)
    assert after.consistent and after.objects == 0 and after.search_documents == 0


async def test_late_messages_are_dropped_and_a_resend_during_the_delete_is_kept(stores: Stores) -> None:
    messages = await stores.ingest(2)
    study = messages[0].study_uid
    deleted = await stores.catalog.delete(Deletion(study), time.time())  # step 1 of a delete
    await stores.index(messages)  # redelivered: received before the delete
    assert await stores.catalog.get_instance(messages[0].sop_instance_uid) is None
    resent = IndexMessage(**{**vars(messages[0]), "received_at": time.time()})
    await stores.index([resent])  # re-sent (and indexed) before the delete went on
    service = DeleteService(stores.catalog, stores.search, stores.store)
    assert await service.remove_leftovers(deleted.instances) == 1  # steps 2 and 3 for the other one
    assert await stores.catalog.get_instance(resent.sop_instance_uid) is not None
    assert await stores.store.head(resent.key) is not None
    assert await stores.store.head(messages[1].key) is None
    assert [h.sop_instance_uid for h in await stores.search.search("PID-DEL", 10)] == [resent.sop_instance_uid]
    report = await verify(stores.store, stores.catalog, stores.search)
    assert report.consistent and report.objects == 1
    feed = [(c.action, c.sop_instance_uid) for c in await stores.catalog.changes(0, 100)]
    assert feed[2:] == sorted([("deleted", m.sop_instance_uid) for m in messages]) + [
        ("created", resent.sop_instance_uid)]
