"""The receiver's audit records (PS3.15 A.5.3), the same for both engines.

An association's C-STOREs are tallied per study (:class:`archive.core.audit.StudyTally`,
filled by :mod:`archive.scp.store`) and recorded when it ends, released or aborted: one
DICOM Instances Transferred record per study and outcome (A.5.3.7, EventActionCode C, the
calling AE as the source). A refused association is a Security Alert (A.5.3.11, Node
Authentication); one refused for lack of room (rejected-transient) is not a security event.
"""

from __future__ import annotations

from archive.core.audit import (
    Action, AuditEvent, AuditTrail, EventKind, Outcome, StudyTally, Subtype, record_all,
)
from archive.core.identity import Principal, PrincipalKind


def peer(calling_aet: str, address: str) -> Principal:
    """A DICOM peer as the audit trail names it: its calling AE title and address."""
    return Principal(PrincipalKind.AE, calling_aet.strip(), address)


def association_ended(trail: AuditTrail, tally: StudyTally, calling_aet: str, address: str, our_aet: str) -> None:
    if tally:
        record_all(trail, tally.events(EventKind.INSTANCES_TRANSFERRED, peer(calling_aet, address),
                                       action=Action.CREATE, service=our_aet, detail="C-STORE failed"))


def rejected(trail: AuditTrail, why: str, transient: bool, calling_aet: str, address: str, our_aet: str) -> None:
    """An A-ASSOCIATE-RJ sent; ``transient`` (no room now) is not recorded."""
    if not transient:
        trail.record(AuditEvent(EventKind.SECURITY_ALERT, peer(calling_aet, address), Outcome.MINOR_FAILURE,
                                subtype=Subtype.NODE_AUTHENTICATION, service=our_aet,
                                detail=f"association refused: {why}"))
