"""C-FIND response identifiers straight from the catalog's DICOM JSON to bytes (PS3.5 7.1).

Building a pydicom ``Dataset`` from the JSON and writing it took about half the asyncio engine's
time for each match (``Dataset.from_json`` then ``write_dataset``: 1.3 ms a study-level match
with its counts). The values a catalog returns for a C-FIND are text, person names, numbers and
sequences of those: written here element by element, in tag order, Explicit or Implicit VR Little
Endian. Anything else (inline binary, bulk data, decimal strings held as numbers, attribute tags)
raises :class:`Unsupported` and the caller writes that response with pydicom. Text goes out in the
one Python codec of the response's Specific Character Set, which :func:`choose_charset` keeps to a
single-byte set or UTF-8 (no ISO 2022 code extensions).
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import Any

# PS3.5 6.1.2.3: the VRs whose values the Specific Character Set applies to
TEXT_VRS = frozenset({"SH", "LO", "ST", "LT", "UC", "UT", "PN"})
_ASCII_VRS = frozenset({"AE", "AS", "CS", "DA", "DT", "TM", "UI", "UR", "IS", "DS"})
# PS3.5 7.1.2: explicit VRs with a 4-byte length
_LONG = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "UC", "UN", "UR", "UT"})
_BINARY = {"US": "H", "SS": "h", "UL": "I", "SL": "i", "FL": "f", "FD": "d"}
_ITEM = struct.Struct("<HHI")  # (FFFE,E000) and its length, PS3.5 7.5


class Unsupported(Exception):
    """A value this encoder leaves to pydicom."""


def encode_identifier(elements: Mapping[str, Any], codec: str, implicit: bool) -> bytes:
    """The dataset of DICOM JSON ``elements`` (PS3.18 F.2), text in ``codec``."""
    out = []
    for key in sorted(elements, key=str.upper):  # 8 hex digits: their order is the tags'
        element = elements[key]
        vr = str(element.get("vr", ""))
        try:
            tag = int(key, 16)
        except ValueError:
            raise Unsupported(f"key {key!r}") from None
        value = _value(vr, element, codec, implicit)
        out.append(_header(tag, vr, len(value), implicit))
        out.append(value)
    return b"".join(out)


def _header(tag: int, vr: str, length: int, implicit: bool) -> bytes:
    group, element = tag >> 16, tag & 0xFFFF
    if implicit:
        return struct.pack("<HHI", group, element, length)
    if vr in _LONG:
        return struct.pack("<HH2sxxI", group, element, vr.encode(), length)
    if length > 0xFFFF:
        raise Unsupported(f"{vr} value of {length} bytes")
    return struct.pack("<HH2sH", group, element, vr.encode(), length)


def _value(vr: str, element: Mapping[str, Any], codec: str, implicit: bool) -> bytes:
    if "InlineBinary" in element or "BulkDataURI" in element:
        raise Unsupported("binary value")
    values = element.get("Value") or []
    if vr == "SQ":
        items = []
        for item in values:
            body = encode_identifier(item or {}, codec, implicit)
            items.append(_ITEM.pack(0xFFFE, 0xE000, len(body)) + body)
        return b"".join(items)
    if vr in _BINARY:
        try:
            return struct.pack(f"<{len(values)}{_BINARY[vr]}", *values)
        except struct.error as exc:
            raise Unsupported(f"{vr} values: {exc}") from None
    if vr == "PN":
        text = "\\".join(_person_name(v) for v in values)
    elif vr in TEXT_VRS or vr in _ASCII_VRS:
        text = "\\".join(_string(vr, v) for v in values)
    else:
        raise Unsupported(f"VR {vr!r}")
    try:
        raw = text.encode(codec if vr in TEXT_VRS else "ascii")
    except (UnicodeEncodeError, LookupError):
        raise Unsupported(f"{vr} value not in {codec}") from None
    if len(raw) % 2:
        raw += b"\x00" if vr == "UI" else b" "
    return raw


def _person_name(value: Any) -> str:
    if value is None:
        return ""
    if not isinstance(value, Mapping):
        raise Unsupported("person name not in DICOM JSON form")
    groups = [str(value.get(g) or "") for g in ("Alphabetic", "Ideographic", "Phonetic")]
    return "=".join(groups).rstrip("=")


def _string(vr: str, value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if vr == "IS" and isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise Unsupported(f"{vr} value of type {type(value).__name__}")
