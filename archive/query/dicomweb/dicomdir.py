"""A DICOMDIR for a zip download laid out as media (PS3.10 8, PS3.3 F, PS3.11 General Purpose).

With ``?dicomdir=true`` a study or series zip is a file-set a CD/DVD or USB viewer opens: the
instances under PS3.10 File IDs (``DICOM/PA000001/ST000001/SE000001/IM000001``: at most eight
components of at most eight upper-case letters, digits or ``_``) and a ``DICOMDIR`` at the root
with a PATIENT, STUDY and SERIES record for each of them and an IMAGE (or SR DOCUMENT, ENCAP DOC,
WAVEFORM, PRESENTATION, ...) record for each instance (PS3.3 F.5), keyed from the attributes the
catalog keeps. Type 1 record keys an instance lacks are made up as DCMTK's ``dcmmkdir --invent``
does (a study ID from its order, a date and time of 19000101 000000, an instance number from the
order in its series), so that a viewer can read every record.

pydicom writes the records. The offsets between them (PS3.3 F.3.2.1: bytes from the file's first
byte, preamble included) are fixed-width (UL), so the file is written once with zeros, read back
for the position of each record (pydicom's ``seq_item_tell``), and written again with them.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pydicom import dcmread
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from archive.core.levels import Level
from archive.core.query import Matcher, Query
from archive.core.ports import Catalog
from archive.core.records import CatalogInstance
from archive.ingest.describe import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION

MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"  # PS3.4 Annex I
ROOT = "DICOM"  # the directory the instances go under
# What the records say of an instance, from the catalog (PS3.3 F.5.1-F.5.4 and the leaf records' keys)
KEYS = ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate", "StudyTime",
        "StudyDescription", "StudyID", "AccessionNumber", "SeriesInstanceUID", "Modality", "SeriesNumber",
        "InstanceNumber", "ContentDate", "ContentTime", "CompletionFlag", "VerificationFlag", "DocumentTitle",
        "MIMETypeOfEncapsulatedDocument", "ConceptNameCodeSequence", "RTPlanLabel", "RTPlanDate", "RTPlanTime",
        "StructureSetLabel", "StructureSetDate", "StructureSetTime", "DoseSummationType", "TreatmentDate",
        "TreatmentTime", "PresentationCreationDate", "PresentationCreationTime", "ContentLabel", "ContentDescription",
        "ContentCreatorName", "SpecificCharacterSet")
UNKNOWN_DATE, UNKNOWN_TIME = "19000101", "000000"
# Type 1 keys of records (PS3.3 F.5) made up when the instance lacks them (numbers from the order: below)
INVENTED: dict[str, dict[str, str]] = {
    "STUDY": {"StudyDate": UNKNOWN_DATE, "StudyTime": UNKNOWN_TIME},
    "SERIES": {"Modality": "OT"},
    "SR DOCUMENT": {"ContentDate": UNKNOWN_DATE, "ContentTime": UNKNOWN_TIME},
    "WAVEFORM": {"ContentDate": UNKNOWN_DATE, "ContentTime": UNKNOWN_TIME},
    "KEY OBJECT DOC": {"ContentDate": UNKNOWN_DATE, "ContentTime": UNKNOWN_TIME},
    "PRESENTATION": {"PresentationCreationDate": UNKNOWN_DATE, "PresentationCreationTime": UNKNOWN_TIME,
                     "ContentLabel": "UNNAMED"},
    "RT PLAN": {"RTPlanLabel": "UNNAMED"},
    "RT STRUCTURE SET": {"StructureSetLabel": "UNNAMED"},
}


def _tag(keyword: str) -> str:
    return f"{tag_for_keyword(keyword):08X}"


def _record_type(sop_class_uid: str) -> str:
    """The DICOMDIR record type of an instance (PS3.3 F.4, Table F.4-1); IMAGE for the others."""
    if sop_class_uid == "1.2.840.10008.5.1.4.1.1.88.59":
        return "KEY OBJECT DOC"
    if sop_class_uid.startswith("1.2.840.10008.5.1.4.1.1.88."):
        return "SR DOCUMENT"
    if sop_class_uid.startswith("1.2.840.10008.5.1.4.1.1.104."):
        return "ENCAP DOC"
    if sop_class_uid.startswith("1.2.840.10008.5.1.4.1.1.9."):
        return "WAVEFORM"
    if sop_class_uid.startswith("1.2.840.10008.5.1.4.1.1.11."):
        return "PRESENTATION"
    if sop_class_uid == "1.2.840.10008.5.1.4.1.1.481.3":
        return "RT STRUCTURE SET"
    if sop_class_uid in ("1.2.840.10008.5.1.4.1.1.481.5", "1.2.840.10008.5.1.4.1.1.481.8"):
        return "RT PLAN"
    if sop_class_uid == "1.2.840.10008.5.1.4.1.1.481.2":
        return "RT DOSE"
    if sop_class_uid in ("1.2.840.10008.5.1.4.1.1.481.4", "1.2.840.10008.5.1.4.1.1.481.6",
                         "1.2.840.10008.5.1.4.1.1.481.7"):
        return "RT TREAT RECORD"
    if sop_class_uid.startswith("1.2.840.10008.5.1.4.1.1.66"):
        return "REGISTRATION" if sop_class_uid in ("1.2.840.10008.5.1.4.1.1.66.1", "1.2.840.10008.5.1.4.1.1.66.3") \
            else "FIDUCIAL" if sop_class_uid == "1.2.840.10008.5.1.4.1.1.66.2" else "IMAGE"
    return "IMAGE"


@dataclass(eq=False)
class _Node:
    record: Dataset
    number: int  # among its siblings, from 1: its File ID component
    children: dict[str, "_Node"] = field(default_factory=dict)


@dataclass(frozen=True)
class Layout:
    """The media layout of a download: each instance's member name, and the DICOMDIR's bytes."""

    members: dict[str, str]  # SOP Instance UID -> member name (a PS3.10 File ID, '/'-separated)
    dicomdir: bytes


async def attributes(catalog: Catalog, matchers: tuple[Matcher, ...], limit: int) -> dict[str, str]:
    """The metadata the catalog keeps for WADO-RS of what the request names (the instance-level rows
    lack some record keys: an RT plan's label, a document's MIME type): SOP UID -> its DICOM JSON text,
    parsed by :func:`layout` off the event loop."""
    return {meta.sop_instance_uid: meta.json for meta in await catalog.metadata(Query(Level.IMAGE, matchers, limit=limit))}


def _record_keys(text: str) -> dict[str, Any]:
    attributes = json.loads(text)
    return {tag: attributes[tag] for tag in _KEY_TAGS if tag in attributes}


def _value(row: dict[str, Any], keyword: str) -> Any:
    values = (row.get(_tag(keyword)) or {}).get("Value") or []
    return values[0] if values else None


def _keys(row: dict[str, Any], keywords: Sequence[str]) -> Dataset:
    """The record keys ``keywords`` as the instance holds them (empty when it does not: Type 2)."""
    selected = {_tag(k): row.get(_tag(k)) or {"vr": _vr(k)} for k in keywords}
    return Dataset.from_json(selected)


def _vr(keyword: str) -> str:
    return str(dictionary_VR(keyword))


def _record(kind: str, keys: Dataset, numbered: dict[str, object] | None = None) -> Dataset:
    """A directory record of ``kind`` with ``keys``; empty Type 1 keys made up (:data:`INVENTED`,
    and ``numbered``: the ones a number from the order stands in for)."""
    for keyword, made_up in {**INVENTED.get(kind, {}), **(numbered or {})}.items():
        if keyword in keys and keys[keyword].value in (None, "", []):
            keys[keyword].value = made_up
    record = Dataset()
    record.OffsetOfTheNextDirectoryRecord = 0
    record.RecordInUseFlag = 0xFFFF
    record.OffsetOfReferencedLowerLevelDirectoryEntity = 0
    record.DirectoryRecordType = kind
    for element in keys:
        record.add(element)
    return record


def layout(instances: Sequence[CatalogInstance], metadata: dict[str, str]) -> Layout:
    """File IDs for ``instances`` (in their order) and the DICOMDIR that indexes them; ``metadata``
    as :func:`attributes` gives it."""
    patients: dict[str, _Node] = {}
    members: dict[str, str] = {}
    charsets: set[str] = set()
    for inst in instances:
        text = metadata.get(inst.sop_instance_uid)
        row = _record_keys(text) if text else {}
        for charset in (row.get(_tag("SpecificCharacterSet")) or {}).get("Value") or []:
            charsets.add(str(charset))
        patient_id = str(_value(row, "PatientID") or "")
        key = patient_id or "\0" + json.dumps(_value(row, "PatientName"))  # no ID: one patient per name
        patient = patients.get(key)
        if patient is None:
            number = len(patients) + 1
            keys = _keys(row, ("PatientName", "PatientID", "PatientBirthDate", "PatientSex"))
            patient = patients[key] = _Node(_record("PATIENT", keys, {"PatientID": f"UNKNOWN{number}"}), number)
        study = patient.children.get(inst.study_uid)
        if study is None:
            number = len(patient.children) + 1
            keys = _keys(row, ("StudyDate", "StudyTime", "StudyDescription", "StudyInstanceUID", "StudyID",
                               "AccessionNumber"))
            keys.StudyInstanceUID = inst.study_uid
            study = patient.children[inst.study_uid] = _Node(_record("STUDY", keys, {"StudyID": str(number)}), number)
        series = study.children.get(inst.series_uid)
        if series is None:
            number = len(study.children) + 1
            keys = _keys(row, ("Modality", "SeriesInstanceUID", "SeriesNumber"))
            keys.SeriesInstanceUID = inst.series_uid
            series = study.children[inst.series_uid] = _Node(_record("SERIES", keys, {"SeriesNumber": number}), number)
        kind = _record_type(inst.sop_class_uid)
        number = len(series.children) + 1
        leaf = _record(kind, _keys(row, _leaf_keys(kind)), {"InstanceNumber": number})
        file_id = [ROOT, _component("PA", patient.number), _component("ST", study.number),
                   _component("SE", series.number), _component("IM", number)]
        leaf.ReferencedFileID = file_id
        leaf.ReferencedSOPClassUIDInFile = inst.sop_class_uid
        leaf.ReferencedSOPInstanceUIDInFile = inst.sop_instance_uid
        leaf.ReferencedTransferSyntaxUIDInFile = inst.transfer_syntax_uid
        series.children[inst.sop_instance_uid] = _Node(leaf, number)
        members[inst.sop_instance_uid] = "/".join(file_id)
    return Layout(members, _write(list(patients.values()), charsets))


def _component(prefix: str, number: int) -> str:
    """A File ID component (PS3.10 8.5: at most 8 of A-Z, 0-9): 6 decimal digits, base 36 beyond."""
    if number < 10**6:
        return f"{prefix}{number:06d}"
    digits = ""
    while number:
        number, digit = divmod(number, 36)
        digits = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"[digit] + digits
    return f"{prefix}{digits:0>6}"


def _leaf_keys(kind: str) -> tuple[str, ...]:
    """The keys of each leaf record type we write (PS3.3 F.5: Type 1 and 2 ones the catalog holds)."""
    if kind == "SR DOCUMENT":
        return ("InstanceNumber", "CompletionFlag", "VerificationFlag", "ContentDate", "ContentTime",
                "ConceptNameCodeSequence")
    if kind == "ENCAP DOC":
        return ("ContentDate", "ContentTime", "InstanceNumber", "DocumentTitle", "ConceptNameCodeSequence",
                "MIMETypeOfEncapsulatedDocument")
    if kind == "WAVEFORM":
        return ("InstanceNumber", "ContentDate", "ContentTime")
    if kind == "KEY OBJECT DOC":
        return ("InstanceNumber", "ContentDate", "ContentTime", "ConceptNameCodeSequence")
    if kind == "PRESENTATION":
        return ("InstanceNumber", "PresentationCreationDate", "PresentationCreationTime", "ContentLabel",
                "ContentDescription", "ContentCreatorName")
    if kind == "RT DOSE":
        return ("InstanceNumber", "DoseSummationType")
    if kind == "RT TREAT RECORD":
        return ("InstanceNumber", "TreatmentDate", "TreatmentTime")
    if kind == "RT PLAN":
        return ("InstanceNumber", "RTPlanLabel", "RTPlanDate", "RTPlanTime")
    if kind == "RT STRUCTURE SET":
        return ("InstanceNumber", "StructureSetLabel", "StructureSetDate", "StructureSetTime")
    return ("InstanceNumber",)


def _flatten(nodes: list[_Node], out: list[tuple[_Node, _Node | None]]) -> None:
    """Depth first: each node with its next sibling, in the order records go into the sequence."""
    for index, node in enumerate(nodes):
        out.append((node, nodes[index + 1] if index + 1 < len(nodes) else None))
        _flatten(list(node.children.values()), out)


def _write(patients: list[_Node], charsets: set[str]) -> bytes:
    order: list[tuple[_Node, _Node | None]] = []
    _flatten(patients, order)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = UID(MEDIA_STORAGE_DIRECTORY)
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = UID(IMPLEMENTATION_CLASS_UID)
    ds.file_meta.ImplementationVersionName = IMPLEMENTATION_VERSION
    if charsets - {"ISO_IR 6", ""}:
        ds.SpecificCharacterSet = "ISO_IR 192"  # the records' names and descriptions, whatever each instance used
    ds.FileSetID = ""
    ds.OffsetOfTheFirstDirectoryRecordOfTheRootDirectoryEntity = 0
    ds.OffsetOfTheLastDirectoryRecordOfTheRootDirectoryEntity = 0
    ds.FileSetConsistencyFlag = 0
    ds.DirectoryRecordSequence = [node.record for node, _ in order]
    first = _encode(ds)
    positions = [item.seq_item_tell for item in dcmread(io.BytesIO(first)).DirectoryRecordSequence]
    where = {id(node): position for (node, _), position in zip(order, positions)}
    for node, following in order:
        node.record.OffsetOfTheNextDirectoryRecord = where[id(following)] if following is not None else 0
        first_child = next(iter(node.children.values()), None)
        node.record.OffsetOfReferencedLowerLevelDirectoryEntity = where[id(first_child)] if first_child else 0
    if patients:
        ds.OffsetOfTheFirstDirectoryRecordOfTheRootDirectoryEntity = where[id(patients[0])]
        ds.OffsetOfTheLastDirectoryRecordOfTheRootDirectoryEntity = where[id(patients[-1])]
    second = _encode(ds)
    assert len(second) == len(first)  # every offset is a UL: the records did not move
    return second


def _encode(ds: Dataset) -> bytes:
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


_KEY_TAGS = tuple(_tag(keyword) for keyword in KEYS)
