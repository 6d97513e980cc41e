"""Storage Commitment Push Model SCP (PS3.4 Annex J): N-ACTION in, N-EVENT-REPORT out.

The requestor names instances (N-ACTION, Action Type ID 1); we answer at once
and then check each one: it is in the catalog with the named SOP Class, its
object is in the object store, and the object's bytes hash to the catalog's
SHA-256 (streamed, never held whole in memory). The result goes back in an
N-EVENT-REPORT (:mod:`archive.query.dimse.commitment_report` delivers it), on the
same association if it is still open, else on a new one to the requestor's
address in ARCHIVE_PEERS.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.events import Event
from pynetdicom.presentation import build_context
from pynetdicom.service_class import StorageServiceClass
from pynetdicom.sop_class import uid_to_service_class

from archive import metrics
from archive.ae_config import Permission
from archive.core.audit import AuditTrail, NoAudit
from archive.core.errors import ArchiveError, ObjectNotFound
from archive.core.levels import Level
from archive.core.query import Query, UIDList
from archive.core.ports import Catalog, ObjectStore
from archive.core.retry import Backoff, retrying_sync
from archive.core.identity import Principal
from archive.core.uids import object_key, uid_problem
from archive.query.dimse import audit
from archive.query.dimse.commitment_report import (
    PUSH_MODEL,
    PUSH_MODEL_INSTANCE,
    ReportSender,
    ResponseSent,
    send_on_association,
)
from archive.scp.access import NOT_AUTHORIZED, AccessPolicy
from archive.scp.portal import Portal
from archive.scp.pynetdicom_engine import DimseService
from archive.scp.status import status_dataset
from archive.settings import Settings

log = logging.getLogger(__name__)

# PUSH_MODEL 1.2.840.10008.1.20.1 and its well-known SOP Instance 1.2.840.10008.1.20.1.1 (PS3.4 J.3.1)
REQUEST_COMMITMENT = 1  # Action Type ID (PS3.4 J.3.2, Table J.3-1)
ALL_COMMITTED, FAILURES_EXIST = 1, 2  # Event Type IDs (PS3.4 J.3.3, Table J.3-2)

# N-ACTION response statuses (PS3.7 10.1.4.1.10 and Annex C)
SUCCESS = 0x0000
NO_SUCH_SOP_INSTANCE = 0x0112
INVALID_ARGUMENT_VALUE = 0x0115
NO_SUCH_SOP_CLASS = 0x0118
NO_SUCH_ACTION = 0x0123

# Failure Reason (0008,1197) values of the Failed SOP Sequence (PS3.4 J.3.3, PS3.3 C.14.1.1)
PROCESSING_FAILURE = 0x0110  # includes: stored bytes do not match the catalog's checksum
NO_SUCH_OBJECT_INSTANCE = 0x0112
CLASS_INSTANCE_CONFLICT = 0x0119
CLASS_NOT_SUPPORTED = 0x0122

FAILURES_LOGGED = 10  # failed UIDs named in one log line
# Stored (C-STORE answered) but not in the catalog yet: asked about again for up to 30 s
INDEX_WAIT = Backoff(first=0.1, cap=2.0, within=30.0)


class InvalidRequest(ArchiveError):
    """An N-ACTION that cannot be accepted; ``status`` is its N-ACTION failure status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class NotYetIndexed(ArchiveError):
    """Stored (C-STORE answered Success) but not yet in the catalog: ask again shortly."""


@dataclass(frozen=True)
class Reference:
    sop_class_uid: str
    sop_instance_uid: str


@dataclass(frozen=True)
class CommitmentRequest:
    transaction_uid: str
    references: tuple[Reference, ...]


@dataclass(frozen=True)
class Failure:
    reference: Reference
    reason: int


@dataclass(frozen=True)
class Outcome:
    transaction_uid: str
    committed: tuple[Reference, ...]
    failed: tuple[Failure, ...]

    @property
    def event_type(self) -> int:
        return FAILURES_EXIST if self.failed else ALL_COMMITTED


def _uid(value: object, what: str) -> str:
    text = str(value).strip() if value is not None else None
    problem = uid_problem(text)
    if problem is not None:
        raise InvalidRequest(INVALID_ARGUMENT_VALUE, f"{what} {problem}")
    assert text is not None
    return text


def parse_request(sop_class: str, sop_instance: str, action_type: int | None,
                  information: Dataset | None) -> CommitmentRequest:
    """Validate an N-ACTION request of the Push Model (PS3.4 J.3.2); raise InvalidRequest."""
    if sop_class != PUSH_MODEL:
        raise InvalidRequest(NO_SUCH_SOP_CLASS, "only the Storage Commitment Push Model is supported")
    if sop_instance != PUSH_MODEL_INSTANCE:  # PS3.4 J.3.1: the well-known instance
        raise InvalidRequest(NO_SUCH_SOP_INSTANCE, f"requested SOP Instance must be {PUSH_MODEL_INSTANCE}")
    if action_type != REQUEST_COMMITMENT:
        raise InvalidRequest(NO_SUCH_ACTION, f"Action Type ID {action_type} (only 1 is defined)")
    if information is None:
        raise InvalidRequest(INVALID_ARGUMENT_VALUE, "no Action Information")
    try:  # pydicom decodes lazily: a malformed dataset raises on access
        transaction = _uid(information.get("TransactionUID"), "Transaction UID")
        items = information.get("ReferencedSOPSequence")
        if not items:
            raise InvalidRequest(INVALID_ARGUMENT_VALUE, "Referenced SOP Sequence missing or empty")
        references = tuple(
            Reference(_uid(item.get("ReferencedSOPClassUID"), f"item {n}: Referenced SOP Class UID"),
                      _uid(item.get("ReferencedSOPInstanceUID"), f"item {n}: Referenced SOP Instance UID"))
            for n, item in enumerate(items, start=1)
        )
    except InvalidRequest:
        raise
    except Exception as exc:
        raise InvalidRequest(INVALID_ARGUMENT_VALUE, "Action Information could not be decoded") from exc
    return CommitmentRequest(transaction, references)


async def _sha256(store: ObjectStore, key: str) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    async for chunk in store.get(key):
        digest.update(chunk)
        size += len(chunk)
    return digest.hexdigest(), size


async def check_reference(catalog: Catalog, store: ObjectStore, ref: Reference) -> int | None:
    """None when the instance is safely archived, else its Failure Reason (PS3.4 J.3.3).

    Raises NotYetIndexed for an object that is stored but not cataloged yet (a
    commitment request often follows the C-STOREs at once; indexing lags).
    """
    instance = await catalog.get_instance(ref.sop_instance_uid)
    if instance is None:
        if uid_to_service_class(ref.sop_class_uid) is not StorageServiceClass:
            return CLASS_NOT_SUPPORTED
        if await store.head(object_key(ref.sop_instance_uid)) is not None:
            raise NotYetIndexed(ref.sop_instance_uid)
        return NO_SUCH_OBJECT_INSTANCE
    if instance.sop_class_uid != ref.sop_class_uid:
        return CLASS_INSTANCE_CONFLICT
    try:
        sha256, size = await _sha256(store, instance.object_key)
    except ObjectNotFound:
        log.warning("commitment: cataloged instance missing from the object store",
                    extra={"sop_instance_uid": ref.sop_instance_uid})
        return NO_SUCH_OBJECT_INSTANCE
    if not instance.sha256 or sha256 != instance.sha256 or size != instance.size:
        log.error("commitment: stored object does not match the catalog's checksum",
                  extra={"sop_instance_uid": ref.sop_instance_uid})
        return PROCESSING_FAILURE
    return None


def _item(ref: Reference, reason: int | None = None) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = ref.sop_class_uid
    item.ReferencedSOPInstanceUID = ref.sop_instance_uid
    if reason is not None:
        item.FailureReason = reason
    return item


def event_information(outcome: Outcome, retrieve_aet: str) -> Dataset:
    """The N-EVENT-REPORT Event Information (PS3.4 J.3.3, Table J.3-2)."""
    ds = Dataset()
    ds.TransactionUID = outcome.transaction_uid
    ds.RetrieveAETitle = retrieve_aet
    if outcome.committed or not outcome.failed:  # Type 1C: present when any succeeded
        ds.ReferencedSOPSequence = [_item(ref) for ref in outcome.committed]
    if outcome.failed:
        ds.FailedSOPSequence = [_item(f.reference, f.reason) for f in outcome.failed]
    return ds


def log_outcome(outcome: Outcome, calling_aet: str) -> None:
    extra = {"calling_aet": calling_aet, "transaction_uid": outcome.transaction_uid,
             "committed": len(outcome.committed), "failed": len(outcome.failed)}
    if outcome.failed:
        extra["failures"] = [f"{f.reference.sop_instance_uid}:0x{f.reason:04X}"
                             for f in outcome.failed[:FAILURES_LOGGED]]
    log.log(logging.WARNING if outcome.failed else logging.INFO, "storage commitment checked", extra=extra)


def _action_information(event: Event) -> Dataset | None:
    if getattr(event.request, "ActionInformation", None) is None:
        return None
    try:
        return event.action_information
    except Exception as exc:
        raise InvalidRequest(INVALID_ARGUMENT_VALUE, "Action Information could not be decoded") from exc


class CommitmentSCP:
    """Answers N-ACTION at once; a worker thread checks the instances and reports."""

    def __init__(self, catalog: Catalog, store: ObjectStore, portal: Portal, settings: Settings,
                 sender: ReportSender | None = None, response_wait: float = 30.0,
                 index_wait: Backoff = INDEX_WAIT, trail: AuditTrail | None = None,
                 access: AccessPolicy | None = None) -> None:
        self.audit = trail or NoAudit()
        self.catalog = catalog
        self.store = store
        self.portal = portal
        self.settings = settings
        self.access = access if access is not None else AccessPolicy.from_settings(settings)
        self.sender = sender or ReportSender(settings, access=self.access)
        self.response_wait = response_wait
        self.index_wait = index_wait

    def check(self, request: CommitmentRequest) -> Outcome:
        """Check every reference (from a worker thread; the backends run on the portal's loop).

        Instances stored but not yet indexed are asked about again, with backoff,
        for as long as ``index_wait`` allows, before they count as missing.
        """
        reasons: dict[Reference, int | None] = {}
        waiting = list(dict.fromkeys(request.references))

        def all_decided() -> bool:
            waiting[:] = [ref for ref in waiting if self._check_one(ref, reasons)]
            return not waiting

        retrying_sync(self.index_wait, NotYetIndexed, until_true=True)(all_decided)
        reasons.update((ref, NO_SUCH_OBJECT_INSTANCE) for ref in waiting)
        committed = tuple(ref for ref in request.references if reasons[ref] is None)
        failed = tuple(Failure(ref, reason) for ref in request.references if (reason := reasons[ref]) is not None)
        return Outcome(request.transaction_uid, committed, failed)

    def _check_one(self, ref: Reference, reasons: dict[Reference, int | None]) -> bool:
        """Record the reference's outcome; True when it is to be asked about again."""
        try:
            reasons[ref] = self.portal.run(check_reference(self.catalog, self.store, ref),
                                           timeout=self.settings.query_timeout)
        except NotYetIndexed:
            return True
        except Exception as exc:  # backend down or too slow: not committed now
            log.warning("commitment: instance could not be checked",
                        extra={"sop_instance_uid": ref.sop_instance_uid, "reason": str(exc)[:200]})
            reasons[ref] = PROCESSING_FAILURE
        return False

    def handle_action(self, event: Event) -> tuple[Dataset | int, None]:
        """EVT_N_ACTION (PS3.4 J.3.2): validate, answer Success, check and report later."""
        calling_aet = event.assoc.requestor.ae_title
        req: Any = event.request
        if not self.access.authorize(calling_aet, str(event.assoc.requestor.address), Permission.COMMIT):
            metrics.QUERIES.labels("commitment", "-", "not_authorized").inc()
            return status_dataset(NOT_AUTHORIZED, "Calling AE title may not request storage commitment"), None
        try:
            information = _action_information(event)
            request = parse_request(str(req.RequestedSOPClassUID), str(req.RequestedSOPInstanceUID),
                                    req.ActionTypeID, information)
        except InvalidRequest as exc:
            log.warning("storage commitment request refused", extra={
                "calling_aet": calling_aet, "status": f"0x{exc.status:04X}", "reason": str(exc)})
            metrics.QUERIES.labels("commitment", "-", "invalid").inc()
            return status_dataset(exc.status, str(exc)), None
        log.info("storage commitment requested", extra={
            "calling_aet": calling_aet, "transaction_uid": request.transaction_uid,
            "instances": len(request.references)})
        sent = ResponseSent(event.assoc, event.context.context_id, req.MessageID)
        who = audit.requestor(event)
        threading.Thread(target=self.complete, args=(event.assoc, calling_aet, request, sent, who),
                         name="commitment", daemon=True).start()
        return SUCCESS, None

    def complete(self, assoc: Association, calling_aet: str, request: CommitmentRequest,
                 sent: ResponseSent, who: Principal | None = None) -> bool:
        """Check, then deliver the report; True when the requestor acknowledged it."""
        try:
            outcome = self.check(request)
            log_outcome(outcome, calling_aet)
            if who is not None:
                self._audit(who, outcome)
            information = event_information(outcome, self.settings.aet)
            delivered = sent.wait(self.response_wait) and send_on_association(
                assoc, information, outcome.event_type)
            if not delivered:
                delivered = self.sender.send(calling_aet, information, outcome.event_type)
            status = ("committed" if outcome.event_type == ALL_COMMITTED else "failures") if delivered else "undelivered"
        except Exception:
            log.exception("storage commitment failed", extra={"transaction_uid": request.transaction_uid})
            delivered, status = False, "error"
        metrics.QUERIES.labels("commitment", "-", status).inc()
        return delivered

    def _audit(self, who: Principal, outcome: Outcome) -> None:
        """The audit records of a commitment: the cataloged instances it names, per study (their
        patient IDs from the catalog); instances the catalog does not know name no study."""
        failed = {f.reference.sop_instance_uid for f in outcome.failed}
        uids = [ref.sop_instance_uid for ref in outcome.committed] + sorted(failed)
        try:
            found = self.portal.run(self.catalog.locate(Query(Level.IMAGE, (UIDList("SOPInstanceUID", tuple(uids)),),
                                                              limit=len(uids))),
                                    timeout=self.settings.query_timeout) if uids else []
        except Exception as exc:  # the report matters more than its audit record
            log.warning("commitment: audit record without its studies", extra={"error": type(exc).__name__})
            found = []
        audit.committed(self.audit, who, [(inst, inst.sop_instance_uid not in failed) for inst in found],
                        self.settings.aet)


def commitment_service(catalog: Catalog, store: ObjectStore, portal: Portal, settings: Settings,
                       trail: AuditTrail | None = None, access: AccessPolicy | None = None) -> DimseService:
    """Storage Commitment Push Model SCP: the presentation context and the N-ACTION handler."""
    scp = CommitmentSCP(catalog, store, portal, settings, trail=trail, access=access)
    context = build_context(PUSH_MODEL, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    return DimseService(contexts=(context,), handlers=((evt.EVT_N_ACTION, scp.handle_action),))
