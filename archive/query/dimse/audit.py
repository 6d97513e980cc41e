"""The audit records of the DIMSE query/retrieve and commitment services (PS3.15 A.5.3).

C-FIND: one Query record per request (A.5.3.10) with the identifier as received. C-MOVE and
C-GET: Begin Transferring DICOM Instances per study before the sub-operations (A.5.3.3), DICOM
Instances Transferred per study and outcome once they are done or cancelled (A.5.3.7, action
R, the archive as the source; a C-MOVE names its destination and, as the requesting party,
the requestor). Storage Commitment: DICOM Instances Transferred per study with action U (the
archive holds the instances it commits to; A.5.3.7) and the requestor as the source. Patient
IDs come from the catalog rows the handlers read anyway.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pynetdicom.events import Event

from archive.core.audit import (
    Action, AuditEvent, AuditTrail, EventKind, Outcome, QueryText, StudyTally, Subtype, record_all,
)
from archive.core.identity import Principal, PrincipalKind
from archive.core.records import CatalogInstance


def requestor(event: Event) -> Principal:
    """The calling AE of the event's association and its address."""
    peer = event.assoc.requestor
    return Principal(PrincipalKind.AE, str(peer.ae_title).strip(), str(peer.address))


def destination(aet: str, host: str) -> Principal:
    return Principal(PrincipalKind.AE, aet, host)


@dataclass(frozen=True)
class FindRequest:
    """Who asked a C-FIND, and its identifier as received (either engine)."""

    who: Principal
    query: QueryText  # the identifier's bytes, SOP class and transfer syntax


def find_request(event: Event) -> FindRequest:
    """The C-FIND request of a pynetdicom event."""
    identifier: Any = getattr(event.request, "Identifier", None)
    raw = identifier.getvalue() if hasattr(identifier, "getvalue") else b""
    return FindRequest(requestor(event), QueryText(bytes(raw), str(event.request.AffectedSOPClassUID),
                                                   str(event.context.transfer_syntax)))


def queried(trail: AuditTrail, request: FindRequest, our_aet: str, failed: bool) -> None:
    """A C-FIND's Query record: the identifier as received, in its transfer syntax."""
    trail.record(AuditEvent(EventKind.QUERY, request.who, Outcome.MINOR_FAILURE if failed else Outcome.SUCCESS,
                            service=our_aet, query=request.query))


def tally_of(instances: Iterable[CatalogInstance]) -> StudyTally:
    tally = StudyTally()
    for inst in instances:
        tally.add(inst.study_uid, inst.patient_id, inst.sop_class_uid)
    return tally


def retrieve_started(trail: AuditTrail, event: Event, instances: list[CatalogInstance], our_aet: str,
                     to: Principal | None = None) -> None:
    """Begin Transferring DICOM Instances, one record per study about to be sent."""
    record_all(trail, tally_of(instances).events(EventKind.BEGIN_TRANSFERRING, requestor(event),
                                                 service=our_aet, peer=to))


def retrieve_ended(trail: AuditTrail, event: Event, sent: StudyTally, our_aet: str, to: Principal | None = None) -> None:
    """DICOM Instances Transferred per study and outcome, for the sub-operations that ran."""
    record_all(trail, sent.events(EventKind.INSTANCES_TRANSFERRED, requestor(event), action=Action.READ,
                                  service=our_aet, peer=to, detail="sub-operation failed"))


def committed(trail: AuditTrail, who: Principal, instances: list[tuple[CatalogInstance, bool]], our_aet: str) -> None:
    """Storage Commitment: DICOM Instances Transferred (action U) per study and outcome."""
    tally = StudyTally()
    for inst, ok in instances:
        tally.add(inst.study_uid, inst.patient_id, inst.sop_class_uid, ok)
    record_all(trail, tally.events(EventKind.INSTANCES_TRANSFERRED, who, action=Action.UPDATE, service=our_aet,
                                   detail="not committed"))


def refused(trail: AuditTrail, event: Event, our_aet: str, what: str) -> None:
    """An operation the caller may not perform (for the per-AE permissions): a Security Alert."""
    trail.record(AuditEvent(EventKind.SECURITY_ALERT, requestor(event), Outcome.MINOR_FAILURE,
                            subtype=Subtype.USE_OF_RESTRICTED_FUNCTION, service=our_aet, detail=f"{what} refused"))
