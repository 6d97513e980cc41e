"""A SearchRequest as OpenSearch query DSL.

Free text goes only to ``simple_query_string`` with the PREFIX and WHITESPACE
flags (no operators); every filter value is a term, terms, wildcard or range
query value, never query-string syntax. Attribute filters run on the
``flat_object`` field (``fields.<path>``). PatientName compares with the
folded ``patient_name`` keyword (case- and accent-insensitive, as the catalog
compares person names); other person names case-insensitively. Results are
grouped with ``collapse`` on the study or series UID, totals and facet counts
are ``cardinality`` aggregations of that UID (HyperLogLog++: near exact up to 40,000
groups per count, 15,473 for 15,470 studies measured; approximate beyond).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from archive.core.levels import Level
from archive.core.query import InvalidQuery, Matcher, Range, SingleValue, UIDList, Universal, Wildcard
from archive.core.records import fold
from archive.core.search import FACET_SIZE, SearchRequest, path_filters, vr_of

GROUP_FIELD = {Level.STUDY: "study_uid", Level.SERIES: "series_uid", Level.IMAGE: "sop_instance_uid"}
FACET_FIELDS = {"Modality": "modality", "InstitutionName": "institution", "BodyPartExamined": "body_part"}
PRECISION = 40_000  # cardinality counts are near exact below this (OpenSearch's maximum)
# Fields added in schema 2 for facets and sorting (derived from ``fields`` when indexing).
FACET_PROPERTIES: dict[str, Any] = {
    "study_date": {"type": "date", "format": "basic_date", "ignore_malformed": True},
    "modality": {"type": "keyword", "ignore_above": 256},
    "institution": {"type": "keyword", "ignore_above": 256},
    "body_part": {"type": "keyword", "ignore_above": 256},
    "patient_name": {"type": "keyword", "ignore_above": 256},  # folded, for matching and sorting
    "schema_version": {"type": "integer"},  # of the document: older ones lack the fields above
}


def facet_source(fields: Mapping[str, Sequence[str]]) -> dict[str, Any]:
    """The schema-2 facet and sort fields of a document, from its flattened attributes."""

    def first(keyword: str) -> str | None:
        values = fields.get(keyword)
        return str(values[0]) if values else None

    return {
        "study_date": first("StudyDate"),
        "modality": first("Modality"),
        "institution": first("InstitutionName"),
        "body_part": first("BodyPartExamined"),
        "patient_name": [fold(v) for v in fields.get("PatientName", ())],
    }


def _wildcard_value(pattern: str) -> str:
    """PS3.4 C.2.2.2.4 ``*``/``?`` kept; the wildcard query's escape character escaped."""
    return pattern.replace("\\", "\\\\")


def _one(field: str, m: SingleValue | Wildcard, normalise: bool, ci: bool) -> dict[str, Any]:
    if isinstance(m, Wildcard):
        value = (fold(m.pattern) or "") if normalise else m.pattern
        return {"wildcard": {field: {"value": _wildcard_value(value), "case_insensitive": ci}}}
    value = (fold(m.value) or "") if normalise else m.value
    return {"term": {field: {"value": value, "case_insensitive": ci}}}


def filter_clause(m: Matcher) -> dict[str, Any] | None:
    """One matcher as a filter clause on an instance document (None: matches everything)."""
    # documents older than schema 2 have no patient_name: also case-insensitive on the original
    return _attribute_clause(m, "fields.", "patient_name")


def combination_clause(m: Matcher) -> dict[str, Any] | None:
    """One matcher on a group attribute as a clause on a study document's combinations (nested
    ``combos``, each field as the instance document's, see opensearch_studies)."""
    return _attribute_clause(m, "combos.", "combos.patient_name")


def _attribute_clause(m: Matcher, attributes: str, folded_name: str) -> dict[str, Any] | None:
    """PatientName folded, or the original case-insensitively; other person names case-insensitively."""
    if m.keyword == "PatientName":
        folded = _clause(m, folded_name, True, False)
        if folded is None:
            return None
        original = _clause(m, f"{attributes}PatientName", False, True)
        return {"bool": {"should": [folded, original], "minimum_should_match": 1}}
    return _clause(m, f"{attributes}{m.keyword}", False, vr_of(m.keyword) == "PN")


def _clause(m: Matcher, field: str, normalise: bool, ci: bool) -> dict[str, Any] | None:
    if isinstance(m, Universal):  # PS3.4 C.2.2.2.3
        return None
    if isinstance(m, SingleValue):  # PS3.4 C.2.2.2.1
        return _one(field, m, normalise, ci)
    if isinstance(m, Wildcard):  # PS3.4 C.2.2.2.4
        return _one(field, m, normalise, ci) if m.pattern.strip("*") else None
    if isinstance(m, UIDList):  # PS3.4 C.2.2.2.2 (and value lists of other VRs)
        should = [
            _one(field, Wildcard(m.keyword, v) if "*" in v or "?" in v else SingleValue(m.keyword, v), normalise, ci)
            for v in m.values
        ]
        return {"bool": {"should": should, "minimum_should_match": 1}}
    if isinstance(m, Range):  # PS3.4 C.2.2.2.5: inclusive, either end open
        bounds = {k: v for k, v in (("gte", m.low), ("lte", m.high)) if v}
        return {"range": {field: bounds}} if bounds else None
    raise InvalidQuery(f"{m.keyword}: unsupported matching {type(m).__name__}")


# The analyser of free text: the instance documents' ``text``, the study documents' ``common``.
ANALYSIS = {
    "analyzer": {
        "folded": {"type": "custom", "tokenizer": "standard", "filter": ["lowercase", "asciifolding"]},
    }
}


def text_clause(terms: Sequence[str], field: str = "text") -> dict[str, Any]:
    return {
        "simple_query_string": {
            "query": " ".join(terms),
            "fields": [field],
            "default_operator": "and",
            "flags": "PREFIX|WHITESPACE",  # a trailing * only; no +, -, |, quotes, ~, ()
            "analyze_wildcard": True,  # fold prefixes too: "müll*" finds "Muller"
        }
    }


def bool_query(request: SearchRequest, terms: Sequence[str]) -> dict[str, Any]:
    filters = [c for c in (filter_clause(m) for m in path_filters(request.filters)) if c is not None]
    must = [text_clause(terms)] if terms else []
    return {"bool": {"must": must, "filter": filters}}


def _groups(level: Level) -> dict[str, Any]:
    return {"groups": {"cardinality": {"field": GROUP_FIELD[level], "precision_threshold": PRECISION}}}


def facet_aggs(request: SearchRequest) -> dict[str, Any]:
    grouped = request.level is not Level.IMAGE
    aggs: dict[str, Any] = {}
    for facet in request.facets:
        if facet == "StudyDate":
            month = request.date_interval == "month"
            agg: dict[str, Any] = {"date_histogram": {
                "field": "study_date", "calendar_interval": "month" if month else "year",
                "format": "yyyy-MM" if month else "yyyy", "min_doc_count": 1,
            }}
        elif facet in FACET_FIELDS:
            order = [{"groups": "desc"} if grouped else {"_count": "desc"}, {"_key": "asc"}]
            agg = {"terms": {"field": FACET_FIELDS[facet], "size": FACET_SIZE, "order": order}}
        else:
            raise InvalidQuery(f"facets: unknown facet {facet}")
        if grouped:
            agg["aggs"] = _groups(request.level)
        aggs[f"facet_{facet}"] = agg
    return aggs


def _sort(request: SearchRequest, has_text: bool) -> list[Any]:
    """The sort of documents; within a group (a study, a series) the instance UID decides a tie, so
    that the document a group shows does not depend on the index's internal order."""
    key, direction = request.sort.key, "desc" if request.sort.descending else "asc"
    tie = [{GROUP_FIELD[request.level]: "asc"}]
    if request.level is not Level.IMAGE:
        tie.append({"sop_instance_uid": "asc"})
    if key == "StudyDate":
        return [{"study_date": {"order": direction, "missing": "_last"}}, *tie]
    if key == "PatientName":
        mode = "max" if request.sort.descending else "min"
        return [{"patient_name": {"order": direction, "missing": "_last", "mode": mode}}, *tie]
    return ["_score", *tie] if has_text else tie


def page_body(request: SearchRequest, terms: Sequence[str]) -> dict[str, Any]:
    """One page of groups (the best document of each); the image level counts its total here."""
    body: dict[str, Any] = {
        "query": bool_query(request, terms),
        "from": request.offset,
        "size": request.limit,
        "sort": _sort(request, bool(terms)),
        "track_scores": bool(terms),
        "_source": ["study_uid", "series_uid", "fields"],
    }
    if request.level is Level.IMAGE:
        body["track_total_hits"] = True
    else:
        body["collapse"] = {"field": GROUP_FIELD[request.level]}
        body["track_total_hits"] = False
    return body


def totals_body(request: SearchRequest, terms: Sequence[str]) -> dict[str, Any] | None:
    """The groups' total and the facets, apart from the page: both requests run at once (the
    aggregations visit every matching document, the page only sorts them), and a request without
    hits is one OpenSearch's shard request cache keeps until the index changes. None when the
    page answers everything (the image level without facets)."""
    aggs = facet_aggs(request)
    if request.level is not Level.IMAGE:
        aggs.update(_groups(request.level))
    if not aggs:
        return None
    return {"query": bool_query(request, terms), "size": 0, "track_total_hits": False, "aggs": aggs}


AGGREGATION_REQUESTS = 2  # see split_aggregations


def split_aggregations(body: dict[str, Any], parts: int = AGGREGATION_REQUESTS) -> list[dict[str, Any]]:
    """totals_body's aggregations shared out over ``parts`` requests with the same query, to be sent at
    once. Each aggregation visits every matching document: at 10M instances a broad free text
    (1.1M matches) spent ~200 ms in them in one request, 160 ms as two requests at once on this
    machine's two cores; one request each was no faster, concurrent segment search slower (the
    page's request and these share the cores; docs/benchmarks.md, "The 10M table again in one run,
    and broad free text")."""
    items = list(body["aggs"].items())
    parts = max(1, min(parts, len(items)))
    return [{**body, "aggs": dict(items[i::parts])} for i in range(parts)]


def page_stats_body(
    request: SearchRequest, terms: Sequence[str], keys: Sequence[str], *, best: bool = False
) -> dict[str, Any]:
    """Matching instances and their modalities in each group of a page; with ``best``, also the
    group's best matching document (the one the instance path's ``collapse`` shows)."""
    group = GROUP_FIELD[request.level]
    query = bool_query(request, terms)
    query["bool"]["filter"].append({"terms": {group: list(keys)}})
    aggs: dict[str, Any] = {"modalities": {"terms": {"field": "modality", "size": 50}}}
    if best:
        top: dict[str, Any] = {"size": 1, "_source": ["study_uid", "series_uid", "fields"]}
        group_uid = {group: "asc"}  # the same on each of its documents
        top["sort"] = [key for key in _sort(request, bool(terms)) if key != group_uid]
        aggs["best"] = {"top_hits": top}
    return {
        "size": 0,
        "query": query,
        "aggs": {"page": {"terms": {"field": group, "size": len(keys)}, "aggs": aggs}},
    }


# --- The study path (archive.adapters.opensearch_studies): study lists -----------------------------
# Without free text from the study documents' combinations; with free text, the studies whose common
# text (archive.adapters.opensearch_common) matches every term: all of their instances match.


def _study_filters(request: SearchRequest) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The clauses on the study document (its UID) and those on one of its combinations."""
    study: list[dict[str, Any]] = []
    combination: list[dict[str, Any]] = []
    for m in path_filters(request.filters):
        if m.keyword == "StudyInstanceUID":
            clause = _clause(m, "study_uid", False, False)
            if clause is not None:
                study.append(clause)
        else:
            clause = combination_clause(m)
            if clause is not None:
                combination.append(clause)
    return study, combination


def study_query(request: SearchRequest, terms: Sequence[str] = ()) -> dict[str, Any]:
    """Studies with one combination that meets every filter: one instance does (PS3.4 C.2.2.2 per
    instance, as the instance documents are matched); with ``terms``, whose complete common text
    matches them all (scored: the relevance of a study)."""
    study, combination = _study_filters(request)
    study.append({"range": {"instances": {"gte": 1}}})  # not the document of a study with none left
    if combination:
        study.append({"nested": {"path": "combos", "score_mode": "none",
                                 "query": {"bool": {"filter": combination}}}})
    if not terms:
        return {"bool": {"filter": study}}
    study.append({"term": {"common_complete": True}})
    return {"bool": {"must": [text_clause(terms, "common")], "filter": study}}


def study_page_body(request: SearchRequest, terms: Sequence[str] = ()) -> dict[str, Any]:
    """One page of study documents, sorted as the instance path sorts its groups: a group's key is
    its best matching document's (the latest date when descending, the earliest ascending)."""
    _, combination = _study_filters(request)
    direction = "desc" if request.sort.descending else "asc"
    sort: list[Any] = []
    # the date as a keyword: see opensearch_studies._COMBINATION's date_key
    field = {"StudyDate": "combos.date_key", "PatientName": "combos.patient_name"}.get(request.sort.key)
    if field is not None:
        nested: dict[str, Any] = {"path": "combos"}
        if combination:
            nested["filter"] = {"bool": {"filter": combination}}
        mode = "max" if request.sort.descending else "min"
        sort.append({field: {"order": direction, "missing": "_last", "mode": mode, "nested": nested}})
    elif terms:  # relevance: the study document's score on its common text
        sort.append("_score")
    sort.append({"study_uid": "asc"})
    return {"query": study_query(request, terms), "from": request.offset, "size": request.limit, "sort": sort,
            "_source": ["study_uid"], "track_total_hits": False, "track_scores": bool(terms)}


def study_totals_body(request: SearchRequest, terms: Sequence[str] = ()) -> dict[str, Any]:
    """The study count and the facets. Without a filter on a combination every combination of a
    matching study matches, so a facet counts the study documents by their own copies of the
    facet values (plain document counts: a study has each value once); with one, over the matching
    combinations, counting the studies they belong to (reverse_nested), not the combinations.
    ``instances``: the matching studies' instances that meet the filters (study_instances)."""
    _, combination = _study_filters(request)
    plain = facet_aggs(dataclasses.replace(request, level=Level.IMAGE))  # document counts
    query = study_query(request, terms)
    if not combination:
        aggs = {**plain, "instances": {"sum": {"field": "instances"}}}
        return {"query": query, "size": 0, "track_total_hits": True, "aggs": aggs}
    facets: dict[str, Any] = {}
    for name, agg in plain.items():
        for kind in ("terms", "date_histogram"):
            if kind in agg:
                inner = dict(agg[kind])
                inner["field"] = f"combos.{inner['field']}"
                if kind == "terms":
                    inner["order"] = [{"studies": "desc"}, {"_key": "asc"}]
                facets[name] = {kind: inner, "aggs": {"studies": {"reverse_nested": {}}}}
    matching = {"bool": {"filter": combination}}
    facets["instances"] = {"sum": {"field": "combos.n"}}
    aggs = {"combos": {"nested": {"path": "combos"}, "aggs": {"matching": {"filter": matching, "aggs": facets}}}}
    return {"query": query, "size": 0, "track_total_hits": True, "aggs": aggs}


def study_instances(aggregations: dict[str, Any]) -> int:
    """The instances study_totals_body's studies have that meet the request's filters."""
    nested = aggregations.get("combos", {}).get("matching")
    return int((nested or aggregations)["instances"]["value"])


def study_facet_buckets(request: SearchRequest, aggregations: dict[str, Any]) -> dict[str, list[tuple[str, int]]]:
    """Each facet's (value, studies) from the aggregations of study_totals_body."""
    nested = aggregations.get("combos", {}).get("matching")
    out = {}
    for facet in request.facets:
        buckets = (nested or aggregations)[f"facet_{facet}"]["buckets"]
        out[facet] = [(str(b.get("key_as_string", b["key"])),
                       int(b["studies"]["doc_count"] if nested is not None else b["doc_count"])) for b in buckets]
    return out
