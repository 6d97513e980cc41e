"""Query/Retrieve identifiers -> the query model, and catalog results -> C-FIND responses.

PS3.4 C.4.1 (Query/Retrieve Find); C-MOVE and C-GET identifiers are read the same way
(:mod:`archive.query.dimse.retrieve`). The identifier's keys become matchers of
the one query model (C.2.2.2). Keys the catalog indexes are matched in SQL;
every other attribute the catalog keeps for the level, and sequence matching
(C.2.2.2.6), is matched on the returned attributes (:mod:`archive.core.matching`).
Optional keys the archive does not keep are not matched and come back empty,
with the Pending status 0xFF01 that says so (C.4.1.1.4).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pydicom.charset import python_encoding
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.multival import MultiValue
from pydicom.valuerep import PersonName

from archive.core.levels import COMPUTED_ATTRIBUTES, Level, stored_at, tag_of
from archive.core.matching import all_match
from archive.core.models import DicomJson
from archive.core.query import VR_OF, InvalidQuery, Matcher, Query, SequenceMatch, classify
from archive.query.dimse.encode import Unsupported, encode_identifier

PATIENT_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.1.1"
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
PATIENT_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.1.2"
STUDY_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
PATIENT_ROOT_GET = "1.2.840.10008.5.1.4.1.2.1.3"
STUDY_ROOT_GET = "1.2.840.10008.5.1.4.1.2.2.3"

# PS3.4 C.6.1 (Patient Root) and C.6.2 (Study Root): the levels of each model
LEVELS_OF_MODEL: dict[str, tuple[Level, ...]] = {
    PATIENT_ROOT_FIND: (Level.PATIENT, Level.STUDY, Level.SERIES, Level.IMAGE),
    PATIENT_ROOT_MOVE: (Level.PATIENT, Level.STUDY, Level.SERIES, Level.IMAGE),
    PATIENT_ROOT_GET: (Level.PATIENT, Level.STUDY, Level.SERIES, Level.IMAGE),
    STUDY_ROOT_FIND: (Level.STUDY, Level.SERIES, Level.IMAGE),
    STUDY_ROOT_MOVE: (Level.STUDY, Level.SERIES, Level.IMAGE),
    STUDY_ROOT_GET: (Level.STUDY, Level.SERIES, Level.IMAGE),
}

FIND_MODEL_UIDS = frozenset({PATIENT_ROOT_FIND, STUDY_ROOT_FIND})
RETRIEVE_MODEL_UIDS = frozenset({PATIENT_ROOT_MOVE, STUDY_ROOT_MOVE, PATIENT_ROOT_GET, STUDY_ROOT_GET})


def extended_answer(sop_class_uid: str, asked: bytes) -> bytes | None:
    """SOP Class Extended Negotiation (PS3.4 C.5.1, PS3.7 D.3.3.5): what we support of what is asked.

    C-FIND: relational queries (byte 1) and combined date-time range matching (byte 2) yes;
    fuzzy semantic person-name matching (byte 3) and timezone adjustment (byte 4) no.
    C-MOVE/C-GET: relational retrieval (byte 1) no; a retrieve names unique keys.
    None for any other SOP class.
    """
    supported: tuple[int, ...]
    if sop_class_uid in FIND_MODEL_UIDS:
        supported = (1, 1, 0, 0)
    elif sop_class_uid in RETRIEVE_MODEL_UIDS:
        supported = (0,)
    else:
        return None
    return bytes(min(a, s) for a, s in zip(asked, supported)) or b"\x00"


# In every response, whether asked for or not (PS3.4 C.4.1.1.3.2)
_CONTROL_TAGS = {0x00080005, 0x00080052}  # Specific Character Set, Query/Retrieve Level


class IdentifierError(InvalidQuery):
    """The identifier does not fit the SOP class (PS3.4 C.4.1.1.4: 0xA900)."""


@dataclass(frozen=True)
class ResponseKey:
    tag: str  # DICOM JSON key
    vr: str
    item_keys: tuple["ResponseKey", ...] = ()  # sequence: the attributes asked for in its item


@dataclass(frozen=True)
class FindPlan:
    query: Query  # matchers the catalog translates
    residual: tuple[Matcher, ...]  # matchers applied to the returned attributes
    keys: tuple[ResponseKey, ...]
    charsets: tuple[str, ...]  # the identifier's Specific Character Set
    unsupported: tuple[str, ...] = ()  # optional keys we neither match nor return

    def accepts(self, result: DicomJson) -> bool:
        return all_match(self.residual, result)


def level_of(identifier: Dataset, sop_class_uid: str) -> Level:
    levels = LEVELS_OF_MODEL.get(sop_class_uid)
    if levels is None:
        raise IdentifierError(f"{sop_class_uid} is not a Query/Retrieve information model we serve")
    raw = str(identifier.get("QueryRetrieveLevel", "") or "").strip()
    try:
        level = Level(raw)
    except ValueError:
        raise IdentifierError(f"Query/Retrieve Level {raw!r} is not one of {', '.join(v.value for v in levels)}") from None
    if level not in levels:
        raise IdentifierError(f"Query/Retrieve Level {level.value} is not part of this information model")
    return level


def _text(element: DataElement) -> str:
    """An identifier value as the query model's string (values joined by backslash)."""
    value = element.value
    values: Iterable[Any] = value if isinstance(value, (list, MultiValue)) else [value]
    parts = []
    for v in values:
        if isinstance(v, PersonName):
            # PS3.4 C.2.2.2.1: person names match on their alphabetic group
            parts.append(v.components[0] if v.components else "")
        elif v is not None:
            parts.append(str(v))
    return "\\".join(parts)


def _keyword(element: DataElement) -> str:
    return element.keyword or f"{element.tag:08X}"


def _is_empty(element: DataElement) -> bool:
    if element.VR == "SQ":
        return all(_is_empty(sub) for item in element.value for sub in item)
    return element.value is None or element.value == "" or element.value == [] or _text(element) == ""


def _item_matchers(item: Dataset) -> tuple[Matcher, ...]:
    matchers: list[Matcher] = []
    for sub in item:
        if _is_empty(sub):
            continue
        if sub.VR == "SQ":
            matchers.append(SequenceMatch(_keyword(sub), _item_matchers(sub.value[0])))
        else:
            matchers.append(classify(_keyword(sub), sub.VR, _text(sub)))
    return tuple(matchers)


def _response_key(element: DataElement) -> ResponseKey:
    items: tuple[ResponseKey, ...] = ()
    if element.VR == "SQ" and element.value:
        items = tuple(_response_key(sub) for sub in element.value[0])
    return ResponseKey(f"{element.tag:08X}", element.VR, items)


def plan_find(identifier: Dataset, sop_class_uid: str, *, page: int = 500) -> FindPlan:
    """The matchers and return keys of a C-FIND identifier (PS3.4 C.4.1.2.1)."""
    level = level_of(identifier, sop_class_uid)
    kept = set(stored_at(level)) | set(COMPUTED_ATTRIBUTES)
    indexed: list[Matcher] = []
    residual: list[Matcher] = []
    keys: list[ResponseKey] = []
    unsupported: list[str] = []
    for element in identifier:
        if element.tag in _CONTROL_TAGS or element.tag.group in (0x0000, 0x0002):
            continue
        keyword = _keyword(element)
        keys.append(_response_key(element))
        if element.tag.is_private or (keyword not in kept and keyword not in VR_OF):
            unsupported.append(keyword)  # neither matched nor returned with a value
            continue
        if _is_empty(element):
            continue  # PS3.4 C.2.2.2.3 universal matching: a return key only
        try:
            if element.VR == "SQ":
                residual.append(SequenceMatch(keyword, _item_matchers(element.value[0])))
            elif keyword in VR_OF:
                indexed.append(classify(keyword, VR_OF[keyword], _text(element)))
            else:
                residual.append(classify(keyword, element.VR, _text(element)))
        except InvalidQuery as exc:
            raise InvalidQuery(f"{keyword}: {exc}") from None
    charsets = identifier.get("SpecificCharacterSet", None)
    if isinstance(charsets, str):
        charsets = [charsets]
    return FindPlan(
        query=Query(level, tuple(indexed), limit=page),
        residual=tuple(residual),
        keys=tuple(keys),
        charsets=tuple(str(c) for c in charsets or ()),
        unsupported=tuple(unsupported),
    )


def _select(stored: Any, key: ResponseKey) -> Any:
    """The stored element narrowed to what the key asks (sequence items: the item keys)."""
    if stored is None:
        return {"vr": key.vr}  # asked for, no value: zero length (PS3.4 C.4.1.1.3.2)
    if key.vr == "SQ" and key.item_keys and isinstance(stored, dict):
        items = [
            {k.tag: _select(item.get(k.tag), k) for k in key.item_keys}
            for item in stored.get("Value") or [] if isinstance(item, dict)
        ]
        return {"vr": "SQ", "Value": items}
    return stored


def _strings(dataset: DicomJson) -> Iterable[str]:
    for element in dataset.values():
        for value in element.get("Value") or []:
            if element.get("vr") == "SQ" and isinstance(value, dict):
                yield from _strings(value)
            elif isinstance(value, dict):  # PN: its component groups
                yield from (str(v) for v in value.values())
            elif isinstance(value, str):
                yield value


# The single-byte character sets without code extensions (PS3.3 C.12.1.1.2, Table C.12-2), ASCII
# (ISO_IR 6) excepted: pydicom's codec for it takes Latin-1, and ISO_IR 13's (shift_jis) kanji.
SINGLE_BYTE = frozenset({"ISO_IR 100", "ISO_IR 101", "ISO_IR 109", "ISO_IR 110", "ISO_IR 144", "ISO_IR 127",
                         "ISO_IR 126", "ISO_IR 138", "ISO_IR 148", "ISO_IR 166", "ISO_IR 203"})


def choose_charset(requested: tuple[str, ...], values: Iterable[str]) -> str | None:
    """Specific Character Set of a response (PS3.4 C.4.1.1.3.2, PS3.5 6.1).

    Plain ASCII needs none (the requester's own, if it is a term we know). Otherwise the
    requester's single-byte character set when it can encode every value, else UTF-8 (ISO_IR 192).
    """
    text = [v for v in values if not v.isascii()]
    if not text:
        return requested[0] if len(requested) == 1 and requested[0] in python_encoding else None
    if len(requested) == 1 and requested[0] in SINGLE_BYTE:
        codec = python_encoding[requested[0]]
        try:
            for value in text:
                value.encode(codec)
            return requested[0]
        except (UnicodeEncodeError, LookupError):
            pass
    return "ISO_IR 192"


def _selected(plan: FindPlan, result: DicomJson) -> DicomJson:
    selected: DicomJson = {key.tag: _select(result.get(key.tag), key) for key in plan.keys}
    selected.pop(tag_of("RetrieveAETitle"), None)
    return selected


def response(plan: FindPlan, result: DicomJson, aet: str) -> Dataset:
    """One Pending response identifier: exactly the keys asked for, plus control keys."""
    selected = _selected(plan, result)
    ds = Dataset.from_json(selected)
    ds.QueryRetrieveLevel = plan.query.level.value
    ds.RetrieveAETitle = aet
    charset = choose_charset(plan.charsets, _strings(selected))
    if charset:
        ds.SpecificCharacterSet = charset
    return ds


def response_bytes(plan: FindPlan, result: DicomJson, aet: str, implicit: bool) -> bytes:
    """:func:`response`, encoded in Explicit (or Implicit) VR Little Endian: written straight
    from the JSON (:mod:`archive.query.dimse.encode`) unless a value needs pydicom."""
    selected = _selected(plan, result)
    charset = choose_charset(plan.charsets, _strings(selected))
    elements = {**selected, "00080052": {"vr": "CS", "Value": [plan.query.level.value]},
                "00080054": {"vr": "AE", "Value": [aet]}}
    if charset:
        elements["00080005"] = {"vr": "CS", "Value": [charset]}
    try:
        codec = python_encoding.get(charset) if charset else "ascii"
        if codec is None:
            raise Unsupported(f"character set {charset!r}")
        return encode_identifier(elements, codec, implicit)
    except Unsupported:
        out = DicomBytesIO()
        out.is_little_endian, out.is_implicit_VR = True, implicit
        write_dataset(out, response(plan, result, aet))
        return out.getvalue()
