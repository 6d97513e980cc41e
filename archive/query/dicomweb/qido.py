"""QIDO-RS, the Search Transaction (PS3.18 10.6): request parameters -> the query model -> answer.

:func:`parse` turns the query parameters (attribute matching, includefield,
fuzzymatching, limit, offset; PS3.18 8.3.4) and the UIDs of the path into a
:class:`~archive.core.query.Query`; the catalog answers it; :func:`shape` keeps
the attributes PS3.18 10.6.3.3 returns and adds each result's RetrieveURL. The
handlers :func:`studies`, :func:`series` and :func:`instances` do the three.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

from aiohttp import web
from pydicom.datadict import keyword_for_tag, tag_for_keyword

from archive import metrics
from archive.core.errors import InvalidUID
from archive.core.levels import Level
from archive.core.models import DicomJson
from archive.core.query import InvalidQuery, Matcher, Query, SingleValue, parse_value
from archive.core.uids import validate_uid
from archive.query.context import CATALOG, MAX_LIMIT
from archive.query.dicomweb.request import base_url

DICOM_JSON = "application/dicom+json"

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
    if not name or tag_for_keyword(name) is None:  # tag_for_keyword("") is a retired element's tag
        raise InvalidQuery(f"unknown attribute {name!r}")
    return name


def _int(params: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = params.get(name)
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 12:  # int() takes " 5", "٥", "1_0"
        raise InvalidQuery(f"{name}={raw[:40]!r} is not an integer")
    value = int(raw)
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


def _tag(keyword: str) -> str:
    tag = tag_for_keyword(keyword)
    return f"{tag:08X}" if tag is not None else keyword


def shape(result: DicomJson, query: Query, base: str, scope: Mapping[str, str]) -> DicomJson:
    """Keep the required, matched and included attributes; add RetrieveURL."""
    study = result.get("0020000D", {}).get("Value", [None])[0]
    series = result.get("0020000E", {}).get("Value", [None])[0]
    url = f"{base}/studies/{study}"
    if query.level in (Level.SERIES, Level.IMAGE) and series:
        url += f"/series/{series}"
    if query.level is Level.IMAGE:
        url += f"/instances/{result.get('00080018', {}).get('Value', [''])[0]}"
    result = dict(result)
    result["00081190"] = {"vr": "UR", "Value": [url]}
    result.setdefault("00080056", {"vr": "CS", "Value": ["ONLINE"]})
    if query.include_all:
        return dict(sorted(result.items()))
    wanted = {_tag(k) for k in REQUIRED[query.level]}
    # PS3.18 10.6.3.3: a query not scoped to a study (series) also returns that level's attributes
    if query.level in (Level.SERIES, Level.IMAGE) and "StudyInstanceUID" not in scope:
        wanted |= {_tag(k) for k in REQUIRED[Level.STUDY]}
    if query.level is Level.IMAGE and "SeriesInstanceUID" not in scope:
        wanted |= {_tag(k) for k in REQUIRED[Level.SERIES]}
    wanted |= {_tag(m.keyword) for m in query.matchers}
    wanted |= {_tag(k) for k in query.return_keys}
    return {tag: value for tag, value in sorted(result.items()) if tag in wanted}


async def _answer(request: web.Request, level: Level, scope: dict[str, str]) -> web.Response:
    started = time.perf_counter()
    query = parse(level, list(request.query.items()), scope=scope, max_limit=request.app[MAX_LIMIT])
    # Ask for one more than the page to know whether the result was truncated.
    results = await request.app[CATALOG].find(
        Query(query.level, query.matchers, query.return_keys, query.include_all, query.fuzzy,
              query.limit + 1, query.offset)
    )
    truncated = len(results) > query.limit
    results = results[: query.limit]
    base = base_url(request)
    body = [shape(r, query, base, scope) for r in results]
    headers = {}
    if truncated:
        # PS3.18 8.3.4.4: tell the client there are more results than returned
        headers["Warning"] = '299 dicom-archive "There are additional results that can be requested"'
    metrics.QUERIES.labels("qido", level.value, "200").inc()
    metrics.QUERY_SECONDS.labels("qido").observe(time.perf_counter() - started)
    return web.json_response(body, content_type=DICOM_JSON, headers=headers)


async def studies(request: web.Request) -> web.Response:
    return await _answer(request, Level.STUDY, {})


def _scope(request: web.Request) -> dict[str, str]:
    """The UIDs of the path; a malformed one is a 400 (PS3.5 9.1: nothing else reaches the catalog)."""
    scope = {}
    for name, keyword in (("study", "StudyInstanceUID"), ("series", "SeriesInstanceUID")):
        if name in request.match_info:
            try:
                scope[keyword] = validate_uid(request.match_info[name], keyword)
            except InvalidUID as exc:
                raise InvalidQuery(str(exc)) from None
    return scope


async def series(request: web.Request) -> web.Response:
    return await _answer(request, Level.SERIES, _scope(request))


async def instances(request: web.Request) -> web.Response:
    return await _answer(request, Level.IMAGE, _scope(request))
