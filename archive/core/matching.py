"""The query model evaluated against stored DICOM JSON (PS3.4 C.2.2.2).

The catalogs translate the matchers of indexed attributes into SQL; every other
attribute a level keeps (and sequence matching, C.2.2.2.6) is matched here, on the
attributes the catalog returns. These are also the reference semantics the SQL
translation is tested against.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache
from typing import Any

from archive.core.levels import tag_of
from archive.core.models import DicomJson
from archive.core.query import Matcher, Range, SequenceMatch, SingleValue, UIDList, Universal, Wildcard
from archive.core.records import fold


def _strings(element: Any) -> list[str]:
    """The values of a DICOM JSON element as strings (PN: the alphabetic group)."""
    if not isinstance(element, dict):
        return []
    out = []
    for value in element.get("Value") or []:
        if isinstance(value, dict):
            text = value.get("Alphabetic")
            if text:
                out.append(str(text))
        elif value is not None:
            out.append(str(value))
    return out


@lru_cache(maxsize=256)
def _wildcard(pattern: str) -> re.Pattern[str]:
    # PS3.4 C.2.2.2.4: "*" any run of characters (also none), "?" exactly one
    special = {"*": ".*", "?": "."}
    return re.compile("".join(special.get(ch) or re.escape(ch) for ch in pattern), re.DOTALL)


def _normalise(vr: str, value: str) -> str:
    if vr == "PN":
        return fold(value) or ""
    if vr == "DA":
        return value.replace(".", "")
    if vr == "TM":
        return value.replace(":", "")
    return value


def _in_range(vr: str, value: str, low: str | None, high: str | None) -> bool:
    value = _normalise(vr, value)
    if low is not None and value < _normalise(vr, low):
        return False
    if high is not None:
        high = _normalise(vr, high)
        # an end given to lower precision includes everything it covers (2024 -> 2024....)
        if value[: len(high)] > high:
            return False
    return True


def matches(matcher: Matcher, dataset: DicomJson, tag: str) -> bool:
    """Does the attribute ``tag`` of ``dataset`` satisfy ``matcher``?

    An attribute absent or without value matches only universal matching.
    A multi-valued attribute matches when any of its values does.
    """
    if isinstance(matcher, Universal):
        return True
    element = dataset.get(tag)
    vr = str(element.get("vr", "")) if isinstance(element, dict) else ""
    if isinstance(matcher, SequenceMatch):
        items = element.get("Value") if isinstance(element, dict) else None
        return any(isinstance(item, dict) and all_match(matcher.items, item) for item in items or [])
    values = [_normalise(vr, v) for v in _strings(element)]
    if not values:
        return False
    if isinstance(matcher, SingleValue):
        wanted = _normalise(vr, matcher.value)
        return any(v == wanted for v in values)
    if isinstance(matcher, UIDList):
        wanted_set = {_normalise(vr, v) for v in matcher.values}
        return any(v in wanted_set for v in values)
    if isinstance(matcher, Wildcard):
        pattern = _wildcard(_normalise(vr, matcher.pattern))
        return any(pattern.fullmatch(v) for v in values)
    if isinstance(matcher, Range):
        return any(_in_range(vr, v, matcher.low, matcher.high) for v in _strings(element))
    raise TypeError(f"unknown matcher {matcher!r}")


def all_match(matchers: Iterable[Matcher], dataset: DicomJson) -> bool:
    """Every matcher holds; a matcher's keyword names its attribute (keyword or tag)."""
    return all(matches(m, dataset, tag_of(m.keyword)) for m in matchers)
