"""PS3.15 A.5 audit messages: each event type validates against the A.5.1 schema and carries
what its A.5.3 table requires (event ID and action, participants with their roles, the
study with its SOP Classes, the patient ID, the query)."""

from __future__ import annotations

import base64
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from lxml import etree

from archive.audit.messages import Source, audit_message, to_xml
from archive.core.audit import (
    Action, AuditEvent, EventKind, Outcome, QueryText, StudyAccess, StudyTally, Subtype,
)
from archive.core.identity import Principal, PrincipalKind

SCHEMA = etree.RelaxNG(etree.parse(str(Path(__file__).parent / "data" / "dicom-audit-message.rng")))
SOURCE = Source("ARCHIVE@host", "ARCHIVE", "archive.example")
MODALITY = Principal(PrincipalKind.AE, "CT1", "10.1.2.3")
PACS = Principal(PrincipalKind.AE, "PACS", "10.1.2.9")
USER = Principal(PrincipalKind.USER, "alice", "192.0.2.7")
STUDY = StudyAccess("1.2.3.4", "PAT-1", (("1.2.840.10008.5.1.4.1.1.2", 3), ("1.2.840.10008.5.1.4.1.1.4", 1)))
FIND = QueryText(b"\x08\x00\x52\x00\x06\x00\x00\x00STUDY ", "1.2.840.10008.5.1.4.1.2.2.1", "1.2.840.10008.1.2.1")

# (event, EventID code, action, [(role code or None, UserIsRequestor)], participant object ID type codes)
CASES = [
    (AuditEvent(EventKind.APPLICATION_ACTIVITY, Principal(PrincipalKind.LOCAL, "archive", "127.0.0.1"),
                subtype=Subtype.APPLICATION_START, detail="DICOM allow-lists: none"),
     "110100", "E", [("110150", "false"), ("110151", "true")], []),
    (AuditEvent(EventKind.AUDIT_LOG_USED, USER, service="file:///data/audit/audit.log"),
     "110101", "R", [(None, "true")], ["12"]),
    (AuditEvent(EventKind.BEGIN_TRANSFERRING, MODALITY, service="ARCHIVE", peer=PACS, study=STUDY),
     "110102", "E", [("110153", "false"), ("110152", "false"), (None, "true")], ["110180", "2"]),
    (AuditEvent(EventKind.EXPORT, MODALITY, peer=PACS, study=STUDY),
     "110106", "R", [(None, "true"), ("110153", "false"), ("110154", "false")], ["110180", "2"]),
    (AuditEvent(EventKind.INSTANCES_ACCESSED, USER, service="/dicom-web/studies/1.2.3.4", study=STUDY),
     "110103", "R", [(None, "true"), (None, "false")], ["110180", "2"]),
    (AuditEvent(EventKind.INSTANCES_TRANSFERRED, MODALITY, action=Action.CREATE, study=STUDY),
     "110104", "C", [("110153", "true"), ("110152", "false")], ["110180", "2"]),
    (AuditEvent(EventKind.INSTANCES_TRANSFERRED, PACS, study=STUDY),  # C-GET: sent to the requestor
     "110104", "R", [("110153", "false"), ("110152", "true")], ["110180", "2"]),
    (AuditEvent(EventKind.STUDY_DELETED, USER, study=STUDY),
     "110105", "D", [(None, "true"), (None, "false")], ["110180", "2"]),
    (AuditEvent(EventKind.QUERY, MODALITY, query=FIND),
     "110112", "E", [("110153", "true"), ("110152", "false")], ["110181"]),
    (AuditEvent(EventKind.QUERY, USER, service="/dicom-web/studies",
                query=QueryText(b"PatientID=PAT-1&StudyDate=20240101-", resource="/dicom-web/studies")),
     "110112", "E", [("110153", "true"), ("110152", "false")], ["12"]),
    (AuditEvent(EventKind.SECURITY_ALERT, MODALITY, Outcome.MINOR_FAILURE, subtype=Subtype.NODE_AUTHENTICATION,
                detail="calling AE title not allowed"),
     "110113", "E", [(None, "false"), (None, "true")], []),
    (AuditEvent(EventKind.USER_AUTHENTICATION, Principal(PrincipalKind.OPEN, "anonymous", "192.0.2.8"),
                Outcome.MINOR_FAILURE, subtype=Subtype.LOGIN, service="/dicom-web/studies", detail="bad token"),
     "110114", "E", [(None, "true"), (None, "false")], []),
]


def _parse(event: AuditEvent) -> ET.Element:
    text = to_xml(event, SOURCE)
    assert "\n" not in text  # one record per line in the local file
    return ET.fromstring(text)


@pytest.mark.parametrize("event,event_id,action,participants,objects", CASES,
                         ids=[f"{c[0].kind.value}-{c[2]}" for c in CASES])
def test_every_event_type_validates_and_has_what_a53_requires(event: AuditEvent, event_id: str, action: str,
                                                               participants: list[tuple[str | None, str]],
                                                               objects: list[str]) -> None:
    text = to_xml(event, SOURCE)
    document = etree.fromstring(text.encode())
    assert SCHEMA.validate(document), SCHEMA.error_log
    root = ET.fromstring(text)
    ident = root.find("EventIdentification")
    assert ident is not None
    assert ident.get("EventActionCode") == action
    assert ident.get("EventOutcomeIndicator") == str(int(event.outcome))
    assert ident.get("EventDateTime", "").endswith("Z")
    event_code = ident.find("EventID")
    assert event_code is not None and event_code.get("csd-code") == event_id
    assert event_code.get("codeSystemName") == "DCM"
    if event.subtype is not None:
        type_code = ident.find("EventTypeCode")
        assert type_code is not None and type_code.get("csd-code") == event.subtype.value
    found = []
    for p in root.findall("ActiveParticipant"):
        role = p.find("RoleIDCode")
        found.append((role.get("csd-code") if role is not None else None, p.get("UserIsRequestor")))
        assert p.get("UserID")
    assert found == participants
    assert [o.find("ParticipantObjectIDTypeCode").get("csd-code")  # type: ignore[union-attr]
            for o in root.findall("ParticipantObjectIdentification")] == objects
    source = root.find("AuditSourceIdentification")
    assert source is not None and source.get("AuditSourceID") == "ARCHIVE@host"


def test_study_and_patient_objects() -> None:
    root = _parse(AuditEvent(EventKind.INSTANCES_TRANSFERRED, MODALITY, action=Action.CREATE, study=STUDY))
    study, patient = root.findall("ParticipantObjectIdentification")
    assert (study.get("ParticipantObjectID"), study.get("ParticipantObjectTypeCode"),
            study.get("ParticipantObjectTypeCodeRole")) == ("1.2.3.4", "2", "3")
    classes = [(c.get("UID"), c.get("NumberOfInstances"))
               for c in study.findall("ParticipantObjectDescription/SOPClass")]
    assert classes == [("1.2.840.10008.5.1.4.1.1.2", "3"), ("1.2.840.10008.5.1.4.1.1.4", "1")]
    # PS3.15 A.5.3.7: the patient is (2, RFC-3881, "Patient Number") with the patient ID
    assert (patient.get("ParticipantObjectID"), patient.get("ParticipantObjectTypeCode"),
            patient.get("ParticipantObjectTypeCodeRole")) == ("PAT-1", "1", "1")
    id_type = patient.find("ParticipantObjectIDTypeCode")
    assert id_type is not None and (id_type.get("csd-code"), id_type.get("codeSystemName")) == ("2", "RFC-3881")


def test_participants_name_the_ae_and_the_address() -> None:
    root = _parse(AuditEvent(EventKind.INSTANCES_TRANSFERRED, MODALITY, action=Action.CREATE, study=STUDY))
    sender, archive = root.findall("ActiveParticipant")
    assert (sender.get("UserID"), sender.get("AlternativeUserID"), sender.get("NetworkAccessPointID"),
            sender.get("NetworkAccessPointTypeCode")) == ("CT1", "AETITLES=CT1", "10.1.2.3", "2")
    assert (archive.get("UserID"), archive.get("NetworkAccessPointID")) == ("ARCHIVE", "archive.example")


def test_dimse_query_is_the_identifier_in_base64_with_its_transfer_syntax() -> None:
    root = _parse(AuditEvent(EventKind.QUERY, MODALITY, query=FIND))
    (obj,) = root.findall("ParticipantObjectIdentification")
    assert obj.get("ParticipantObjectID") == FIND.sop_class
    assert base64.b64decode(obj.findtext("ParticipantObjectQuery", "")) == FIND.identifier
    detail = obj.find("ParticipantObjectDetail")
    assert detail is not None and detail.get("type") == "TransferSyntax"
    assert base64.b64decode(detail.get("value", "")) == FIND.transfer_syntax.encode()


def test_text_that_xml_cannot_carry_is_replaced_and_stays_on_one_line() -> None:
    odd = Principal(PrincipalKind.AE, "BAD\x00AE\nX", "10.0.0.1")
    event = AuditEvent(EventKind.SECURITY_ALERT, odd, Outcome.MINOR_FAILURE, subtype=Subtype.NODE_AUTHENTICATION,
                       detail="line one\nline two <&>")
    text = to_xml(event, SOURCE)
    assert "\n" not in text and "\x00" not in text
    assert SCHEMA.validate(etree.fromstring(text.encode()))
    assert audit_message(event, SOURCE).findtext("EventIdentification/EventOutcomeDescription") == \
        "line one line two <&>"


def test_tally_gives_one_event_per_study_and_outcome() -> None:
    tally = StudyTally()
    for _ in range(3):
        tally.add("1.2.3", "PAT-1", "1.2.840.10008.5.1.4.1.1.2")
    tally.add("1.2.3", "PAT-1", "1.2.840.10008.5.1.4.1.1.2", ok=False)
    tally.add("1.2.4", "PAT-2", "1.2.840.10008.5.1.4.1.1.4")
    events = tally.events(EventKind.INSTANCES_TRANSFERRED, MODALITY, action=Action.CREATE, detail="0xA700")
    assert not tally
    summary = sorted((e.study.study_uid, e.study.patient_id, e.outcome, e.study.instances, e.detail)
                     for e in events if e.study is not None)
    assert summary == [("1.2.3", "PAT-1", Outcome.SUCCESS, 3, ""), ("1.2.3", "PAT-1", Outcome.MINOR_FAILURE, 1, "0xA700"),
                       ("1.2.4", "PAT-2", Outcome.SUCCESS, 1, "")]


def test_the_schema_refuses_what_a51_does_not_allow() -> None:
    root = audit_message(AuditEvent(EventKind.INSTANCES_TRANSFERRED, MODALITY, action=Action.CREATE, study=STUDY),
                         SOURCE)
    patient = root.findall("ParticipantObjectIdentification")[1]
    patient.remove(patient.find("ParticipantObjectName"))  # type: ignore[arg-type]
    assert not SCHEMA.validate(etree.fromstring(ET.tostring(root)))
    root.find("EventIdentification").set("EventOutcomeIndicator", "3")  # type: ignore[union-attr]
    assert not SCHEMA.validate(etree.fromstring(ET.tostring(root)))
