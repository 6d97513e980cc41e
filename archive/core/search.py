"""The search port's request and result models, shared by every search backend.

A :class:`SearchRequest` is free text plus attribute filters given as the
matchers of the one query model (PS3.4 C.2.2.2, :mod:`archive.core.query`),
answered at a level (study, series or instance: the index holds one document
per instance, grouped by study or series UID). Every filter and every free-text
term must hold on one instance for its group to match.

Facets count the groups at the requested level over the whole match, not only
the returned page. Highlights are computed here, from the flattened attributes
of each hit's best document, so both backends report the same fields and
fragments (HTML-escaped, matches in ``<em>``).
"""

from __future__ import annotations

import dataclasses
import html
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword

from archive.core.levels import Level
from archive.core.query import VR_OF, Matcher, Range, SequenceMatch
from archive.core.records import fold

MAX_TEXT_CHARS = 1024  # longest free-text query
MAX_VALUE_CHARS = 256  # longest filter value
MAX_TERMS = 32  # terms past this are ignored by the backends
MAX_WINDOW = 10_000  # offset + limit never reach past this (OpenSearch's result window)
FACET_SIZE = 20  # buckets per terms facet

# Facets: name -> what it counts. StudyDate is a histogram (year or month buckets).
FACETS: tuple[str, ...] = ("Modality", "StudyDate", "InstitutionName", "BodyPartExamined")
SORT_KEYS: tuple[str, ...] = ("relevance", "StudyDate", "PatientName")
MONTHLY_SPAN_MONTHS = 24  # a closed StudyDate range this narrow gets a monthly histogram

# What a study list filters, sorts and facets on (the web UI's search fields and the facets). The
# patient and study attributes are the same on every instance of a study as a rule, the others on
# every instance of a series, so a study has a few combinations of them: both backends keep, per
# study, one entry for each combination with its instance count, and answer a study list without
# free text whose filters are all on these attributes from those entries (by_study_groups).
STUDY_GROUP_ATTRIBUTES: tuple[str, ...] = (
    "PatientName", "PatientID", "PatientBirthDate", "AccessionNumber", "StudyDate", "StudyDescription",
    "ReferringPhysicianName", "Modality", "InstitutionName", "BodyPartExamined",
)  # fmt: skip
_GROUPED = frozenset(STUDY_GROUP_ATTRIBUTES) | {"StudyInstanceUID"}

# A few attributes to show per hit, by level (first value of each).
DISPLAY: dict[Level, tuple[str, ...]] = {
    Level.STUDY: (
        "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
        "StudyDescription", "AccessionNumber", "InstitutionName",
    ),
    Level.SERIES: (
        "PatientName", "PatientID", "StudyDate", "StudyDescription", "AccessionNumber", "Modality",
        "SeriesNumber", "SeriesDescription", "BodyPartExamined", "InstitutionName",
    ),
    Level.IMAGE: (
        "PatientName", "PatientID", "StudyDate", "StudyDescription", "Modality", "SeriesNumber",
        "SeriesDescription", "BodyPartExamined", "InstitutionName", "SOPClassUID", "InstanceNumber",
    ),
}  # fmt: skip

_TOKEN = re.compile(r"[^\W_]+")
_HEX_TAG = re.compile(r"[0-9A-Fa-f]{8}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
MAX_HIGHLIGHTS = 8  # fields reported per hit
FRAGMENT_CHARS = 160  # a long value is cut to a window around its first match


@dataclass(frozen=True)
class Sort:
    key: str = "relevance"  # one of SORT_KEYS
    descending: bool = True


@dataclass(frozen=True)
class SearchRequest:
    text: str = ""
    filters: tuple[Matcher, ...] = ()
    level: Level = Level.STUDY
    limit: int = 20
    offset: int = 0
    sort: Sort = Sort()
    facets: tuple[str, ...] = FACETS
    date_interval: str = "year"  # StudyDate histogram buckets: "year" or "month"


@dataclass(frozen=True)
class Highlight:
    field: str  # attribute keyword or dotted path (ContentSequence.TextValue), or private tag
    fragments: tuple[str, ...]  # HTML-escaped, matched terms in <em>


@dataclass(frozen=True)
class GroupHit:
    """One result at the requested level."""

    study_uid: str
    series_uid: str | None  # None at study level
    sop_instance_uid: str | None  # None at study and series level
    score: float | None  # None without free text
    instances: int  # matching instances in the group
    modalities: tuple[str, ...]  # distinct modalities of the matching instances
    attributes: dict[str, str] = field(default_factory=dict)
    highlights: tuple[Highlight, ...] = ()


@dataclass(frozen=True)
class FacetBucket:
    value: str
    count: int  # groups at the requested level


@dataclass(frozen=True)
class SearchResult:
    total: int  # groups at the requested level
    hits: tuple[GroupHit, ...]
    facets: dict[str, tuple[FacetBucket, ...]] = field(default_factory=dict)


def query_terms(text: str) -> list[str]:
    """The whitespace-separated chunks of free text that hold a searchable token."""
    return [t for t in _CONTROL.sub(" ", text).split() if _TOKEN.search(t)][:MAX_TERMS]


def date_interval(filters: Sequence[Matcher]) -> str:
    """Monthly StudyDate buckets for a closed range of at most MONTHLY_SPAN_MONTHS, else yearly."""
    for m in filters:
        if isinstance(m, Range) and m.keyword == "StudyDate" and m.low and m.high:
            if len(m.low) >= 6 and len(m.high) >= 6:
                months = (int(m.high[:4]) - int(m.low[:4])) * 12 + int(m.high[4:6]) - int(m.low[4:6])
                if 0 <= months < MONTHLY_SPAN_MONTHS:
                    return "month"
    return "year"


def display_attributes(fields: Mapping[str, Sequence[str]], level: Level) -> dict[str, str]:
    return {k: str(fields[k][0]) for k in DISPLAY[level] if fields.get(k)}


def _matchers(text: str) -> list[tuple[str, bool]]:
    """Folded query tokens, each with ``True`` when it is a prefix (``term*``)."""
    out: list[tuple[str, bool]] = []
    for chunk in query_terms(text):
        tokens = _TOKEN.findall(chunk)
        for i, token in enumerate(tokens):
            out.append((fold(token) or "", chunk.endswith("*") and i == len(tokens) - 1))
    return out


def _fragment(value: str, spans: list[tuple[int, int]]) -> str:
    start = max(0, spans[0][0] - FRAGMENT_CHARS // 4)
    end = min(len(value), start + FRAGMENT_CHARS)
    parts: list[str] = ["…" if start else ""]
    pos = start
    for s, e in spans:
        if s < pos or e > end:
            continue
        parts += [html.escape(value[pos:s]), "<em>", html.escape(value[s:e]), "</em>"]
        pos = e
    parts += [html.escape(value[pos:end]), "…" if end < len(value) else ""]
    return "".join(parts)


def highlight(fields: Mapping[str, Sequence[str]], text: str) -> tuple[Highlight, ...]:
    """Which attributes of a document hold the free-text terms, with marked fragments."""
    wanted = _matchers(text)
    if not wanted:
        return ()
    found: list[Highlight] = []
    for name, values in fields.items():
        fragments = []
        for value in values:
            spans = []
            for m in _TOKEN.finditer(str(value)):
                token = fold(m.group()) or ""
                if any(token.startswith(w) if prefix else token == w for w, prefix in wanted):
                    spans.append(m.span())
            if spans:
                fragments.append(_fragment(str(value), spans))
        if fragments:
            found.append(Highlight(name, tuple(fragments[:3])))
            if len(found) >= MAX_HIGHLIGHTS:
                break
    return tuple(found)


def vr_of(keyword: str) -> str:
    """The VR of an attribute keyword or dotted path (its last element); ``LO`` when unknown."""
    leaf = keyword.rsplit(".", 1)[-1]
    if leaf in VR_OF:
        return VR_OF[leaf]
    try:
        tag = tag_for_keyword(leaf) if not _HEX_TAG.fullmatch(leaf) else int(leaf, 16)
        return str(dictionary_VR(tag)) if tag is not None else "LO"
    except KeyError:  # private or unknown tag
        return "LO"


def canonical_path(name: str) -> str | None:
    """An attribute as the index names it, or None if ``name`` is not one.

    ``name`` is a keyword, an 8-hex-digit tag, or a dotted path of them
    (``ContentSequence.TextValue``); standard tags become keywords, private
    ones upper-case hex, as :mod:`archive.core.flatten` names them.
    """
    parts = []
    for part in name.split("."):
        if not part:  # "", "A." or ".A": pydicom's dictionary has retired entries keyed by ""
            return None
        if _HEX_TAG.fullmatch(part):
            parts.append(keyword_for_tag(int(part, 16)) or part.upper())
        elif tag_for_keyword(part) is not None:
            parts.append(part)
        else:
            return None
    return ".".join(parts)


def make_hit(
    request: SearchRequest,
    uids: tuple[str, str, str],
    fields: Mapping[str, Sequence[str]],
    *,
    score: float | None,
    instances: int,
    modalities: Sequence[str],
) -> GroupHit:
    """A result at ``request.level`` from its best document's UIDs and flattened fields."""
    study, series, sop = uids
    level = request.level
    return GroupHit(
        study_uid=study,
        series_uid=series if level is not Level.STUDY else None,
        sop_instance_uid=sop if level is Level.IMAGE else None,
        score=score if request.text and score is not None else None,
        instances=instances,
        modalities=tuple(sorted(set(modalities))),
        attributes=display_attributes(fields, level),
        highlights=highlight(fields, request.text),
    )


def by_study_groups(request: SearchRequest) -> bool:
    """Whether a request without free text can be answered from the study groups as from the
    instances: a study list whose filters are all on STUDY_GROUP_ATTRIBUTES or the study UID."""
    return request.level is Level.STUDY and all(m.keyword in _GROUPED for m in path_filters(request.filters))


def path_filters(filters: Sequence[Matcher]) -> tuple[Matcher, ...]:
    """Sequence matching (PS3.4 C.2.2.2.6) as matchers on dotted attribute paths.

    The index keeps the values of sequence items per path, not per item, so each
    matcher of an item must hold in some item, not necessarily the same one.
    """
    out: list[Matcher] = []
    for m in filters:
        if isinstance(m, SequenceMatch):
            out += [dataclasses.replace(inner, keyword=f"{m.keyword}.{inner.keyword}")
                    for inner in path_filters(m.items)]
        else:
            out.append(m)
    return tuple(out)


def nest(path: str, matcher: Matcher) -> Matcher:
    """A matcher on a dotted path (``ContentSequence.TextValue``) as sequence matching."""
    *sequences, _ = path.split(".")
    for sequence in reversed(sequences):
        matcher = SequenceMatch(sequence, (matcher,))
    return matcher
