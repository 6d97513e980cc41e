"""The JSON search API: ``GET /api/search`` (free text + filters + facets).

Parameters parse into the one query model (:mod:`archive.core.query`
matchers inside a :class:`archive.core.search.SearchRequest`); the search
index port answers. Every parameter that cannot be understood is a 400 whose
JSON names it: ``{"error": "...", "parameter": "StudyDate"}``. The route is
mounted by :func:`archive.query.routes.add_routes`; :mod:`archive.query.openapi`
documents it from the constants here.
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Sequence
from typing import Any

from aiohttp import web

from archive import metrics
from archive.core.levels import Level
from archive.core.query import InvalidQuery, Matcher, Query, Range, SingleValue, UIDList, classify
from archive.core.search import (
    FACETS,
    MAX_TEXT_CHARS,
    MAX_VALUE_CHARS,
    MAX_WINDOW,
    SORT_KEYS,
    SearchRequest,
    SearchResult,
    Sort,
    canonical_path,
    date_interval,
    nest,
    vr_of,
)
from archive.core.ports import Catalog
from archive.query.context import CATALOG, SEARCH

LEVELS = {"study": Level.STUDY, "series": Level.SERIES, "instance": Level.IMAGE}
LEVEL_NAMES = {level: name for name, level in LEVELS.items()}
DEFAULT_LIMIT = 20
MAX_LIMIT = 100
CONTROL = ("q", "level", "limit", "offset", "sort", "facets")
SORTS = tuple(s for key in SORT_KEYS for s in ((key,) if key == "relevance" else (key, f"-{key}")))
_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")  # tab, CR, LF are whitespace
_DATE = re.compile(r"[0-9]{8}")  # not \d: it takes every script's digits
_INTEGER = re.compile(r"-?[0-9]{1,12}")  # int() takes " 5", "٥" and "1_0" too
# A study hit's size as the catalog counts it (the whole study, not only the matching instances):
# PS3.4 C.3.4 computed keys, read for the page's studies in one catalog query.
STUDY_COUNTS = {"00201206": "NumberOfStudyRelatedSeries", "00201208": "NumberOfStudyRelatedInstances"}


class BadParameter(InvalidQuery):
    """One request parameter is malformed; ``parameter`` names it."""

    def __init__(self, parameter: str, message: str) -> None:
        super().__init__(f"{parameter}: {message}")
        self.parameter = parameter


def _int(name: str, raw: str | None, default: int) -> int:
    if raw is None:
        return default
    if not _INTEGER.fullmatch(raw):
        raise BadParameter(name, f"{raw[:40]!r} is not an integer")
    value = int(raw)
    if value < (1 if name == "limit" else 0):
        raise BadParameter(name, f"must be at least {1 if name == 'limit' else 0}")
    return value


def _check_dates(name: str, matcher: Matcher) -> None:
    """DA values and range ends are YYYYMMDD (PS3.5 6.2)."""
    ends = [matcher.low, matcher.high] if isinstance(matcher, Range) else []
    if isinstance(matcher, SingleValue):
        ends = [matcher.value]
    for end in ends:
        if end is not None and not _DATE.fullmatch(end):
            raise BadParameter(name, f"{end[:40]!r} is not a date (YYYYMMDD, a range YYYYMMDD-YYYYMMDD, open ends allowed)")


def parse_filter(name: str, raw: str) -> Matcher:
    """``Keyword=value`` (or 8-hex tag, or dotted sequence path) -> a matcher (PS3.4 C.2.2.2)."""
    keyword = canonical_path(name)
    if keyword is None:
        raise BadParameter(name, "unknown parameter: neither a control parameter "
                                 f"({', '.join(CONTROL)}) nor a DICOM attribute keyword, tag or path")
    if len(raw) > MAX_VALUE_CHARS:
        raise BadParameter(name, f"value longer than {MAX_VALUE_CHARS} characters")
    if _CONTROL_CHARS.search(raw):
        raise BadParameter(name, "control characters are not allowed in a value")
    vr = vr_of(keyword)
    try:
        matcher = classify(keyword, vr, raw, uid_separator=",")
    except InvalidQuery as exc:
        raise BadParameter(name, str(exc)) from None
    if vr == "DA":
        _check_dates(name, matcher)
    return nest(keyword, dataclasses.replace(matcher, keyword=keyword.rsplit(".", 1)[-1]))


def parse(params: Sequence[tuple[str, str]]) -> SearchRequest:
    """The SearchRequest of a query string (pairs in order, repeats kept)."""
    control: dict[str, str] = {}
    filters: list[Matcher] = []
    for name, value in params:
        if name in CONTROL:
            if name in control:
                raise BadParameter(name, "given more than once")
            control[name] = value
        else:
            filters.append(parse_filter(name, value))
    text = control.get("q", "")
    if len(text) > MAX_TEXT_CHARS:
        raise BadParameter("q", f"longer than {MAX_TEXT_CHARS} characters")
    if _CONTROL_CHARS.search(text):
        raise BadParameter("q", "control characters are not allowed")
    level_name = control.get("level", "study").lower()
    if level_name not in LEVELS:
        raise BadParameter("level", f"must be one of {', '.join(LEVELS)}")
    limit = min(_int("limit", control.get("limit"), DEFAULT_LIMIT), MAX_LIMIT)
    offset = _int("offset", control.get("offset"), 0)
    if offset + limit > MAX_WINDOW:
        raise BadParameter("offset", f"offset + limit may not exceed {MAX_WINDOW}; narrow the query instead")
    # an empty sort is refused as an empty level is (the document's enum): it names no order
    sort_name = control["sort"] if "sort" in control else ("relevance" if text.strip() else "-StudyDate")
    if sort_name not in SORTS:
        raise BadParameter("sort", f"must be one of {', '.join(SORTS)}")
    facets = tuple(f.strip() for f in control.get("facets", ",".join(FACETS)).split(",") if f.strip())
    unknown = [f for f in facets if f not in FACETS]
    if unknown:
        raise BadParameter("facets", f"unknown facet {unknown[0]!r}; known: {', '.join(FACETS)}")
    return SearchRequest(
        text=text,
        filters=tuple(filters),
        level=LEVELS[level_name],
        limit=limit,
        offset=offset,
        sort=Sort(sort_name.lstrip("-"), descending=sort_name.startswith("-") or sort_name == "relevance"),
        facets=tuple(dict.fromkeys(facets)),
        date_interval=date_interval(filters),
    )


async def study_counts(catalog: Catalog, study_uids: Sequence[str]) -> dict[str, dict[str, int]]:
    """Series and instances of each study, by UID, from the catalog (one query for the page).
    A study the search index knows and the catalog not yet (indexed in between) is left out."""
    if not study_uids:
        return {}
    uids = tuple(dict.fromkeys(study_uids))
    matcher: Matcher = UIDList("StudyInstanceUID", uids) if len(uids) > 1 else SingleValue("StudyInstanceUID", uids[0])
    rows = await catalog.find(Query(Level.STUDY, (matcher,), limit=len(uids)))
    counts: dict[str, dict[str, int]] = {}
    for row in rows:
        uid = (row.get("0020000D", {}).get("Value") or [None])[0]
        if isinstance(uid, str):
            counts[uid] = {keyword: int((row.get(tag, {}).get("Value") or [0])[0])
                           for tag, keyword in STUDY_COUNTS.items()}
    return counts


def to_json(request: SearchRequest, result: SearchResult,
            counts: dict[str, dict[str, int]] | None = None) -> dict[str, Any]:
    sort = request.sort.key if request.sort.key == "relevance" else \
        ("-" if request.sort.descending else "") + request.sort.key
    hits = []
    for hit in result.hits:
        item: dict[str, Any] = {"StudyInstanceUID": hit.study_uid}
        if hit.series_uid is not None:
            item["SeriesInstanceUID"] = hit.series_uid
        if hit.sop_instance_uid is not None:
            item["SOPInstanceUID"] = hit.sop_instance_uid
        attributes: dict[str, Any] = dict(hit.attributes)
        if counts is not None and hit.series_uid is None and hit.study_uid in counts:
            attributes.update(counts[hit.study_uid])
        item.update(score=hit.score, instances=hit.instances, modalities=list(hit.modalities),
                    attributes=attributes,
                    highlights=[{"field": h.field, "fragments": list(h.fragments)} for h in hit.highlights])
        hits.append(item)
    return {
        "level": LEVEL_NAMES[request.level],
        "total": result.total,
        "offset": request.offset,
        "limit": request.limit,
        "sort": sort,
        "hits": hits,
        "facets": {name: [{"value": b.value, "count": b.count} for b in buckets]
                   for name, buckets in result.facets.items()},
        "date_interval": request.date_interval,
    }


async def search(request: web.Request) -> web.Response:
    started = time.perf_counter()
    try:
        query = parse(list(request.query.items()))
        result = await request.app[SEARCH].query(query)
        counts = None
        if query.level is Level.STUDY and CATALOG in request.app:
            counts = await study_counts(request.app[CATALOG], [hit.study_uid for hit in result.hits])
    except InvalidQuery as exc:
        metrics.QUERIES.labels("search", "-", "400").inc()
        return web.json_response({"error": str(exc), "parameter": getattr(exc, "parameter", None)}, status=400)
    metrics.QUERIES.labels("search", LEVEL_NAMES[query.level], "200").inc()
    metrics.QUERY_SECONDS.labels("search").observe(time.perf_counter() - started)
    return web.json_response(to_json(query, result, counts))
