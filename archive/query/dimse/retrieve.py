"""The C-MOVE and C-GET handlers (PS3.4 C.4.2, C.4.3): which instances, which contexts, and sending.

A retrieve names the unique keys of its level (:func:`locate`); each instance is
a C-STORE sub-operation. An instance leaves the archive as it was stored: it is
streamed from the object store into a spool file (checksum verified,
:func:`archive.query.objects.spool`), and pynetdicom sends that file in chunks
(``STORE_SEND_CHUNKED_DATASET``), so neither a study nor a multi-GB instance is
ever held in memory. Only when the peer accepted none of the stored transfer
syntax's contexts is the instance decoded and sent in an uncompressed syntax the
peer did accept (PS3.4 C.4.2.3.1, C.4.3.3.1).

The instances are yielded as :class:`StoredInstance` datasets that name their file, and
C-MOVE sub-operations carry the requestor as Move Originator: both through the
pynetdicom workaround in :mod:`archive.compat.pynetdicom`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom.association import Association
from pynetdicom.events import Event
from pynetdicom.presentation import PresentationContext, build_context

from archive import metrics
from archive.compat.pynetdicom import move_originator
from archive.core.audit import StudyTally
from archive.core.decode_limits import TooLargeToDecode, check_object
from archive.core.levels import Level
from archive.core.ports import Catalog
from archive.core.query import InvalidQuery, Query, Universal
from archive.core.records import CatalogInstance
from archive.query.dimse import audit
from archive.query.dimse.find import CANCELLED, PENDING, log_failure
from archive.query.dimse.identifier import FindPlan, IdentifierError, plan_find
from archive.query.objects import RetrieveError, spool
from archive.scp.access import AccessPolicy
from archive.scp.portal import Portal
from archive.scp.tls import tls_args
from archive.settings import Settings

if TYPE_CHECKING:
    from archive.query.dimse.service import QueryRetrieve

log = logging.getLogger(__name__)

MAX_SUBOPERATIONS = 65535  # Number of ... Sub-operations are US (PS3.7 C.4.2.1.2)
MAX_CONTEXTS = 128  # PS3.8 9.3.2.2: presentation context IDs are odd numbers 1-255
UNCOMPRESSED = (str(ExplicitVRLittleEndian), str(ImplicitVRLittleEndian))
UNIQUE_KEY = {
    Level.PATIENT: "PatientID",
    Level.STUDY: "StudyInstanceUID",
    Level.SERIES: "SeriesInstanceUID",
    Level.IMAGE: "SOPInstanceUID",
}


class StoredInstance(Dataset):
    """A catalog instance spooled to a local Part 10 file, ready to be sent.

    pynetdicom's retrieve loop wants a Dataset; this one carries only the UIDs
    it looks at, and the file behind it is sent (:mod:`archive.compat.pynetdicom`).
    """

    def __init__(self, path: Path, instance: CatalogInstance) -> None:
        super().__init__()
        self.SOPClassUID = instance.sop_class_uid
        self.SOPInstanceUID = instance.sop_instance_uid
        self.spool_path = path
        self.stored_syntax = instance.transfer_syntax_uid

    def to_send(self, assoc: Association) -> "Path | Dataset":
        """The file when the peer accepted its transfer syntax; else a converted dataset."""
        accepted = [
            cx for cx in assoc.accepted_contexts
            if cx.abstract_syntax == self.SOPClassUID and cx.as_scu
        ]
        if any(cx.transfer_syntax[0] == self.stored_syntax for cx in accepted):
            return self.spool_path
        targets = [cx.transfer_syntax[0] for cx in accepted if cx.transfer_syntax[0] in UNCOMPRESSED]
        if not targets:
            return self.spool_path  # pynetdicom refuses it: the sub-operation fails
        return transcoded(dcmread(self.spool_path), self.stored_syntax, targets[0])


def transcoded(dataset: Dataset, stored_syntax: str, target_syntax: str) -> Dataset:
    """``dataset`` (read in ``stored_syntax``) ready to be sent in the uncompressed ``target_syntax``;
    RetrieveError when decoding it would take too much memory."""
    try:
        check_object(dataset)  # decoded in memory: a decompression bomb fails this sub-operation
    except TooLargeToDecode as exc:
        raise RetrieveError(str(exc)) from None
    if UID(stored_syntax).is_compressed:
        dataset.decompress(generate_instance_uid=False)  # the same instance, losslessly re-encoded (PS3.5 8.2)
    target = UID(target_syntax)
    dataset.file_meta.TransferSyntaxUID = target
    # pynetdicom re-encodes in the accepted syntax. Every element is decoded first (iterall
    # parses sequences too), so no raw element keeps the stored encoding inside the new one.
    for _ in dataset.iterall():
        pass
    dataset.set_original_encoding(target.is_implicit_VR, target.is_little_endian, dataset.original_character_set)
    return dataset


class Unreadable(Dataset):
    """A sub-operation that fails before sending; its UID goes to the Failed SOP Instance UID List."""

    def __init__(self, instance: CatalogInstance, reason: str) -> None:
        super().__init__()
        self.SOPClassUID = instance.sop_class_uid
        self.SOPInstanceUID = instance.sop_instance_uid
        self.reason = reason

    def to_send(self, assoc: Association) -> Dataset:
        raise RetrieveError(self.reason)  # counted as a failed sub-operation


def store_contexts(instances: Iterable[CatalogInstance]) -> list[PresentationContext]:
    """Contexts for a C-MOVE sub-association: each stored syntax, then uncompressed fallbacks."""
    exact: dict[tuple[str, str], None] = {}
    fallback: dict[str, None] = {}
    for inst in instances:
        exact[(inst.sop_class_uid, inst.transfer_syntax_uid)] = None
        fallback[inst.sop_class_uid] = None
    contexts = [build_context(sop_class, [syntax]) for sop_class, syntax in exact]
    for sop_class in fallback:
        if len(contexts) >= MAX_CONTEXTS:
            break
        contexts.append(build_context(sop_class, list(UNCOMPRESSED)))
    return contexts[:MAX_CONTEXTS]


async def locate(catalog: Catalog, plan: FindPlan) -> list[CatalogInstance]:
    """The instances a retrieve names; one more than MAX_SUBOPERATIONS at most."""
    level = plan.query.level
    key = UNIQUE_KEY[level]
    # PS3.4 C.4.2.2.1: a retrieve names the unique key(s) of its level
    if not any(m.keyword == key and not isinstance(m, Universal) for m in plan.query.matchers):
        raise IdentifierError(f"a {level.value} level retrieve needs {key}")
    query = Query(level, plan.query.matchers, limit=MAX_SUBOPERATIONS + 1)
    return await catalog.locate(query)


def _suboperations(event: Event, instances: list[CatalogInstance], qr: QueryRetrieve, portal: Portal,
                   timeout: float, sent: StudyTally) -> Iterator[Any]:
    """(status, dataset) per instance; each spooled file is removed once sent. ``sent`` tallies
    the sub-operations that ran (resumed after the yield), per study, for the audit trail."""
    previous: Path | None = None
    try:
        for instance in instances:
            if previous is not None:
                previous.unlink(missing_ok=True)
                previous = None
            if event.is_cancelled:  # C-CANCEL (PS3.4 C.4.2.2.3, C.4.3.2.3)
                yield CANCELLED, None
                return
            try:
                previous = portal.run(spool(qr.store, instance, qr.spool_dir), timeout=timeout)
            except Exception as exc:
                log_failure("retrieve sub-operation", event.assoc.requestor.ae_title, exc)
                yield PENDING, Unreadable(instance, str(exc))
                sent.add(instance.study_uid, instance.patient_id, instance.sop_class_uid, ok=False)
                continue
            yield PENDING, StoredInstance(previous, instance)
            sent.add(instance.study_uid, instance.patient_id, instance.sop_class_uid)
    finally:
        if previous is not None:
            previous.unlink(missing_ok=True)


def _locate(event: Event, qr: QueryRetrieve, portal: Portal, timeout: float) -> list[CatalogInstance]:
    plan = plan_find(event.identifier, str(event.request.AffectedSOPClassUID))
    instances = portal.run(locate(qr.catalog, plan), timeout=timeout)
    if len(instances) > MAX_SUBOPERATIONS:
        raise InvalidQuery(f"more than {MAX_SUBOPERATIONS} instances; retrieve a smaller set")
    return instances


def handle_move(event: Event, qr: QueryRetrieve, portal: Portal, settings: Settings,
                access: AccessPolicy) -> Iterator[Any]:
    """EVT_C_MOVE (PS3.4 C.4.2.2): to configured peers only (an address in ARCHIVE_AE_CONFIG or
    ARCHIVE_PEERS; over TLS when its entry says so); 0xA801 for any other destination."""
    destination = (event.move_destination or "").strip()
    peer = access.config.peer(destination)
    if peer is None:
        log.warning("C-MOVE to an unknown destination refused",
                    extra={"calling_aet": event.assoc.requestor.ae_title, "destination": destination[:16]})
        metrics.QUERIES.labels("cmove", "?", "unknown_destination").inc()
        yield None, None  # pynetdicom answers 0xA801 Move Destination unknown
        return
    instances = _locate(event, qr, portal, settings.query_timeout)  # raising here: 0xC514
    log.info("C-MOVE", extra={"calling_aet": event.assoc.requestor.ae_title, "destination": peer.aet,
                              "instances": len(instances)})
    metrics.QUERIES.labels("cmove", "-", "started").inc()
    to = audit.destination(peer.aet, peer.host)
    audit.retrieve_started(qr.audit, event, instances, settings.aet, to)
    sent = StudyTally()
    try:
        with move_originator(event.assoc.requestor.ae_title):  # PS3.7 9.1.1.1
            yield peer.host, peer.port, {"contexts": store_contexts(instances), "tls_args": tls_args(peer, settings)}
            yield len(instances)
            yield from _suboperations(event, instances, qr, portal, settings.query_timeout, sent)
    finally:
        audit.retrieve_ended(qr.audit, event, sent, settings.aet, to)


def handle_get(event: Event, qr: QueryRetrieve, portal: Portal, settings: Settings) -> Iterator[Any]:
    """EVT_C_GET (PS3.4 C.4.3.2): C-STORE sub-operations on the requestor's own association."""
    instances = _locate(event, qr, portal, settings.query_timeout)  # raising here: 0xC413
    log.info("C-GET", extra={"calling_aet": event.assoc.requestor.ae_title, "instances": len(instances)})
    metrics.QUERIES.labels("cget", "-", "started").inc()
    audit.retrieve_started(qr.audit, event, instances, settings.aet)
    sent = StudyTally()
    try:
        yield len(instances)
        yield from _suboperations(event, instances, qr, portal, settings.query_timeout, sent)
    finally:
        audit.retrieve_ended(qr.audit, event, sent, settings.aet)
