"""QIDO-RS request parameters -> the query model (PS3.18 8.3.4, 10.6)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pydicom.datadict import keyword_for_tag, tag_for_keyword

from archive.core.levels import Level
from archive.core.query import InvalidQuery, Matcher, Query, SingleValue, parse_value

# PS3.18 Table 10.6.3-3..5: attributes returned at each level unless excluded.
REQUIRED: dict[Level, tuple[str, ...]] = {
    Level.STUDY: (
        "SpecificCharacterSet", "StudyDate", "StudyTime", "AccessionNumber", "InstanceAvailability",
        "ModalitiesInStudy", "ReferringPhysicianName", "RetrieveURL", "PatientName", "PatientID",
        "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyID", "StudyDescription",
        "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances",
    ),
    Level.SERIES: (
        "SpecificCharacterSet", "Modality", "SeriesDescription", "RetrieveURL", "SeriesInstanceUID",
        "SeriesNumber", "NumberOfSeriesRelatedInstances", "PerformedProcedureStepStartDate",
        "PerformedProcedureStepStartTime", "RequestAttributesSequence", "StudyInstanceUID",
    ),
    Level.IMAGE: (
        "SpecificCharacterSet", "SOPClassUID", "SOPInstanceUID", "InstanceAvailability", "RetrieveURL",
        "InstanceNumber", "Rows", "Columns", "BitsAllocated", "NumberOfFrames", "StudyInstanceUID",
        "SeriesInstanceUID",
    ),
}

_CONTROL = {"limit", "offset", "includefield", "fuzzymatching"}


def _keyword(name: str) -> str:
    """A QIDO attribute id (keyword or 8-hex tag) -> keyword."""
    if len(name) == 8 and all(c in "0123456789abcdefABCDEF" for c in name):
        keyword = keyword_for_tag(int(name, 16))
        if not keyword:
            raise InvalidQuery(f"unknown attribute tag {name}")
        return keyword
    if tag_for_keyword(name) is None:
        raise InvalidQuery(f"unknown attribute {name!r}")
    return name


def _int(params: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InvalidQuery(f"{name}={raw!r} is not an integer") from None
    if value < low:
        raise InvalidQuery(f"{name} must be at least {low}")
    return min(value, high)


def parse(
    level: Level,
    params: Sequence[tuple[str, str]],
    *,
    scope: Mapping[str, str],
    max_limit: int,
) -> Query:
    """Build the query of a QIDO-RS request; ``scope`` holds UIDs from the path."""
    single = {k: v for k, v in params}
    matchers: list[Matcher] = [SingleValue(k, v) for k, v in scope.items()]
    includes: list[str] = []
    include_all = False
    for name, value in params:
        if name == "includefield":
            for item in (v.strip() for v in value.split(",") if v.strip()):
                if item == "all":
                    include_all = True
                else:
                    includes.append(_keyword(item))
            continue
        if name in _CONTROL:
            continue
        keyword = _keyword(name)
        if any(ord(c) < 0x20 and c not in "\x1b" for c in value):  # ESC is allowed (ISO 2022)
            raise InvalidQuery(f"{keyword}: control characters are not allowed in a value")
        if keyword in scope:
            raise InvalidQuery(f"{keyword} is already given in the path")
        matchers.append(parse_value(keyword, value, uid_separator=","))
    fuzzy_raw = single.get("fuzzymatching", "false").lower()
    if fuzzy_raw not in ("true", "false"):
        raise InvalidQuery("fuzzymatching must be true or false")
    return Query(
        level=level,
        matchers=tuple(matchers),
        return_keys=tuple(includes),
        include_all=include_all,
        fuzzy=fuzzy_raw == "true",
        limit=_int(single, "limit", max_limit, 1, max_limit),
        offset=_int(single, "offset", 0, 0, 1 << 31),
    )
