"""What the SQLite and PostgreSQL catalogs share: row plans and query translation.

The schema (see ``migrations/``) normalises the Query/Retrieve information model
of PS3.4 C.6 into patients, studies, series and instances. This module turns a
batch of :class:`CatalogEntry` into deduplicated, deterministically ordered rows
per level, and a :class:`Query` into one parameterised SELECT per dialect.
Values never become part of SQL text: every value is a bound parameter.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from archive.core import jsontext
from archive.core.levels import Level
from archive.core.models import DicomJson
from archive.core.ports import InstanceMetadata
from archive.core.query import (
    InvalidQuery,
    Matcher,
    Query,
    Range,
    SingleValue,
    UIDList,
    Universal,
    Wildcard,
)
from archive.core.records import (
    CatalogEntry,
    CatalogInstance,
    InstanceRow,
    PatientRow,
    SeriesRow,
    StudyRow,
    fold,
)

PatientKey = tuple[str, str]  # (PatientID, IssuerOfPatientID)

# A role that does not migrate the catalog (``scp`` looks up API keys only) may find it without its
# schema: another role or `dicom-archive migrate` has not run yet. Transient, so BackendUnavailable
# (HTTP 503, DIMSE 0xA700), not a failure of ours.
NOT_MIGRATED = "its schema is not there yet (run `dicom-archive migrate`)"

# ---------------------------------------------------------------------------
# Upsert: one plan per batch, every level deduplicated and sorted by its key so
# that concurrent writers lock rows in the same order (no deadlocks).


@dataclass(frozen=True)
class UpsertPlan:
    patients: list[PatientRow]
    studies: list[tuple[StudyRow, PatientKey]]
    series: list[tuple[SeriesRow, str]]  # with its study UID
    instances: list[tuple[InstanceRow, str, str]]  # with its study and series UIDs


def plan_upsert(entries: Iterable[CatalogEntry]) -> UpsertPlan:
    """Deduplicate by key (the last entry of the batch wins) and sort every level."""
    patients: dict[PatientKey, PatientRow] = {}
    studies: dict[str, tuple[StudyRow, PatientKey]] = {}
    series: dict[str, tuple[SeriesRow, str]] = {}
    instances: dict[str, tuple[InstanceRow, str, str]] = {}
    for e in entries:
        pkey = (e.patient.patient_id, e.patient.issuer)
        patients[pkey] = e.patient
        studies[e.study.study_uid] = (e.study, pkey)
        series[e.series.series_uid] = (e.series, e.study.study_uid)
        instances[e.instance.sop_instance_uid] = (e.instance, e.study.study_uid, e.series.series_uid)
    return UpsertPlan(
        patients=[patients[k] for k in sorted(patients)],
        studies=[studies[k] for k in sorted(studies)],
        series=[series[k] for k in sorted(series)],
        instances=[instances[k] for k in sorted(instances)],
    )


PATIENT_COLUMNS = ("patient_id", "issuer", "patient_name", "patient_name_folded", "birth_date", "sex", "attrs")
STUDY_COLUMNS = (
    "patient_fk", "study_uid", "study_date", "study_time", "accession_number", "study_id",
    "study_description", "referring_physician", "referring_physician_folded", "attrs", "updated_at",
)  # fmt: skip
SERIES_COLUMNS = (
    "study_fk", "study_uid", "series_uid", "modality", "series_number", "series_description",
    "body_part", "institution", "series_date", "attrs", "updated_at",
)  # fmt: skip
INSTANCE_COLUMNS = (
    "series_fk", "study_uid", "series_uid", "sop_instance_uid", "sop_class_uid", "instance_number",
    "transfer_syntax_uid", "object_key", "size", "sha256", "number_of_frames", "received_at",
    "indexed_at", "attrs", "metadata",
)  # fmt: skip
CONFLICT_KEYS: dict[str, tuple[str, ...]] = {
    "patients": ("patient_id", "issuer"),
    "studies": ("study_uid",),
    "series": ("series_uid",),
    "instances": ("sop_instance_uid",),
}


def on_conflict(table: str, columns: Sequence[str]) -> str:
    """``ON CONFLICT (key) DO UPDATE SET`` every non-key column (both dialects)."""
    key = CONFLICT_KEYS[table]
    sets = ", ".join(f"{c} = excluded.{c}" for c in columns if c not in key)
    return f"ON CONFLICT ({', '.join(key)}) DO UPDATE SET {sets}"


# An escape of the JSON text: an escaped backslash first, so that the "u0000" after one (a backslash in
# a value, then "u0000") is left alone and only a real NUL's escape goes.
_ESCAPED_NUL = re.compile(r"\\\\|\\u0000")


def dumps(value: DicomJson) -> str:
    text = jsontext.dumps(value)
    # NUL cannot be stored in PostgreSQL text/jsonb; DICOM pads with it at most.
    if "\\u0000" not in text:
        return text
    return _ESCAPED_NUL.sub(lambda escape: "" if escape.group() == "\\u0000" else escape.group(), text)


def _text(value: str | None) -> str | None:
    return value.replace("\x00", "") if value and "\x00" in value else value


def _int32(value: int | None) -> int | None:
    return value if value is not None and -(2**31) <= value < 2**31 else None


def patient_values(row: PatientRow) -> tuple[Any, ...]:
    return (
        _text(row.patient_id), _text(row.issuer), _text(row.patient_name),
        _text(row.patient_name_folded), _text(row.birth_date), _text(row.sex), dumps(row.attrs),
    )  # fmt: skip


def study_values(row: StudyRow, patient_fk: int, now: float) -> tuple[Any, ...]:
    return (
        patient_fk, row.study_uid, _text(row.study_date), _text(row.study_time),
        _text(row.accession_number), _text(row.study_id), _text(row.study_description),
        _text(row.referring_physician), _text(fold(row.referring_physician)), dumps(row.attrs), now,
    )  # fmt: skip


def series_values(row: SeriesRow, study_fk: int, study_uid: str, now: float) -> tuple[Any, ...]:
    return (
        study_fk, study_uid, row.series_uid, _text(row.modality), _int32(row.series_number),
        _text(row.series_description), _text(row.body_part), _text(row.institution),
        _text(row.series_date), dumps(row.attrs), now,
    )  # fmt: skip


def instance_values(row: InstanceRow, series_fk: int, study_uid: str, series_uid: str, now: float) -> tuple[Any, ...]:
    return (
        series_fk, study_uid, series_uid, row.sop_instance_uid, row.sop_class_uid,
        _int32(row.instance_number), row.transfer_syntax_uid, row.object_key, row.size, row.sha256,
        _int32(row.number_of_frames), row.received_at, now, dumps(row.attrs), dumps(row.metadata),
    )  # fmt: skip


def moved_series(plan: UpsertPlan, stored: dict[str, str]) -> list[tuple[str, str]]:
    """(series UID, new study UID) for series the batch moves to another study.

    ``stored`` maps series UID -> study UID as the catalog had it before the batch;
    instances of those series that the batch does not carry need their
    denormalised ``study_uid`` updated too.
    """
    return [
        (s.series_uid, study_uid) for s, study_uid in plan.series if stored.get(s.series_uid, study_uid) != study_uid
    ]


# ---------------------------------------------------------------------------
# Listing instances (keyset pagination by primary key)

LIST_BATCH = 1000
INSTANCE_LIST_COLUMNS = (
    "id, sop_instance_uid, study_uid, series_uid, object_key, size, sha256, sop_class_uid, transfer_syntax_uid"
)


def catalog_instance(row: Sequence[Any]) -> CatalogInstance:
    """Build from a row of ``id, INSTANCE_LIST_COLUMNS`` (the id is skipped), with the patient ID
    after them when the row has it (:data:`LOCATED_COLUMNS`)."""
    return CatalogInstance(
        sop_instance_uid=row[1], study_uid=row[2], series_uid=row[3], object_key=row[4], size=int(row[5]),
        sha256=row[6], sop_class_uid=row[7], transfer_syntax_uid=row[8],
        patient_id=(row[9] or "") if len(row) > 9 else "",
    )


# A located instance names its patient (for the audit trail): the instance columns, then p.patient_id
LOCATED_COLUMNS = ", ".join(f"i.{c.strip()}" for c in INSTANCE_LIST_COLUMNS.split(",")) + ", p.patient_id"


def build_get_instance(dialect: "Dialect") -> str:
    """One instance by SOP Instance UID, with its patient ID (the instance's tables joined up)."""
    return (f"SELECT {LOCATED_COLUMNS} FROM {' '.join(_joined_up(3))} "
            f"WHERE i.sop_instance_uid = {dialect.placeholder}")


# ---------------------------------------------------------------------------
# Query translation (PS3.4 C.2.2.2)


@dataclass(frozen=True)
class Dialect:
    placeholder: str  # "?" (sqlite3) or "%s" (psycopg)
    like_escape: str  # SQLite needs an ESCAPE clause; PostgreSQL escapes with "\" already
    distinct_list: str  # aggregate of distinct values joined by ",", "{}" is the column
    decode_json: Callable[[Any], DicomJson]
    json_text: str = "{}"  # a JSON column selected as text ("{}" is the column)


LEVELS = (Level.PATIENT, Level.STUDY, Level.SERIES, Level.IMAGE)
TABLES = ("patients", "studies", "series", "instances")
ALIASES = ("p", "st", "se", "i")
PARENT_FK = (None, "patient_fk", "study_fk", "series_fk")  # column of level n pointing at n-1


@dataclass(frozen=True)
class _Column:
    level: int  # index in LEVELS of the table holding the column
    name: str
    kind: str  # text | pn | int | date | time
    describes: int | None = None  # level the attribute belongs to, when not the table's


COLUMNS: dict[str, _Column] = {
    "PatientName": _Column(0, "patient_name_folded", "pn"),
    "PatientID": _Column(0, "patient_id", "text"),
    "IssuerOfPatientID": _Column(0, "issuer", "text"),
    "PatientBirthDate": _Column(0, "birth_date", "date"),
    "PatientSex": _Column(0, "sex", "text"),
    "StudyInstanceUID": _Column(1, "study_uid", "text"),
    "StudyDate": _Column(1, "study_date", "date"),
    "StudyTime": _Column(1, "study_time", "time"),
    "AccessionNumber": _Column(1, "accession_number", "text"),
    "StudyID": _Column(1, "study_id", "text"),
    "StudyDescription": _Column(1, "study_description", "text"),
    "ReferringPhysicianName": _Column(1, "referring_physician_folded", "pn"),
    # PS3.4 C.6.2.1.2 (Table C.6-5): a study matches when any of its series has the modality
    "ModalitiesInStudy": _Column(2, "modality", "text", describes=1),
    "SeriesInstanceUID": _Column(2, "series_uid", "text"),
    "Modality": _Column(2, "modality", "text"),
    "SeriesNumber": _Column(2, "series_number", "int"),
    "SeriesDescription": _Column(2, "series_description", "text"),
    "BodyPartExamined": _Column(2, "body_part", "text"),
    "InstitutionName": _Column(2, "institution", "text"),
    "SeriesDate": _Column(2, "series_date", "date"),
    "SOPInstanceUID": _Column(3, "sop_instance_uid", "text"),
    "SOPClassUID": _Column(3, "sop_class_uid", "text"),
    "InstanceNumber": _Column(3, "instance_number", "int"),
}

# the standard leaves the order of responses open; ours is deterministic so that paging is stable
_ORDER: dict[int, tuple[tuple[str, str], ...]] = {
    0: (("p.patient_id", ""), ("p.issuer", ""), ("p.id", "")),
    1: (("st.study_date", " DESC NULLS LAST"), ("st.study_uid", "")),
    2: (("se.series_number", " NULLS LAST"), ("se.series_uid", "")),
    3: (("i.instance_number", " NULLS LAST"), ("i.sop_instance_uid", "")),
}

# computed attributes (PS3.4 C.3.4, PS3.18 10.6.3.3): (tag, vr, SQL over the page row "pg")
_SERIES_OF_STUDY = "series x2 WHERE x2.study_fk = pg.k"
_COMPUTED: dict[int, tuple[tuple[str, str, str], ...]] = {
    0: (
        ("00201200", "IS", "SELECT COUNT(*) FROM studies x1 WHERE x1.patient_fk = pg.k"),
        ("00201202", "IS", "SELECT COUNT(*) FROM series x2 JOIN studies x1 ON x2.study_fk = x1.id "
                           "WHERE x1.patient_fk = pg.k"),
        ("00201204", "IS", "SELECT COUNT(*) FROM instances x3 JOIN series x2 ON x3.series_fk = x2.id "
                           "JOIN studies x1 ON x2.study_fk = x1.id WHERE x1.patient_fk = pg.k"),
    ),
    1: (
        ("00201206", "IS", f"SELECT COUNT(*) FROM {_SERIES_OF_STUDY}"),
        ("00201208", "IS", "SELECT COUNT(*) FROM instances x3 JOIN series x2 ON x3.series_fk = x2.id "
                           "WHERE x2.study_fk = pg.k"),
        ("00080061", "CS", "SELECT {agg} FROM " + _SERIES_OF_STUDY),
    ),
    2: (("00201209", "IS", "SELECT COUNT(*) FROM instances x3 WHERE x3.series_fk = pg.k"),),
    3: (),
}  # fmt: skip


def like_pattern(pattern: str) -> str:
    """PS3.4 C.2.2.2.4 wildcard -> LIKE pattern with "\\" as escape character.

    LIKE's own metacharacters (%, _ and the escape) are matched literally.
    """
    out = []
    for ch in pattern:
        if ch == "*":
            out.append("%")
        elif ch == "?":
            out.append("_")
        elif ch in "%_\\":
            out.append("\\" + ch)
        else:
            out.append(ch)
    return "".join(out)


def _high_time(value: str) -> str:
    """Upper end of a TM range, inclusive at the precision given (PS3.4 C.2.2.2.5)."""
    whole, _, fraction = value.partition(".")
    return whole.ljust(6, "9") + "." + fraction.ljust(6, "9")


class _Builder:
    def __init__(self, dialect: Dialect, fuzzy: bool) -> None:
        self.dialect = dialect
        self.fuzzy = fuzzy
        self.params: list[Any] = []

    def bind(self, value: Any) -> str:
        self.params.append(value)
        return self.dialect.placeholder

    def condition(self, matcher: Matcher, level: int) -> str | None:
        if isinstance(matcher, Universal):  # PS3.4 C.2.2.2.3
            return None
        column = COLUMNS.get(matcher.keyword)
        if column is None:
            raise InvalidQuery(f"{matcher.keyword} cannot be matched by the catalog")
        start = min(level, column.level if column.describes is None else column.describes)
        if start >= column.level:  # the column is on a joined table
            return self.match(f"{ALIASES[column.level]}.{column.name}", column.kind, matcher)
        # the attribute lives below the queried level: rows having such a child
        tables = [f"{TABLES[start + 1]} x{start + 1}"]
        for n in range(start + 2, column.level + 1):
            tables.append(f"JOIN {TABLES[n]} x{n} ON x{n}.{PARENT_FK[n]} = x{n - 1}.id")
        inner = self.match(f"x{column.level}.{column.name}", column.kind, matcher)
        if inner is None:
            return None
        link = f"x{start + 1}.{PARENT_FK[start + 1]} = {ALIASES[start]}.id"
        return f"EXISTS (SELECT 1 FROM {' '.join(tables)} WHERE {link} AND {inner})"

    def match(self, expr: str, kind: str, m: Matcher) -> str | None:
        if isinstance(m, SingleValue):  # PS3.4 C.2.2.2.1
            if kind == "pn" and self.fuzzy:
                return self._fuzzy(expr, m.value)
            return f"{expr} = {self.bind(self._value(m.keyword, kind, m.value))}"
        if isinstance(m, UIDList):  # PS3.4 C.2.2.2.2 (and value lists of other VRs)
            exact = [v for v in m.values if kind == "int" or not ("*" in v or "?" in v)]
            parts = []
            if exact:  # bound first: parameters follow the order of the SQL text
                marks = ", ".join(self.bind(self._value(m.keyword, kind, v)) for v in exact)
                parts.append(f"{expr} IN ({marks})")
            for v in m.values:
                if v not in exact:
                    parts.append(self.match(expr, kind, Wildcard(m.keyword, v)) or "1 = 1")
            return "(" + " OR ".join(parts) + ")" if parts else "1 = 0"
        if isinstance(m, Wildcard):  # PS3.4 C.2.2.2.4
            if not m.pattern.strip("*"):
                return None  # only "*": universal matching
            pattern = (fold(m.pattern) or "") if kind == "pn" else m.pattern
            if kind == "pn" and self.fuzzy:
                return self._fuzzy(expr, pattern)
            target = f"CAST({expr} AS TEXT)" if kind == "int" else expr
            return f"{target} LIKE {self.bind(like_pattern(pattern))}{self.dialect.like_escape}"
        if isinstance(m, Range):  # PS3.4 C.2.2.2.5: inclusive, either end open
            parts = []
            if m.low:
                parts.append(f"{expr} >= {self.bind(self._value(m.keyword, kind, m.low))}")
            if m.high:
                high = self._value(m.keyword, kind, m.high)
                parts.append(f"{expr} <= {self.bind(_high_time(high) if kind == 'time' else high)}")
            return " AND ".join(parts) or None
        raise InvalidQuery(f"{m.keyword}: unsupported matching {type(m).__name__}")

    def _fuzzy(self, expr: str, value: str) -> str:
        """QIDO-RS ``fuzzymatching`` (PS3.18): any name component starts with the value."""
        prefix = like_pattern(fold(value) or "").rstrip("%") + "%"
        esc = self.dialect.like_escape
        patterns = (prefix, "%^" + prefix, "% " + prefix)
        return "(" + " OR ".join(f"{expr} LIKE {self.bind(p)}{esc}" for p in patterns) + ")"

    @staticmethod
    def _value(keyword: str, kind: str, value: str) -> Any:
        if kind == "pn":
            return fold(value)
        if kind == "int":
            try:
                return int(value)
            except ValueError:
                raise InvalidQuery(f"{keyword}: {value!r} is not an integer") from None
        if kind == "date":
            return value.replace(".", "")  # ACR-NEMA YYYY.MM.DD
        if kind == "time":
            return value.replace(":", "")
        return value


def _joined_up(level: int) -> list[str]:
    """FROM items: the level's table joined to every level above it."""
    tables = [f"{TABLES[level]} {ALIASES[level]}"]
    for n in range(level - 1, -1, -1):
        tables.append(f"JOIN {TABLES[n]} {ALIASES[n]} ON {ALIASES[n]}.id = {ALIASES[n + 1]}.{PARENT_FK[n + 1]}")
    return tables


def build_find(query: Query, dialect: Dialect) -> tuple[str, list[Any]]:
    """One SELECT for ``query``: the page first, then computed attributes of its rows.

    Matchers on attributes of higher levels join up the hierarchy (hierarchical
    scoping, e.g. StudyInstanceUID at SERIES level); matchers on attributes of
    lower levels become ``EXISTS`` over the children. ``limit`` and ``offset``
    are applied in SQL (``limit`` 0 returns nothing); counts are computed only
    for the rows of the page.
    """
    level = LEVELS.index(query.level)
    builder = _Builder(dialect, query.fuzzy)
    tables = _joined_up(level)
    where = [c for m in query.matchers if (c := builder.condition(m, level)) is not None]
    if level == 0:  # a patient left without studies (all moved away) is not listed
        where.append("EXISTS (SELECT 1 FROM studies x1 WHERE x1.patient_fk = p.id)")
    order = _ORDER[level]
    inner_cols = [f"{ALIASES[level]}.id AS k"]
    inner_cols += [f"{ALIASES[n]}.attrs AS a{n}" for n in range(level + 1)]
    inner_cols += [f"{expr} AS o{n}" for n, (expr, _) in enumerate(order)]
    inner = (
        f"SELECT {', '.join(inner_cols)} FROM {' '.join(tables)}"
        + (f" WHERE {' AND '.join(where)}" if where else "")
        + f" ORDER BY {', '.join(expr + direction for expr, direction in order)}"
        + f" LIMIT {builder.bind(max(query.limit, 0))} OFFSET {builder.bind(max(query.offset, 0))}"
    )
    outer_cols = ["pg.k"] + [f"pg.a{n}" for n in range(level + 1)]
    outer_cols += [f"({sql.format(agg=dialect.distinct_list.format('x2.modality'))})" for _, _, sql in _COMPUTED[level]]
    outer_order = ", ".join(f"pg.o{n}{direction}" for n, (_, direction) in enumerate(order))
    return f"SELECT {', '.join(outer_cols)} FROM ({inner}) pg ORDER BY {outer_order}", builder.params


def assemble(query: Query, row: Sequence[Any], dialect: Dialect) -> DicomJson:
    """One result: the attributes of the level and the levels above, plus computed ones."""
    level = LEVELS.index(query.level)
    result: DicomJson = {}
    for n in range(level + 1):
        result.update(dialect.decode_json(row[1 + n]))
    for (tag, vr, _), value in zip(_COMPUTED[level], row[level + 2 :]):
        if vr == "IS":
            result[tag] = {"vr": vr, "Value": [int(value or 0)]}
        else:
            values = sorted({v for v in (value or "").split(",") if v})
            result[tag] = {"vr": vr, "Value": values} if values else {"vr": vr}
    return result


def build_locate(query: Query, dialect: Dialect, columns: str | None = None) -> tuple[str, list[Any]]:
    """The stored instances under everything ``query`` matches (C-MOVE, C-GET, commitment).

    The matchers apply as at IMAGE level, whatever level was asked: a study-level
    retrieve names StudyInstanceUIDs, which the joined studies table matches.
    Rows are ``id, INSTANCE_LIST_COLUMNS`` (or ``columns``), ordered by study,
    series and instance, at most ``query.limit`` of them after ``query.offset``.
    """
    level = LEVELS.index(Level.IMAGE)
    builder = _Builder(dialect, query.fuzzy)
    tables = _joined_up(level)
    where = [c for m in query.matchers if (c := builder.condition(m, level)) is not None]
    if columns is None:
        columns = LOCATED_COLUMNS
    sql = (
        f"SELECT {columns} FROM {' '.join(tables)}"
        + (f" WHERE {' AND '.join(where)}" if where else "")
        + " ORDER BY st.study_uid, se.series_number NULLS LAST, se.series_uid,"
        + " i.instance_number NULLS LAST, i.sop_instance_uid"
        + f" LIMIT {builder.bind(max(query.limit, 0))}"
        + (f" OFFSET {builder.bind(query.offset)}" if query.offset > 0 else "")
    )
    return sql, builder.params


def build_metadata(query: Query, dialect: Dialect) -> tuple[str, list[Any]]:
    """:func:`build_locate` for WADO-RS metadata: rows as :func:`instance_metadata` reads them.

    The stored JSON comes back as text (``json_text``), so it is never decoded here.
    """
    columns = ("i.study_uid, i.series_uid, i.sop_instance_uid, i.transfer_syntax_uid, i.indexed_at, "
               + dialect.json_text.format("i.metadata") + ", i.sop_class_uid, p.patient_id")
    return build_locate(query, dialect, columns)


def instance_metadata(row: Sequence[Any]) -> InstanceMetadata:
    return InstanceMetadata(
        study_uid=row[0], series_uid=row[1], sop_instance_uid=row[2], transfer_syntax_uid=row[3],
        indexed_at=float(row[4]), json=row[5] or "{}", sop_class_uid=row[6], patient_id=row[7] or "",
    )
