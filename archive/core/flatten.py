"""Flatten an instance's DICOM JSON into a search document.

Every non-bulk attribute becomes ``keyword -> [values]`` (private and unknown
tags under their 8-hex-digit tag), sequence items included with a dotted path
(``ContentSequence.TextValue``), so SR report text and private tags are
searchable. ``text`` joins every string value for full-text search.
"""

from __future__ import annotations

import functools
import time
from typing import Any

from pydicom.datadict import keyword_for_tag

from archive.core.models import DicomJson, IndexMessage, SearchDocument

MAX_VALUE_CHARS = 8192  # one value longer than this is cut for the index
MAX_TEXT_CHARS = 1 << 20  # the full-text field of one document
_SKIP_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "UN"}


@functools.lru_cache(maxsize=4096)  # pydicom's lookup builds a Tag each time: ~2.5 µs a key
def _keyword(tag: str) -> str:
    try:
        keyword = keyword_for_tag(int(tag, 16))
    except ValueError:
        keyword = ""
    return keyword or tag.upper()


def _strings(vr: str, values: list[Any]) -> list[str]:
    out: list[str] = []
    for value in values:
        if value is None:
            continue
        if isinstance(value, dict):  # PN
            for part in ("Alphabetic", "Ideographic", "Phonetic"):
                if value.get(part):
                    out.append(str(value[part])[:MAX_VALUE_CHARS])
        else:
            out.append(str(value)[:MAX_VALUE_CHARS])
    return out


def _walk(dataset: DicomJson, prefix: str, fields: dict[str, list[str]]) -> None:
    for tag, element in dataset.items():
        if not isinstance(element, dict):
            continue
        vr = str(element.get("vr", ""))
        if vr in _SKIP_VRS or "BulkDataURI" in element or "InlineBinary" in element:
            continue
        name = f"{prefix}{_keyword(tag)}"
        values = element.get("Value") or []
        if vr == "SQ":
            for item in values:
                if isinstance(item, dict):
                    _walk(item, f"{name}.", fields)
            continue
        strings = _strings(vr, values)
        if strings:
            fields.setdefault(name, []).extend(strings)


def flatten(message: IndexMessage, indexed_at: float | None = None) -> SearchDocument:
    fields: dict[str, list[str]] = {}
    _walk(message.metadata, "", fields)
    text_parts: list[str] = []
    size = 0
    for values in fields.values():
        for value in values:
            if size + len(value) > MAX_TEXT_CHARS:
                break
            text_parts.append(value)
            size += len(value) + 1
    return SearchDocument(
        sop_instance_uid=message.sop_instance_uid,
        study_uid=message.study_uid,
        series_uid=message.series_uid,
        fields=fields,
        text="\n".join(text_parts),
        indexed_at=time.time() if indexed_at is None else indexed_at,
    )
