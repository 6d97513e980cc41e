"""One query model for every query interface (PS3.4 C.2.2.2).

C-FIND identifiers, QIDO-RS parameters and the JSON search API all parse into
these frozen matchers; each catalog or search backend translates them.
"""

from __future__ import annotations

from dataclasses import dataclass

from archive.core.errors import ArchiveError
from archive.core.levels import Level


class InvalidQuery(ArchiveError):
    """A query parameter cannot be understood; the message says which and why."""


@dataclass(frozen=True)
class SingleValue:
    """PS3.4 C.2.2.2.1: the attribute equals the value."""

    keyword: str
    value: str


@dataclass(frozen=True)
class UIDList:
    """PS3.4 C.2.2.2.2: the attribute equals one of the UIDs."""

    keyword: str
    values: tuple[str, ...]


@dataclass(frozen=True)
class Universal:
    """PS3.4 C.2.2.2.3: matches everything; the attribute is returned."""

    keyword: str


@dataclass(frozen=True)
class Wildcard:
    """PS3.4 C.2.2.2.4: ``*`` any run of characters, ``?`` one character."""

    keyword: str
    pattern: str


@dataclass(frozen=True)
class Range:
    """PS3.4 C.2.2.2.5: inclusive range of dates/times; either end may be open."""

    keyword: str
    low: str | None
    high: str | None


@dataclass(frozen=True)
class SequenceMatch:
    """PS3.4 C.2.2.2.6: some item of the sequence matches every matcher of the key's item."""

    keyword: str
    items: tuple["Matcher", ...]


Matcher = SingleValue | UIDList | Universal | Wildcard | Range | SequenceMatch

# Value representation of the attributes the query model knows how to match.
VR_OF: dict[str, str] = {
    "PatientName": "PN",
    "PatientID": "LO",
    "IssuerOfPatientID": "LO",
    "PatientBirthDate": "DA",
    "PatientSex": "CS",
    "StudyInstanceUID": "UI",
    "StudyDate": "DA",
    "StudyTime": "TM",
    "AccessionNumber": "SH",
    "StudyID": "SH",
    "StudyDescription": "LO",
    "ReferringPhysicianName": "PN",
    "ModalitiesInStudy": "CS",
    "SeriesInstanceUID": "UI",
    "Modality": "CS",
    "SeriesNumber": "IS",
    "SeriesDescription": "LO",
    "BodyPartExamined": "CS",
    "InstitutionName": "LO",
    "SeriesDate": "DA",
    "SOPInstanceUID": "UI",
    "SOPClassUID": "UI",
    "InstanceNumber": "IS",
}


@dataclass(frozen=True)
class Query:
    level: Level
    matchers: tuple[Matcher, ...] = ()
    return_keys: tuple[str, ...] = ()  # extra keywords to return (includefield)
    include_all: bool = False
    fuzzy: bool = False  # fuzzymatching of person names
    limit: int = 100
    offset: int = 0

    def matcher(self, keyword: str) -> Matcher | None:
        for m in self.matchers:
            if m.keyword == keyword:
                return m
        return None


def parse_value(keyword: str, raw: str, *, uid_separator: str = "\\") -> Matcher:
    """Classify one attribute value into its matching type (PS3.4 C.2.2.2)."""
    vr = VR_OF.get(keyword)
    if vr is None:
        raise InvalidQuery(f"{keyword} cannot be matched (not an attribute of the query model)")
    return classify(keyword, vr, raw, uid_separator=uid_separator)


def classify(keyword: str, vr: str, raw: str, *, uid_separator: str = "\\") -> Matcher:
    """The matching type of ``raw`` for an attribute of value representation ``vr``."""
    if raw == "" or raw == "*" and vr != "UI":
        return Universal(keyword)
    if vr == "UI":
        parts = [p for p in raw.replace(uid_separator, "\\").split("\\") if p]
        if len(parts) > 1:
            return UIDList(keyword, tuple(parts))
        return SingleValue(keyword, parts[0] if parts else raw)
    if vr in ("DA", "TM", "DT") and "-" in raw:
        low, _, high = raw.partition("-")
        if not low and not high:
            raise InvalidQuery(f"{keyword}: a range needs at least one end")
        for end in (low, high):
            if end and not (end.isascii() and end.replace(".", "").replace(":", "").isdigit()):
                raise InvalidQuery(f"{keyword}: {end!r} is not a {vr} value")
        return Range(keyword, low or None, high or None)
    if vr in ("DA",) and not (raw.isascii() and raw.isdigit()):
        raise InvalidQuery(f"{keyword}: {raw!r} is not a date (YYYYMMDD)")
    if "*" in raw or "?" in raw:
        return Wildcard(keyword, raw)
    if "\\" in raw and vr in ("CS", "SH", "LO", "PN"):
        # value list of a non-UID attribute: treat as UID-list style "any of"
        return UIDList(keyword, tuple(p for p in raw.split("\\") if p))
    return SingleValue(keyword, raw)

