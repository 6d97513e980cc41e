"""Catalog rows built from an index message (one row per Q/R level)."""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from typing import Any

from archive.core.levels import (
    INSTANCE_ATTRIBUTES,
    PATIENT_ATTRIBUTES,
    SERIES_ATTRIBUTES,
    STUDY_ATTRIBUTES,
)
from archive.core.models import DicomJson, IndexMessage


def first_value(metadata: DicomJson, tag: str) -> Any:
    """The first value of an element in the DICOM JSON model, or None."""
    element = metadata.get(tag)
    if not element:
        return None
    values = element.get("Value")
    if not values:
        return None
    return values[0]


def text_value(metadata: DicomJson, tag: str) -> str | None:
    """The first value as text; person names give their alphabetic form."""
    value = first_value(metadata, tag)
    if value is None:
        return None
    if isinstance(value, dict):  # PN: {"Alphabetic": ..., "Ideographic": ...}
        name = value.get("Alphabetic") or value.get("Ideographic") or value.get("Phonetic")
        return str(name) if name else None
    return str(value)


def int_value(metadata: DicomJson, tag: str) -> int | None:
    value = first_value(metadata, tag)
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def fold(text: str | None) -> str | None:
    """Case- and accent-insensitive form used for person-name matching."""
    if text is None:
        return None
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).upper()


def subset(metadata: DicomJson, attributes: dict[str, str]) -> DicomJson:
    return {tag: metadata[tag] for tag in attributes.values() if tag in metadata}


@dataclass(frozen=True)
class PatientRow:
    patient_id: str
    issuer: str
    patient_name: str | None
    patient_name_folded: str | None
    birth_date: str | None
    sex: str | None
    attrs: DicomJson


@dataclass(frozen=True)
class StudyRow:
    study_uid: str
    study_date: str | None
    study_time: str | None
    accession_number: str | None
    study_id: str | None
    study_description: str | None
    referring_physician: str | None
    attrs: DicomJson


@dataclass(frozen=True)
class SeriesRow:
    series_uid: str
    modality: str | None
    series_number: int | None
    series_description: str | None
    body_part: str | None
    institution: str | None
    series_date: str | None
    attrs: DicomJson


@dataclass(frozen=True)
class InstanceRow:
    sop_instance_uid: str
    sop_class_uid: str
    instance_number: int | None
    transfer_syntax_uid: str
    object_key: str
    size: int
    sha256: str
    number_of_frames: int | None
    received_at: float
    attrs: DicomJson  # instance-level attributes
    metadata: DicomJson  # the whole instance without bulk data


@dataclass(frozen=True)
class CatalogEntry:
    """Everything the catalog stores about one instance."""

    patient: PatientRow
    study: StudyRow
    series: SeriesRow
    instance: InstanceRow

    @classmethod
    def from_message(cls, message: IndexMessage) -> "CatalogEntry":
        md = message.metadata
        name = text_value(md, "00100010")
        # Bulk attributes must not bloat the catalog: the metadata copy keeps
        # what the receiver kept (values under its bulk threshold).
        return cls(
            patient=PatientRow(
                patient_id=text_value(md, "00100020") or "",
                issuer=text_value(md, "00100021") or "",
                patient_name=name,
                patient_name_folded=fold(name),
                birth_date=text_value(md, "00100030"),
                sex=text_value(md, "00100040"),
                attrs=subset(md, PATIENT_ATTRIBUTES),
            ),
            study=StudyRow(
                study_uid=message.study_uid,
                study_date=text_value(md, "00080020"),
                study_time=text_value(md, "00080030"),
                accession_number=text_value(md, "00080050"),
                study_id=text_value(md, "00200010"),
                study_description=text_value(md, "00081030"),
                referring_physician=text_value(md, "00080090"),
                attrs=subset(md, STUDY_ATTRIBUTES),
            ),
            series=SeriesRow(
                series_uid=message.series_uid,
                modality=text_value(md, "00080060"),
                series_number=int_value(md, "00200011"),
                series_description=text_value(md, "0008103E"),
                body_part=text_value(md, "00180015"),
                institution=text_value(md, "00080080"),
                series_date=text_value(md, "00080021"),
                attrs=subset(md, SERIES_ATTRIBUTES),
            ),
            instance=InstanceRow(
                sop_instance_uid=message.sop_instance_uid,
                sop_class_uid=message.sop_class_uid,
                instance_number=int_value(md, "00200013"),
                transfer_syntax_uid=message.transfer_syntax_uid,
                object_key=message.key,
                size=message.size,
                sha256=message.sha256,
                number_of_frames=int_value(md, "00280008"),
                received_at=message.received_at,
                attrs=subset(md, INSTANCE_ATTRIBUTES),
                metadata=md,
            ),
        )


@dataclass(frozen=True)
class CatalogInstance:
    """One instance as listed by the catalog (for verify and retrieval)."""

    sop_instance_uid: str
    study_uid: str
    series_uid: str
    object_key: str
    size: int
    sha256: str
    sop_class_uid: str = ""
    transfer_syntax_uid: str = ""
    patient_id: str = ""  # when located (locate, get_instance): for the audit trail, never for logs
