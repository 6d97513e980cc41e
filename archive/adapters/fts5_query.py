"""A SearchRequest as SQLite SQL over ``search_docs`` and ``search_fts``.

Every value is a bound parameter; the free text reaches MATCH only as quoted
FTS5 strings (:func:`archive.adapters.fts5_search.match_expression`).
Attribute filters look inside the flattened ``fields`` JSON with
``json_each(fields, '$."Keyword"')``; person names compare folded (case- and
accent-insensitive, by the ``archive_fold`` SQL function the adapter
registers), as the catalog compares them. Facet, sort and common filter columns are
virtual generated columns of ``search_docs`` (schemas 2 and 3).

A study-level request without free text whose filters are all on
:data:`STUDY_GROUP_ATTRIBUTES` reads ``search_study_groups`` (schema 4) instead:
the same columns and the same ``fields`` JSON (of those attributes only), one row
per distinct combination of their values in a study, with its instance count
``n`` and smallest document rowid ``rep``. The SQL below is the same for both
sources; instance rows count 1.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from archive.core.levels import Level
from archive.core.query import InvalidQuery, Matcher, Range, SingleValue, UIDList, Universal, Wildcard
from archive.core.records import fold
from archive.core.search import FACET_SIZE, STUDY_GROUP_ATTRIBUTES, SearchRequest, by_study_groups, path_filters, vr_of

GROUP = {Level.STUDY: "d.study_uid", Level.SERIES: "d.series_uid", Level.IMAGE: "d.sop_instance_uid"}
# Single-valued attributes with a column of their own (indexed): filters use it, not the JSON.
COLUMNS = {
    "StudyInstanceUID": "d.study_uid", "SeriesInstanceUID": "d.series_uid", "SOPInstanceUID": "d.sop_instance_uid",
    "PatientID": "d.patient_id", "StudyDate": "d.study_date", "Modality": "d.modality",
    "InstitutionName": "d.institution", "BodyPartExamined": "d.body_part",
}
# facet -> column of the matched rows (m)
FACET_COLUMNS = {"Modality": "modality", "InstitutionName": "institution", "BodyPartExamined": "body_part"}
_DATE_BUCKET = {
    "year": "substr(study_date, 1, 4)",
    "month": "substr(study_date, 1, 4) || '-' || substr(study_date, 5, 2)",
}
_PATH = re.compile(r"[A-Za-z0-9.]+")


def glob_pattern(pattern: str) -> str:
    """PS3.4 C.2.2.2.4 wildcard -> GLOB pattern: ``*`` and ``?`` kept, ``[`` literal."""
    return pattern.replace("[", "[[]")


@dataclass
class Sql:
    """SQL text and its parameters, built together so their order always agrees."""

    params: list[Any] = field(default_factory=list)
    text: str = ""

    def bind(self, value: Any) -> str:
        self.params.append(value)
        return "?"


def _value_condition(sql: Sql, m: Matcher, pn: bool, target: str = "j.value") -> str | None:
    value = f"archive_fold({target})" if pn else target

    def norm(v: str) -> str:
        return (fold(v) or "") if pn else v

    if isinstance(m, Universal):  # PS3.4 C.2.2.2.3
        return None
    if isinstance(m, SingleValue):  # PS3.4 C.2.2.2.1
        return f"{value} = {sql.bind(norm(m.value))}"
    if isinstance(m, Wildcard):  # PS3.4 C.2.2.2.4
        if not m.pattern.strip("*"):
            return None
        return f"{value} GLOB {sql.bind(glob_pattern(norm(m.pattern)))}"
    if isinstance(m, UIDList):  # PS3.4 C.2.2.2.2 (and value lists of other VRs)
        exact = [v for v in m.values if "*" not in v and "?" not in v]
        parts = []
        if exact:
            parts.append(f"{value} IN ({', '.join(sql.bind(norm(v)) for v in exact)})")
        parts += [f"{value} GLOB {sql.bind(glob_pattern(norm(v)))}" for v in m.values if v not in exact]
        return "(" + " OR ".join(parts) + ")" if parts else "0"
    if isinstance(m, Range):  # PS3.4 C.2.2.2.5: inclusive, either end open
        ends = []
        if m.low:
            ends.append(f"{target} >= {sql.bind(m.low)}")
        if m.high:
            ends.append(f"{target} <= {sql.bind(m.high)}")
        return " AND ".join(ends) or None
    raise InvalidQuery(f"{m.keyword}: unsupported matching {type(m).__name__}")


def filter_condition(sql: Sql, m: Matcher) -> str | None:
    """Some value of the attribute (any item of a sequence path) satisfies ``m``."""
    if m.keyword in COLUMNS:  # single-valued, with an index
        return _value_condition(sql, m, False, COLUMNS[m.keyword])
    if not _PATH.fullmatch(m.keyword):
        raise InvalidQuery(f"{m.keyword!r} is not an attribute keyword or path")
    path = sql.bind(f'$."{m.keyword}"')
    inner = _value_condition(sql, m, vr_of(m.keyword) == "PN")
    if inner is None:
        sql.params.pop()  # the path is not used
        return None
    return f"EXISTS (SELECT 1 FROM json_each(d.fields, {path}) AS j WHERE {inner})"


def by_groups(request: SearchRequest, expression: str | None) -> bool:
    """Whether the study groups answer ``request`` as the instances would."""
    return expression is None and by_study_groups(request)


def matched(request: SearchRequest, expression: str | None, groups: bool = False) -> Sql:
    """``CREATE TEMP TABLE m``: one row per matching instance (or study group, ``groups``)
    with its group key, instance count and score.

    Materialised once per request, so the match and the JSON of each row are read once
    for the total, the page and every facet.
    """
    sql = Sql()
    columns = [f"{GROUP[request.level]} AS g", "d.rep AS rid, d.n AS n" if groups else "d.rowid AS rid, 1 AS n",
               "d.study_date", "d.modality", "d.institution", "d.body_part"]
    where: list[str] = []
    if groups:
        columns.append("NULL AS score")
        source = "search_study_groups AS d"
    elif expression is not None:
        columns.append("-bm25(search_fts) AS score")  # bm25() is lower for better matches
        source = "search_fts JOIN search_docs AS d ON d.rowid = search_fts.rowid"
        where.append(f"search_fts MATCH {sql.bind(expression)}")
    else:
        columns.append("NULL AS score")
        source = "search_docs AS d"
    if request.sort.key == "PatientName":
        columns.append("archive_fold(json_extract(d.fields, '$.PatientName[0]')) AS pn")
    for m in path_filters(request.filters):
        condition = filter_condition(sql, m)
        if condition is not None:
            where.append(condition)
    # parameters were bound in text order: MATCH first, then the filters
    conditions = " WHERE " + " AND ".join(where) if where else ""
    sql.text = f"CREATE TEMP TABLE m AS SELECT {', '.join(columns)} FROM {source}{conditions}"
    return sql


def page_sql(request: SearchRequest, has_text: bool) -> str:
    """Groups of one page: key, best score, matching instances, modalities (over m)."""
    sort = request.sort
    direction = "DESC" if sort.descending else "ASC"
    if sort.key == "StudyDate":
        order = f"(sd IS NULL), sd {direction}, g"
    elif sort.key == "PatientName":
        order = f"(pn IS NULL), pn {direction}, g"
    elif has_text:
        order = "score DESC, g"
    else:
        order = "g"
    pn = "min(pn)" if sort.key == "PatientName" else "NULL"
    return (
        "SELECT g, max(score) AS score, sum(n), group_concat(DISTINCT modality), "
        f"{'max' if sort.descending else 'min'}(study_date) AS sd, {pn} AS pn "
        f"FROM m GROUP BY g ORDER BY {order} LIMIT ? OFFSET ?"
    )


def best_documents_sql(groups: int) -> str:
    """The best-scoring document of each of ``groups`` groups (over m)."""
    marks = ", ".join("?" * groups)
    return (
        "SELECT x.g, d.study_uid, d.series_uid, d.sop_instance_uid, d.fields FROM ("
        "SELECT g, rid, row_number() OVER (PARTITION BY g ORDER BY score DESC, rid) AS rn "
        f"FROM m WHERE g IN ({marks})) AS x JOIN search_docs AS d ON d.rowid = x.rid WHERE x.rn = 1"
    )


def facet_sql(facet: str, interval: str) -> str:
    """Buckets of one facet: value, groups (over m)."""
    if facet == "StudyDate":
        bucket = _DATE_BUCKET[interval]
        return (
            f"SELECT {bucket} AS v, count(DISTINCT g) FROM m "
            "WHERE study_date GLOB '[0-9][0-9][0-9][0-9][0-9][0-9][0-9][0-9]*' GROUP BY v ORDER BY v"
        )
    column = FACET_COLUMNS[facet]
    return (
        f"SELECT {column} AS v, count(DISTINCT g) AS n FROM m WHERE {column} IS NOT NULL AND {column} != '' "
        f"GROUP BY v ORDER BY n DESC, v LIMIT {FACET_SIZE}"
    )
