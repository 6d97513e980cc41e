"""The audit trail port: what happened to patient data, who did it, and with what outcome.

Roles describe events as data (:class:`AuditEvent`) and hand them to an :class:`AuditTrail`,
whose ``record`` never blocks on a network and never fails the caller; how a record is
encoded (PS3.15 A.5 XML) and where it goes (syslog, the local file) is the business of
:mod:`archive.audit`. One record names one study and its patient, so that DIMSE and HTTP
hooks tally what an association or a request touched per study (:class:`StudyTally`) and
record once per study at its end, not once per instance.

The patient ID travels here and only here (the audit trail is where PS3.15 puts it); the
patient's name never does.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import Enum, IntEnum
from typing import Protocol

from archive.core.identity import Principal


class EventKind(str, Enum):
    """The DICOM audit messages the archive emits (PS3.15 A.5.3); the value is the syslog MSGID."""

    APPLICATION_ACTIVITY = "ApplicationActivity"  # A.5.3.1: start and stop
    AUDIT_LOG_USED = "AuditLogUsed"  # A.5.3.2
    BEGIN_TRANSFERRING = "BeginTransferring"  # A.5.3.3: a retrieve is about to send
    EXPORT = "Export"  # A.5.3.4: data leaves the archive's security domain
    INSTANCES_ACCESSED = "InstancesAccessed"  # A.5.3.6: viewed (WADO, rendered, metadata)
    INSTANCES_TRANSFERRED = "InstancesTransferred"  # A.5.3.7: stored here, or sent from here
    STUDY_DELETED = "StudyDeleted"  # A.5.3.8
    QUERY = "Query"  # A.5.3.10: C-FIND, QIDO-RS, the search API
    SECURITY_ALERT = "SecurityAlert"  # A.5.3.11: refused associations and operations
    USER_AUTHENTICATION = "UserAuthentication"  # A.5.3.12: sign-in failures


class Outcome(IntEnum):
    """EventOutcomeIndicator (PS3.15 A.5.1)."""

    SUCCESS = 0
    MINOR_FAILURE = 4  # refused or partly failed; the system goes on
    SERIOUS_FAILURE = 8
    MAJOR_FAILURE = 12


class Action(str, Enum):
    """EventActionCode (PS3.15 A.5.1)."""

    CREATE = "C"
    READ = "R"
    UPDATE = "U"
    DELETE = "D"
    EXECUTE = "E"


class Subtype(str, Enum):
    """EventTypeCode values (PS3.16 CID 401, 403) the archive uses."""

    APPLICATION_START = "110120"
    APPLICATION_STOP = "110121"
    LOGIN = "110122"
    LOGOUT = "110123"
    NODE_AUTHENTICATION = "110126"  # an association refused: unknown AE, network not allowed
    SECURITY_CONFIGURATION = "110129"
    USE_OF_RESTRICTED_FUNCTION = "110132"  # an operation the caller may not perform


@dataclass(frozen=True)
class StudyAccess:
    """One study an event touched: its patient, and how many instances of each SOP Class."""

    study_uid: str
    patient_id: str = ""
    sop_classes: tuple[tuple[str, int], ...] = ()  # (SOP Class UID, number of instances)

    @property
    def instances(self) -> int:
        return sum(n for _, n in self.sop_classes)


@dataclass(frozen=True)
class QueryText:
    """What was asked (ParticipantObjectQuery of PS3.15 A.5.3.10).

    DIMSE: ``identifier`` is the C-FIND identifier as received, ``sop_class`` its model and
    ``transfer_syntax`` the syntax it is encoded in. HTTP: ``identifier`` is the query
    string, ``sop_class`` empty and ``resource`` the path that was asked.
    """

    identifier: bytes
    sop_class: str = ""
    transfer_syntax: str = ""
    resource: str = ""


@dataclass(frozen=True)
class AuditEvent:
    """One auditable event, as data; :mod:`archive.audit.messages` turns it into PS3.15 XML.

    ``who`` asked for it (a user, an API key, a loopback client, a calling AE). ``peer`` is a
    third party the archive dealt with on ``who``'s behalf (the C-MOVE destination). ``service``
    names the archive's side: its AE title for DIMSE, the invoked path for HTTP.
    """

    kind: EventKind
    who: Principal
    outcome: Outcome = Outcome.SUCCESS
    action: Action | None = None  # None: the default of ``kind``
    subtype: Subtype | None = None
    service: str = ""
    peer: Principal | None = None
    study: StudyAccess | None = None
    query: QueryText | None = None
    detail: str = ""  # EventOutcomeDescription: never patient data
    at: float = field(default_factory=time.time)


class AuditTrail(Protocol):
    """Where roles send audit events."""

    def record(self, event: AuditEvent) -> None:
        """Take the event; never blocks on a collector and never raises."""


class NoAudit:
    """An audit trail that keeps nothing (unit tests, tools that audit nothing)."""

    def record(self, event: AuditEvent) -> None:
        pass


@dataclass
class StudyTally:
    """What one association or request touched, per study and outcome: the records to emit at its end.

    Not thread-safe: one association's handlers run on one thread (or one task).
    """

    _counts: dict[tuple[str, bool], dict[str, int]] = field(default_factory=dict)
    _patients: dict[str, str] = field(default_factory=dict)

    def add(self, study_uid: str, patient_id: str, sop_class_uid: str, ok: bool = True, count: int = 1) -> None:
        per_class = self._counts.setdefault((study_uid, ok), {})
        per_class[sop_class_uid] = per_class.get(sop_class_uid, 0) + count
        if patient_id or study_uid not in self._patients:
            self._patients[study_uid] = patient_id

    def __bool__(self) -> bool:
        return bool(self._counts)

    def drain(self) -> list[tuple[StudyAccess, bool]]:
        """Every (study, succeeded) tallied, once; the tally is empty afterwards."""
        out = [(StudyAccess(study, self._patients.get(study, ""), tuple(sorted(classes.items()))), ok)
               for (study, ok), classes in self._counts.items()]
        self._counts.clear()
        return out

    def events(self, kind: EventKind, who: Principal, *, action: Action | None = None, service: str = "",
               peer: Principal | None = None, detail: str = "") -> list[AuditEvent]:
        """One event per study and outcome (PS3.15 A.5.2: successes and failures in separate
        messages), emptying the tally."""
        return [AuditEvent(kind, who, Outcome.SUCCESS if ok else Outcome.MINOR_FAILURE, action, service=service,
                           peer=peer, study=study, detail="" if ok else detail)
                for study, ok in self.drain()]


def record_all(trail: AuditTrail, events: list[AuditEvent]) -> None:
    for event in events:
        trail.record(event)
