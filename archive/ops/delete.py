"""Delete a study, a series or an instance: catalog, search index and object store, in that order.

1. The catalog, in one transaction: the instance rows go (and the series, study and patient
   left empty), each instance gets a tombstone, and the change feed a ``deleted`` entry. From
   its commit on, the instances are gone for QIDO-RS, C-FIND, WADO, retrieve and Storage
   Commitment (0x0112), and the indexer drops any message of them received before the delete.
2. The search index: the documents of the instances that are still tombstoned.
3. The object store: the objects of the instances that are still tombstoned.

"Still tombstoned": an instance re-sent after the delete and indexed meanwhile (its tombstone
cleared) keeps its new document and object. A crash (or a backend down) after step 1 leaves
search documents and objects that no catalog entry names: ``verify`` lists them as orphaned
search documents and orphaned objects, counted again under ``tombstoned`` (the leftovers of a
delete), and ``verify --repair`` finishes the delete instead of indexing them again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from archive import metrics
from archive.core.audit import Action, AuditEvent, AuditTrail, EventKind, NoAudit, StudyAccess
from archive.core.changes import Deleted, Deletion
from archive.core.errors import BackendUnavailable, ObjectNotFound
from archive.core.events import Event, EventSink, EventType, NoEvents
from archive.core.identity import Principal
from archive.core.ports import Catalog, ObjectStore, SearchIndex
from archive.core.records import CatalogInstance
from archive.core.retry import Backoff, retrying

log = logging.getLogger(__name__)

LEFTOVERS = Backoff(first=0.2, cap=2.0, attempts=5)  # search and objects, after the catalog committed


class DeleteService:
    def __init__(self, catalog: Catalog, search: SearchIndex, store: ObjectStore,
                 audit: AuditTrail | None = None, events: EventSink | None = None) -> None:
        self.catalog = catalog
        self.events: EventSink = events or NoEvents()
        self.search = search
        self.store = store
        self.audit = audit or NoAudit()

    async def delete(self, deletion: Deletion, who: Principal, *, service: str = "") -> Deleted:
        """Delete what ``deletion`` names; no instances in the result: nothing matched.

        Raises BackendUnavailable when a backend is down: before the catalog committed nothing
        changed; after it, the delete stands and ``verify --repair`` removes what is left.
        """
        deleted = await self.catalog.delete(deletion, time.time())
        if not deleted.instances:
            return deleted
        metrics.DELETED.inc(len(deleted.instances))
        self._audit(deleted.instances, who, service)
        log.info("deleted from the catalog", extra={
            "study_uid": deletion.study_uid, "series_uid": deletion.series_uid,
            "sop_instance_uid": deletion.sop_instance_uid, "instances": len(deleted.instances)})
        try:
            await self.events.publish([Event(EventType.STUDY_DELETED, deleted.at, deletion.study_uid,
                                             deletion.series_uid or "", deletion.sop_instance_uid or "",
                                             instances=len(deleted.instances))])
        except BackendUnavailable as exc:  # the delete stands; the feed has its entries
            log.warning("study.deleted event not published", extra={"reason": str(exc)})
        await retrying(LEFTOVERS, BackendUnavailable)(self.remove_leftovers, deleted.instances)
        return deleted

    async def remove_leftovers(self, instances: Sequence[CatalogInstance]) -> int:
        """Steps 2 and 3 for the instances still tombstoned; how many of them."""
        if not instances:
            return 0
        still = await self.catalog.tombstoned([i.sop_instance_uid for i in instances])
        gone = [i for i in instances if i.sop_instance_uid in still]
        await self.search.delete([i.sop_instance_uid for i in gone], {i.study_uid for i in gone})
        for instance in gone:
            try:
                await self.store.delete(instance.object_key)
            except ObjectNotFound:
                pass
        return len(gone)

    def _audit(self, instances: Sequence[CatalogInstance], who: Principal, service: str) -> None:
        """DICOM Study Deleted (PS3.15 A.5.3.8, EventID 110105): one record per study."""
        per_study: dict[str, dict[str, int]] = {}
        patients: dict[str, str] = {}
        for i in instances:
            classes = per_study.setdefault(i.study_uid, {})
            classes[i.sop_class_uid] = classes.get(i.sop_class_uid, 0) + 1
            patients[i.study_uid] = i.patient_id
        for study_uid, classes in per_study.items():
            study = StudyAccess(study_uid, patients[study_uid], tuple(sorted(classes.items())))
            self.audit.record(AuditEvent(EventKind.STUDY_DELETED, who, action=Action.DELETE, service=service,
                                         study=study))
