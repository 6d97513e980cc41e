"""Verify: do object store, catalog and search index agree?

Counts the instances in each and lists discrepancies: catalog entries whose
object is missing, objects the catalog does not know (orphans), checksum or
size mismatches between object store and catalog, and search documents
missing or extra. ``repair`` re-queues orphaned objects, and the objects of
catalog entries missing from the search index, for indexing (the object store
is the source of truth; the indexer's upserts are idempotent). An orphan whose SOP Instance
UID has a tombstone is what a delete left behind (it crashed after the catalog commit): repair
finishes the delete (removes the object and the search document) and never indexes it again.
A search index with study documents (OpenSearch) compares each with its instance documents;
repair recomputes those behind.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from archive.core.models import ObjectInfo
from archive.core.ports import Catalog, MessageQueue, ObjectStore, SearchIndex, StudyDocumentsSearch
from archive.core.records import CatalogInstance
from archive.core.uids import uid_from_key
from archive.ops.rebuild import message_of

log = logging.getLogger(__name__)
SAMPLE = 50  # discrepancies listed per kind (counts are always complete)


@dataclass
class Report:
    objects: int = 0
    catalog_instances: int = 0
    search_documents: int = 0
    missing_objects: list[str] = field(default_factory=list)  # SOP UIDs in catalog, no object
    orphaned_objects: list[str] = field(default_factory=list)  # keys with no catalog entry
    checksum_mismatches: list[str] = field(default_factory=list)  # SOP UIDs
    missing_from_search: list[str] = field(default_factory=list)  # SOP UIDs
    orphaned_search_documents: list[str] = field(default_factory=list)  # SOP UIDs
    # SOP UIDs of orphaned objects or search documents that have a tombstone: what a delete
    # interrupted after its catalog commit left (counted under orphaned_* too)
    tombstoned: list[str] = field(default_factory=list)
    # Study UIDs whose study document (OpenSearch) differs from their instance documents
    stale_study_documents: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    repaired: int = 0
    seconds: float = 0.0

    @property
    def consistent(self) -> bool:
        return not any(self.counts.values()) and self.objects == self.catalog_instances == self.search_documents

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["consistent"] = self.consistent
        return data


def _note(report: Report, kind: str, value: str) -> None:
    report.counts[kind] = report.counts.get(kind, 0) + 1
    items: list[str] = getattr(report, kind)
    if len(items) < SAMPLE:
        items.append(value)


async def _actual_sha256(store: ObjectStore, key: str) -> str:
    digest = hashlib.sha256()
    async for chunk in store.get(key):
        digest.update(chunk)
    return digest.hexdigest()


async def verify(
    store: ObjectStore,
    catalog: Catalog,
    search: SearchIndex,
    *,
    deep: bool = False,
    queue: MessageQueue | None = None,
) -> Report:
    """Compare the three; with ``deep`` re-hash every object; with ``queue`` repair orphans."""
    started = time.monotonic()
    report = Report()
    report.counts = {k: 0 for k in ("missing_objects", "orphaned_objects", "checksum_mismatches",
                                     "missing_from_search", "orphaned_search_documents", "tombstoned",
                                     "stale_study_documents")}
    objects: dict[str, ObjectInfo] = {}
    async for info in store.list("instances/"):
        objects[info.key] = info
    report.objects = len(objects)

    catalog_uids: set[str] = set()
    catalog_keys: dict[str, str] = {}  # SOP Instance UID -> object key
    seen_keys: set[str] = set()
    entry: CatalogInstance
    async for entry in catalog.instances():
        catalog_uids.add(entry.sop_instance_uid)
        catalog_keys[entry.sop_instance_uid] = entry.object_key
        stored = objects.get(entry.object_key)
        if stored is None:
            _note(report, "missing_objects", entry.sop_instance_uid)
            continue
        seen_keys.add(entry.object_key)
        sha = await _actual_sha256(store, stored.key) if deep or stored.sha256 is None else stored.sha256
        if sha != entry.sha256 or stored.size != entry.size:
            _note(report, "checksum_mismatches", entry.sop_instance_uid)
    report.catalog_instances = len(catalog_uids)
    orphan_keys = sorted(objects.keys() - seen_keys)
    orphan_uids = {key: uid_from_key(key) for key in orphan_keys}
    deleted = await catalog.tombstoned([uid for uid in orphan_uids.values() if uid])
    for key in orphan_keys:
        _note(report, "orphaned_objects", key)
        uid = orphan_uids[key]
        if uid in deleted:
            _note(report, "tombstoned", uid)
            if queue is not None:  # finish the delete; indexing it again would be dropped anyway
                await store.delete(key)
                report.repaired += 1
        elif queue is not None:
            report.repaired += await _requeue(store, queue, key)

    search_ids: set[str] = set()
    async for sop in search.ids():
        search_ids.add(sop)
    report.search_documents = len(search_ids)
    for sop in catalog_uids - search_ids:
        _note(report, "missing_from_search", sop)
        # An indexer that died between the catalog commit and the search write: index again.
        if queue is not None and catalog_keys[sop] in objects:
            report.repaired += await _requeue(store, queue, catalog_keys[sop])
    orphan_docs = sorted(search_ids - catalog_uids)
    deleted = await catalog.tombstoned(orphan_docs)
    for sop in orphan_docs:
        _note(report, "orphaned_search_documents", sop)
        if sop in deleted:
            _note(report, "tombstoned", sop)
    if queue is not None and deleted:
        await search.delete(sorted(deleted))
        report.repaired += len(deleted)
    if isinstance(search, StudyDocumentsSearch):  # OpenSearch's per-study documents (web UI study lists)
        behind = await search.verify_study_documents(repair=queue is not None)
        for study in behind:
            _note(report, "stale_study_documents", study)
        if queue is not None:
            report.repaired += len(behind)
    report.seconds = round(time.monotonic() - started, 3)
    return report


async def _requeue(store: ObjectStore, queue: MessageQueue, key: str) -> int:
    """Rebuild the index message of a stored object and publish it (1 on success)."""
    message = await message_of(store, key)
    if message is None:
        return 0
    await queue.publish(message.to_bytes())
    return 1
