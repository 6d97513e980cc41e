"""DICOM audit messages (PS3.15 A.5) as XML: one builder per event type of A.5.3.

The schema is that of PS3.15 A.5.1 (RELAX NG, derived from RFC 3881): EventIdentification,
one or more ActiveParticipant, one AuditSourceIdentification, and ParticipantObjectIdentification
for the studies, the patient and the query. Codes are DCM (PS3.16) or RFC-3881 ones.

Choices where the standard leaves room (documented in docs/security.md, "Audit trail"):

- A DICOM peer is ``UserID`` = its AE title with ``AlternativeUserID`` ``AETITLES=<aet>``
  (A.5.2.1); an HTTP caller is its user or API key name (``anonymous`` when no authentication
  ran) with the kind of principal as ``AlternativeUserID``. Addresses are IP addresses
  (NetworkAccessPointTypeCode 2).
- The archive's own participant is its AE title (DIMSE) or the invoked path (HTTP).
- The schema requires a ParticipantObjectName or a ParticipantObjectQuery on every participant
  object. The patient's name never enters the trail, so the name of a patient or study object
  repeats its identifier (the patient ID, the Study Instance UID).
- SOP Classes and their instance counts go in ParticipantObjectDescription (A.5.1: SOPClass,
  NumberOfInstances); individual SOP Instance UIDs are not listed.
"""

from __future__ import annotations

import base64
import re
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass

from archive.core.audit import Action, AuditEvent, EventKind, StudyAccess, Subtype
from archive.core.identity import Principal, PrincipalKind

Code = tuple[str, str, str]  # (csd-code, codeSystemName, originalText)

# PS3.16 CID 400 Audit Event ID
EVENT_ID: dict[EventKind, Code] = {
    EventKind.APPLICATION_ACTIVITY: ("110100", "DCM", "Application Activity"),
    EventKind.AUDIT_LOG_USED: ("110101", "DCM", "Audit Log Used"),
    EventKind.BEGIN_TRANSFERRING: ("110102", "DCM", "Begin Transferring DICOM Instances"),
    EventKind.INSTANCES_ACCESSED: ("110103", "DCM", "DICOM Instances Accessed"),
    EventKind.INSTANCES_TRANSFERRED: ("110104", "DCM", "DICOM Instances Transferred"),
    EventKind.STUDY_DELETED: ("110105", "DCM", "DICOM Study Deleted"),
    EventKind.EXPORT: ("110106", "DCM", "Export"),
    EventKind.QUERY: ("110112", "DCM", "Query"),
    EventKind.SECURITY_ALERT: ("110113", "DCM", "Security Alert"),
    EventKind.USER_AUTHENTICATION: ("110114", "DCM", "User Authentication"),
}
# EventActionCode each message shall or usually has (A.5.3.x tables)
DEFAULT_ACTION: dict[EventKind, Action] = {
    EventKind.APPLICATION_ACTIVITY: Action.EXECUTE,
    EventKind.AUDIT_LOG_USED: Action.READ,
    EventKind.BEGIN_TRANSFERRING: Action.EXECUTE,
    EventKind.INSTANCES_ACCESSED: Action.READ,
    EventKind.INSTANCES_TRANSFERRED: Action.READ,
    EventKind.STUDY_DELETED: Action.DELETE,
    EventKind.EXPORT: Action.READ,
    EventKind.QUERY: Action.EXECUTE,
    EventKind.SECURITY_ALERT: Action.EXECUTE,
    EventKind.USER_AUTHENTICATION: Action.EXECUTE,
}
# PS3.16 CID 401, 403: EventTypeCode
SUBTYPE_MEANING = {
    Subtype.APPLICATION_START: "Application Start",
    Subtype.APPLICATION_STOP: "Application Stop",
    Subtype.LOGIN: "Login",
    Subtype.LOGOUT: "Logout",
    Subtype.NODE_AUTHENTICATION: "Node Authentication",
    Subtype.SECURITY_CONFIGURATION: "Security Configuration",
    Subtype.USE_OF_RESTRICTED_FUNCTION: "Use of Restricted Function",
}
# PS3.16 CID 402 Audit Active Participant Role ID
APPLICATION: Code = ("110150", "DCM", "Application")
APPLICATION_LAUNCHER: Code = ("110151", "DCM", "Application Launcher")
DESTINATION: Code = ("110152", "DCM", "Destination Role ID")
SOURCE: Code = ("110153", "DCM", "Source Role ID")
DESTINATION_MEDIA: Code = ("110154", "DCM", "Destination Media")
# PS3.16 CID 404 Audit Participant Object ID Type, and RFC 3881's own codes (A.5.1.2.4)
STUDY_INSTANCE_UID: Code = ("110180", "DCM", "Study Instance UID")
SOP_CLASS_UID: Code = ("110181", "DCM", "SOP Class UID")
PATIENT_NUMBER: Code = ("2", "RFC-3881", "Patient Number")
URI: Code = ("12", "RFC-3881", "URI")
AUDIT_SOURCE_APPLICATION_SERVER = "4"  # A.5.1.2.1: application server process

# XML 1.0 allows neither these characters nor unpaired surrogates
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff\ud800-\udfff]")


def clean(text: str, *, line: bool = True) -> str:
    """Text that XML 1.0 can carry; with ``line``, on one line (one record per line in the file)."""
    text = _NOT_XML.sub("\ufffd", text)
    return text.replace("\r", " ").replace("\n", " ").replace("\t", " ") if line else text


@dataclass(frozen=True)
class Source:
    """The archive as the audit source (AuditSourceIdentification) and as a participant."""

    source_id: str  # AuditSourceID: which archive reported it
    aet: str  # its AE title
    host: str = ""  # its host name (NetworkAccessPointID of its own participant)


def _code(parent: ET.Element, tag: str, code: Code) -> ET.Element:
    return ET.SubElement(parent, tag, {"csd-code": code[0], "codeSystemName": code[1], "originalText": code[2]})


def _timestamp(at: float) -> str:
    """xsd:dateTime in UTC with milliseconds (A.5.2.5: a time zone is given)."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(at)) + f".{int(at * 1000) % 1000:03d}Z"


def _participant(root: ET.Element, user_id: str, requestor: bool, *, role: Code | None = None,
                 alternative: str = "", address: str = "", address_type: str = "2") -> ET.Element:
    attrs = {"UserID": clean(user_id) or "unknown", "UserIsRequestor": "true" if requestor else "false"}
    if alternative:
        attrs["AlternativeUserID"] = clean(alternative)
    if address:
        attrs["NetworkAccessPointID"] = clean(address)
        attrs["NetworkAccessPointTypeCode"] = address_type
    element = ET.SubElement(root, "ActiveParticipant", attrs)
    if role is not None:
        _code(element, "RoleIDCode", role)
    return element


def _principal(root: ET.Element, who: Principal, requestor: bool, role: Code | None = None) -> None:
    alternative = f"AETITLES={who.name}" if who.kind is PrincipalKind.AE else who.kind.value
    _participant(root, who.name, requestor, role=role, alternative=alternative, address=who.address)


def _archive(root: ET.Element, source: Source, event: AuditEvent, requestor: bool = False,
             role: Code | None = None) -> None:
    """The archive's own participant: its AE title, or the invoked path for HTTP."""
    service = event.service or source.aet
    alternative = f"AETITLES={source.aet}" if service == source.aet else ""
    _participant(root, service, requestor, role=role, alternative=alternative, address=source.host,
                 address_type="1")


def _object(root: ET.Element, object_id: str, id_type: Code, *, type_code: str, role: str,
            name: str | None = None, query: bytes | None = None) -> ET.Element:
    element = ET.SubElement(root, "ParticipantObjectIdentification", {
        "ParticipantObjectID": clean(object_id), "ParticipantObjectTypeCode": type_code,
        "ParticipantObjectTypeCodeRole": role})
    _code(element, "ParticipantObjectIDTypeCode", id_type)
    if query is not None:
        ET.SubElement(element, "ParticipantObjectQuery").text = base64.b64encode(query).decode("ascii")
    else:
        ET.SubElement(element, "ParticipantObjectName").text = clean(name if name is not None else object_id)
    return element


def _study_and_patient(root: ET.Element, study: StudyAccess | None) -> None:
    """The study (with its SOP Classes and instance counts) and its patient (A.5.3.3, .6, .7, .8)."""
    if study is None:
        return
    element = _object(root, study.study_uid, STUDY_INSTANCE_UID, type_code="2", role="3")
    if study.sop_classes:
        description = ET.SubElement(element, "ParticipantObjectDescription")
        for sop_class, count in study.sop_classes:
            ET.SubElement(description, "SOPClass", {"UID": clean(sop_class), "NumberOfInstances": str(count)})
    # The patient ID as the catalog has it: the one piece of patient data in the trail.
    _object(root, study.patient_id, PATIENT_NUMBER, type_code="1", role="1")


def _transfer(root: ET.Element, source: Source, event: AuditEvent) -> None:
    """Source and destination of A.5.3.3 / A.5.3.7: into the archive (C, U) or out of it (R)."""
    if (event.action or Action.READ) in (Action.CREATE, Action.UPDATE):
        _principal(root, event.who, True, SOURCE)
        _archive(root, source, event, False, DESTINATION)
        return
    _archive(root, source, event, False, SOURCE)
    if event.peer is not None:  # a C-MOVE: sent to a third party at who's request
        _principal(root, event.peer, False, DESTINATION)
        _principal(root, event.who, True)
    else:
        _principal(root, event.who, True, DESTINATION)


def _application_activity(root: ET.Element, source: Source, event: AuditEvent) -> None:  # A.5.3.1
    _archive(root, source, event, False, APPLICATION)
    _principal(root, event.who, True, APPLICATION_LAUNCHER)


def _audit_log_used(root: ET.Element, source: Source, event: AuditEvent) -> None:  # A.5.3.2
    _principal(root, event.who, True)
    _object(root, event.service, URI, type_code="2", role="13", name="Security Audit Log")


def _begin_or_transferred(root: ET.Element, source: Source, event: AuditEvent) -> None:  # A.5.3.3, A.5.3.7
    _transfer(root, source, event)
    _study_and_patient(root, event.study)


def _export(root: ET.Element, source: Source, event: AuditEvent) -> None:  # A.5.3.4
    _principal(root, event.who, True)
    _archive(root, source, event, False, SOURCE)
    if event.peer is not None:
        _principal(root, event.peer, False, DESTINATION_MEDIA)
    _study_and_patient(root, event.study)


def _accessed_or_deleted(root: ET.Element, source: Source, event: AuditEvent) -> None:  # A.5.3.6, A.5.3.8
    _principal(root, event.who, True)
    _archive(root, source, event)
    _study_and_patient(root, event.study)


def _query(root: ET.Element, source: Source, event: AuditEvent) -> None:  # A.5.3.10
    _principal(root, event.who, True, SOURCE)
    _archive(root, source, event, False, DESTINATION)
    query = event.query
    if query is None:
        return
    if query.sop_class:  # DIMSE: the identifier as received, in its transfer syntax
        element = _object(root, query.sop_class, SOP_CLASS_UID, type_code="2", role="3", query=query.identifier)
        ET.SubElement(element, "ParticipantObjectDetail", {
            "type": "TransferSyntax", "value": base64.b64encode(query.transfer_syntax.encode()).decode("ascii")})
    else:  # HTTP: the resource asked and its query string
        _object(root, query.resource, URI, type_code="2", role="24", query=query.identifier)


def _security_alert(root: ET.Element, source: Source, event: AuditEvent) -> None:  # A.5.3.11
    _archive(root, source, event)  # the reporting process
    _principal(root, event.who, True)  # the performing one
    if event.service.startswith("/"):  # the alert subject: the resource refused
        _object(root, event.service, URI, type_code="2", role="13")


def _user_authentication(root: ET.Element, source: Source, event: AuditEvent) -> None:  # A.5.3.12
    _principal(root, event.who, True)
    _archive(root, source, event)  # the authenticating system


_BUILDERS: dict[EventKind, Callable[[ET.Element, Source, AuditEvent], None]] = {
    EventKind.APPLICATION_ACTIVITY: _application_activity,
    EventKind.AUDIT_LOG_USED: _audit_log_used,
    EventKind.BEGIN_TRANSFERRING: _begin_or_transferred,
    EventKind.EXPORT: _export,
    EventKind.INSTANCES_ACCESSED: _accessed_or_deleted,
    EventKind.INSTANCES_TRANSFERRED: _begin_or_transferred,
    EventKind.STUDY_DELETED: _accessed_or_deleted,
    EventKind.QUERY: _query,
    EventKind.SECURITY_ALERT: _security_alert,
    EventKind.USER_AUTHENTICATION: _user_authentication,
}


def audit_message(event: AuditEvent, source: Source) -> ET.Element:
    """The AuditMessage element of ``event`` (PS3.15 A.5.1, A.5.3)."""
    root = ET.Element("AuditMessage")
    identification = ET.SubElement(root, "EventIdentification", {
        "EventActionCode": (event.action or DEFAULT_ACTION[event.kind]).value,
        "EventDateTime": _timestamp(event.at),
        "EventOutcomeIndicator": str(int(event.outcome)),
    })
    _code(identification, "EventID", EVENT_ID[event.kind])
    if event.subtype is not None:
        _code(identification, "EventTypeCode", (event.subtype.value, "DCM", SUBTYPE_MEANING[event.subtype]))
    if event.detail:
        ET.SubElement(identification, "EventOutcomeDescription").text = clean(event.detail)
    _BUILDERS[event.kind](root, source, event)
    # A.5.1: one audit source, between the participants and the participant objects
    position = next((i for i, child in enumerate(root) if child.tag == "ParticipantObjectIdentification"), len(root))
    audit_source = ET.Element("AuditSourceIdentification", {"AuditSourceID": clean(source.source_id)})
    ET.SubElement(audit_source, "AuditSourceTypeCode", {"csd-code": AUDIT_SOURCE_APPLICATION_SERVER})
    root.insert(position, audit_source)
    return root


def to_xml(event: AuditEvent, source: Source) -> str:
    """The message as one line of XML (no declaration: UTF-8 is implied, RFC 5424 6.4)."""
    return ET.tostring(audit_message(event, source), encoding="unicode")
