"""Contract of the SearchIndex port, over SQLite FTS5 and OpenSearch."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import random
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import BasicTextSRStorage

from archive.adapters import fts5_search, opensearch_query, opensearch_search
from archive.adapters.fts5_search import Fts5Search
from archive.adapters.opensearch_query import FACET_PROPERTIES
from archive.adapters.opensearch_search import OpenSearchIndex, SearchWriteRejected
from archive.adapters.opensearch_studies import LISTED, STUDY_SCHEMA
from archive.core.errors import BackendUnavailable
from archive.core.flatten import flatten
from archive.core.models import SearchDocument
from archive.core.levels import Level
from archive.core.ports import SearchHit, SearchIndex
from archive.core.query import Matcher, Range, SequenceMatch, SingleValue, UIDList, Universal, Wildcard
from archive.core.search import MAX_VALUE_CHARS, STUDY_GROUP_ATTRIBUTES, SearchRequest, SearchResult, Sort, date_interval
from tests.conftest import free_port, service_setting
from tests.factories import make_ct, make_message, new_uid

PAGE = 500  # small pages so that ids() crosses page boundaries

HOSTILE = [
    '"); DROP TABLE x; --',
    '"); DROP TABLE search_docs; --',
    "NEAR(a b)",
    "title:*",
    'unbalanced "quote',
    '"',
    "a AND OR",
    "OR",
    "*",
    "**",
    "",
    "   ",
    "-",
    "((",
    "^2 ~ +- |",
    "fields:secretvalue",
    "text:doe",
    "doe\x00jane",
]


def make_doc(tmp_path: Path, ds: Dataset | None = None, **kwargs: object) -> SearchDocument:
    dataset = ds if ds is not None else make_ct(**kwargs)  # type: ignore[arg-type]
    return flatten(make_message(dataset, tmp_path))


def make_sr(**kwargs: object) -> Dataset:
    """A Basic Text SR-like instance whose report text sits in ContentSequence (PS3.3 C.17.3)."""
    ds = make_ct(**kwargs)  # type: ignore[arg-type]
    del ds.PixelData
    ds.SOPClassUID = BasicTextSRStorage
    ds.Modality = "SR"
    concept = Dataset()
    concept.CodeValue = "121071"
    concept.CodingSchemeDesignator = "DCM"
    concept.CodeMeaning = "Finding"
    item = Dataset()
    item.RelationshipType = "CONTAINS"
    item.ValueType = "TEXT"
    item.ConceptNameCodeSequence = DicomSequence([concept])
    item.TextValue = "small nodule in the left lung"
    ds.ValueType = "CONTAINER"
    ds.ContentSequence = DicomSequence([item])
    return ds


@pytest.fixture(params=["sqlite", "opensearch"])
async def index(request: pytest.FixtureRequest, tmp_path: Path, unique: str) -> AsyncIterator[SearchIndex]:
    backend: Fts5Search | OpenSearchIndex
    if request.param == "sqlite":
        backend = Fts5Search(tmp_path / "search.db", page_size=PAGE)
    else:
        backend = OpenSearchIndex(service_setting("ARCHIVE_SEARCH"), index=unique, page_size=PAGE)
    try:
        await backend.migrate()
        yield backend
    finally:
        if isinstance(backend, OpenSearchIndex):
            await backend.drop()
        await backend.close()


def uids(hits: list[SearchHit]) -> set[str]:
    return {hit.sop_instance_uid for hit in hits}


async def test_upsert_count_and_hit_fields(index: SearchIndex, tmp_path: Path) -> None:
    await index.ping()
    assert await index.count() == 0
    docs = [make_doc(tmp_path, patient_name=f"Patient{i}^Test") for i in range(3)]
    await index.upsert(docs)
    assert await index.count() == 3
    hits = await index.search("patient1")
    assert len(hits) == 1
    hit = hits[0]
    assert (hit.sop_instance_uid, hit.study_uid, hit.series_uid) == (
        docs[1].sop_instance_uid,
        docs[1].study_uid,
        docs[1].series_uid,
    )
    assert hit.score > 0


async def test_reupsert_is_idempotent_and_replaces_text(index: SearchIndex, tmp_path: Path) -> None:
    sop = new_uid()
    old = make_doc(tmp_path, sop_uid=sop, patient_name="Oldname^Anna")
    other = make_doc(tmp_path, patient_name="Bystander^Bob")
    await index.upsert([old, other])
    await index.upsert([old, other])
    assert await index.count() == 2
    assert uids(await index.search("oldname")) == {sop}

    new = make_doc(
        tmp_path, sop_uid=sop, study_uid=old.study_uid, series_uid=old.series_uid, patient_name="Newname^Anna"
    )
    await index.upsert([new])
    assert await index.count() == 2
    assert await index.search("oldname") == []
    assert uids(await index.search("newname")) == {sop}
    assert uids(await index.search("anna")) == {sop}  # one document, not two versions
    ids = [uid async for uid in index.ids()]
    assert sorted(ids) == sorted([sop, other.sop_instance_uid])


async def test_same_uid_twice_in_one_batch_keeps_the_last(index: SearchIndex, tmp_path: Path) -> None:
    sop = new_uid()
    first = make_doc(tmp_path, sop_uid=sop, patient_name="First^Version")
    second = dataclasses.replace(first, text=first.text.replace("First", "Second"))
    await index.upsert([first, second])
    assert await index.count() == 1
    assert await index.search("first") == []
    assert uids(await index.search("second")) == {sop}


async def test_free_text_name_institution_and_and_semantics(index: SearchIndex, tmp_path: Path) -> None:
    doe = make_doc(tmp_path, patient_name="Doe^Jane")
    roe = make_ct(patient_name="Roe^Richard")
    roe.InstitutionName = "Saint Mary Clinic"
    roe_doc = make_doc(tmp_path, roe)
    await index.upsert([doe, roe_doc])
    assert uids(await index.search("Doe")) == {doe.sop_instance_uid}
    assert uids(await index.search("jane DOE")) == {doe.sop_instance_uid}
    assert uids(await index.search("general hospital")) == {doe.sop_instance_uid}
    assert uids(await index.search("saint mary")) == {roe_doc.sop_instance_uid}
    assert await index.search("saint hospital") == []  # AND: every term must match
    assert uids(await index.search("chest")) == {doe.sop_instance_uid, roe_doc.sop_instance_uid}
    assert len(await index.search("chest", limit=1)) == 1
    assert uids(await index.search("rich*")) == {roe_doc.sop_instance_uid}  # prefix


async def test_private_tag_value_is_searchable(index: SearchIndex, tmp_path: Path) -> None:
    ds = make_ct()
    ds.private_block(0x0009, "ACME", create=True).add_new(0x01, "LO", "secretvalue")
    doc = make_doc(tmp_path, ds)
    assert doc.fields["00091001"] == ["secretvalue"]
    await index.upsert([doc, make_doc(tmp_path)])
    assert uids(await index.search("secretvalue")) == {doc.sop_instance_uid}
    assert uids(await index.search("secretv*")) == {doc.sop_instance_uid}


async def test_sr_content_text_is_searchable(index: SearchIndex, tmp_path: Path) -> None:
    sr = make_doc(tmp_path, make_sr())
    assert sr.fields["ContentSequence.TextValue"] == ["small nodule in the left lung"]
    await index.upsert([sr, make_doc(tmp_path)])
    assert uids(await index.search("nodule lung")) == {sr.sop_instance_uid}
    assert uids(await index.search("Nodule LEFT")) == {sr.sop_instance_uid}
    assert await index.search("nodule liver") == []


async def test_accent_insensitive(index: SearchIndex, tmp_path: Path) -> None:
    message = make_message(make_ct(), tmp_path)
    # Set in the DICOM JSON directly: describe() does not decode non-ASCII PN from a
    # dataset with Specific Character Set yet (it passes "ISO_IR 192", not "utf-8", to pydicom).
    metadata = {**message.metadata, "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Müller^Jürgen"}]}}
    doc = flatten(dataclasses.replace(message, metadata=metadata))
    await index.upsert([doc, make_doc(tmp_path)])
    for text in ("muller", "Müller", "MULLER", "jurgen", "müll*", "mull*"):
        assert uids(await index.search(text)) == {doc.sop_instance_uid}, text


async def test_hostile_input_is_plain_text(index: SearchIndex, tmp_path: Path) -> None:
    doc = make_doc(tmp_path)
    await index.upsert([doc])
    for text in HOSTILE:
        hits = await index.search(text)  # never a syntax error
        assert isinstance(hits, list), text
        assert uids(hits) <= {doc.sop_instance_uid}, text
    assert await index.search("*") == []
    assert await index.search("") == []
    # Operators are plain text: "-" is no negation, "|" / "OR" no disjunction.
    assert uids(await index.search("jane -doe")) == {doc.sop_instance_uid}
    assert await index.search("jane | nobody") == []
    assert await index.search("jane OR nobody") == []
    assert await index.count() == 1  # nothing was dropped or altered
    assert uids(await index.search("doe")) == {doc.sop_instance_uid}


async def test_ids_pages_through_every_document(index: SearchIndex, tmp_path: Path) -> None:
    base = make_doc(tmp_path)
    docs = [dataclasses.replace(base, sop_instance_uid=new_uid()) for _ in range(1200)]
    for start in range(0, len(docs), 400):
        await index.upsert(docs[start : start + 400])
    assert await index.count() == 1200
    ids = [uid async for uid in index.ids()]
    assert len(ids) == 1200
    assert set(ids) == {d.sop_instance_uid for d in docs}
    assert ids == sorted(ids)  # one stable order, no page repeated or skipped


async def test_migrate_twice_keeps_data(index: SearchIndex, tmp_path: Path) -> None:
    doc = make_doc(tmp_path)
    await index.upsert([doc])
    await index.migrate()
    await index.migrate()
    assert await index.count() == 1
    assert uids(await index.search("doe")) == {doc.sop_instance_uid}


@pytest.mark.parametrize("backend", ["sqlite", "opensearch"])
async def test_unreachable_backend_is_unavailable(backend: str, tmp_path: Path) -> None:
    index: Fts5Search | OpenSearchIndex
    if backend == "sqlite":
        (tmp_path / "file").write_text("not a directory")
        index = Fts5Search(tmp_path / "file" / "search.db")
    else:
        index = OpenSearchIndex(f"http://127.0.0.1:{free_port()}", index="unused", timeout=2)
    try:
        with pytest.raises(BackendUnavailable):
            await index.migrate()
        with pytest.raises(BackendUnavailable):
            await index.ping()
    finally:
        await index.close()


async def test_opensearch_raises_on_partial_bulk_failure(tmp_path: Path, unique: str) -> None:
    index = OpenSearchIndex(service_setting("ARCHIVE_SEARCH"), index=unique)
    try:
        await index.migrate()
        await index.upsert([make_doc(tmp_path)])
        client = index._client
        await client.indices.put_settings(index=unique, body={"index.blocks.write": True})
        with pytest.raises(SearchWriteRejected) as info:
            await index.upsert([make_doc(tmp_path), make_doc(tmp_path)])
        assert len(info.value.failures) == 2
        await client.indices.put_settings(index=unique, body={"index.blocks.write": False})
        assert await index.count() == 1
    finally:
        await index.drop()
        await index.close()


async def test_opensearch_exact_filter_on_any_tag_path(tmp_path: Path, unique: str) -> None:
    """flat_object keeps dotted sequence paths and private hex tags as exact-match keys."""
    index = OpenSearchIndex(service_setting("ARCHIVE_SEARCH"), index=unique)
    ds = make_sr(patient_id="PAT-77")
    ds.private_block(0x0009, "ACME", create=True).add_new(0x01, "LO", "secretvalue")
    doc = make_doc(tmp_path, ds)
    try:
        await index.migrate()
        await index.upsert([doc, make_doc(tmp_path)])
        for field, value in (
            ("fields.PatientID", "PAT-77"),
            ("fields.ContentSequence.TextValue", "small nodule in the left lung"),
            ("fields.00091001", "secretvalue"),
        ):
            result = await index._client.search(index=unique, body={"query": {"term": {field: value}}})
            assert [h["_id"] for h in result["hits"]["hits"]] == [doc.sop_instance_uid], field
        mapping = await index._client.indices.get_mapping(index=unique)
        assert set(mapping[unique]["mappings"]["properties"]) == {
            "sop_instance_uid", "study_uid", "series_uid", "indexed_at", "text", "fields",
            "study_date", "modality", "institution", "body_part", "patient_name", "schema_version", "group_key",
        }  # many distinct tags, same mapping
    finally:
        await index.drop()
        await index.close()


# --- query(): free text + filters of the one query model, grouped, faceted, paged ---------------

STUDY, SERIES, IMAGE = Level.STUDY, Level.SERIES, Level.IMAGE


@dataclasses.dataclass
class Corpus:
    """Three studies, four series, seven instances; expectations are read off this data."""

    a: str = dataclasses.field(default_factory=new_uid)  # Doe^Jane 20230510 CT x3 + SR (nodule)
    b: str = dataclasses.field(default_factory=new_uid)  # Roe^Richard 20240115 MR x2, HEAD
    c: str = dataclasses.field(default_factory=new_uid)  # Smith^Anna 20240302 CT x1

    def documents(self, tmp_path: Path) -> list[SearchDocument]:
        a_ct, a_sr, b_mr, c_ct = new_uid(), new_uid(), new_uid(), new_uid()
        docs = [make_doc(tmp_path, study_uid=self.a, series_uid=a_ct, patient_id="PAT-A", seed=i,
                         patient_name="Doe^Jane", study_date="20230510", instance_number=i) for i in range(3)]
        docs.append(make_doc(tmp_path, make_sr(study_uid=self.a, series_uid=a_sr, patient_id="PAT-A",
                                               patient_name="Doe^Jane", study_date="20230510")))
        for i in range(2):
            mr = make_ct(study_uid=self.b, series_uid=b_mr, patient_id="PAT-B", patient_name="Roe^Richard",
                         study_date="20240115", modality="MR", instance_number=i)
            mr.BodyPartExamined, mr.InstitutionName = "HEAD", "Saint Mary Clinic"
            mr.StudyDescription, mr.ProtocolName = "MR BRAIN", "BRAIN ROUTINE"
            docs.append(make_doc(tmp_path, mr))
        docs.append(make_doc(tmp_path, study_uid=self.c, series_uid=c_ct, patient_id="PAT-C",
                             patient_name="Smith^Anna", study_date="20240302"))
        return docs


@pytest.fixture
async def corpus(index: SearchIndex, tmp_path: Path) -> Corpus:
    data = Corpus()
    await index.upsert(data.documents(tmp_path))
    return data


def studies(result: SearchResult) -> list[str]:
    return [hit.study_uid for hit in result.hits]


def facet(result: SearchResult, name: str) -> list[tuple[str, int]]:
    return [(b.value, b.count) for b in result.facets[name]]


async def test_query_groups_and_facets_at_each_level(index: SearchIndex, corpus: Corpus) -> None:
    result = await index.query(SearchRequest())
    assert result.total == 3 and {hit.study_uid for hit in result.hits} == {corpus.a, corpus.b, corpus.c}
    assert facet(result, "Modality") == [("CT", 2), ("MR", 1), ("SR", 1)]  # studies, count desc then value
    assert facet(result, "StudyDate") == [("2023", 1), ("2024", 2)]
    assert facet(result, "InstitutionName") == [("General Hospital", 2), ("Saint Mary Clinic", 1)]
    assert facet(result, "BodyPartExamined") == [("CHEST", 2), ("HEAD", 1)]
    a = next(hit for hit in result.hits if hit.study_uid == corpus.a)
    assert (a.series_uid, a.sop_instance_uid, a.score, a.instances) == (None, None, None, 4)
    assert a.modalities == ("CT", "SR")
    assert a.attributes["PatientID"] == "PAT-A" and a.attributes["StudyDate"] == "20230510"
    series = await index.query(SearchRequest(level=SERIES))
    assert series.total == 4 and all(hit.series_uid for hit in series.hits)
    assert facet(series, "Modality") == [("CT", 2), ("MR", 1), ("SR", 1)]
    instances = await index.query(SearchRequest(level=IMAGE, limit=100))
    assert instances.total == 7 and len({hit.sop_instance_uid for hit in instances.hits}) == 7
    assert facet(instances, "Modality") == [("CT", 4), ("MR", 2), ("SR", 1)]
    assert facet(instances, "StudyDate") == [("2023", 4), ("2024", 3)]
    only = await index.query(SearchRequest(facets=("Modality",)))
    assert set(only.facets) == {"Modality"}


async def test_query_free_text_with_highlights(index: SearchIndex, corpus: Corpus) -> None:
    result = await index.query(SearchRequest(text="Nodule"))
    assert studies(result) == [corpus.a] and result.total == 1
    hit = result.hits[0]
    assert hit.instances == 1 and hit.modalities == ("SR",) and hit.score is not None and hit.score > 0
    marks = {h.field: h.fragments for h in hit.highlights}
    assert marks == {"ContentSequence.TextValue": ("small <em>nodule</em> in the left lung",)}
    assert facet(result, "Modality") == [("SR", 1)]  # facets of the match, not of the archive
    brain = await index.query(SearchRequest(text="brain rout*", level=SERIES))
    assert studies(brain) == [corpus.b] and brain.hits[0].instances == 2
    assert {h.field for h in brain.hits[0].highlights} == {"StudyDescription", "ProtocolName"}
    assert (await index.query(SearchRequest(text="nodule brain"))).total == 0  # AND


async def test_query_filters_of_every_matching_type(index: SearchIndex, corpus: Corpus) -> None:
    a, b, c = corpus.a, corpus.b, corpus.c
    cases: list[tuple[tuple[Matcher, ...], set[str]]] = [
        ((SingleValue("Modality", "CT"),), {a, c}),
        ((SingleValue("Modality", "ct"),), set()),  # CS is case-sensitive
        ((Range("StudyDate", "20240101", None),), {b, c}),
        ((Range("StudyDate", None, "20231231"),), {a}),
        ((Range("StudyDate", "20240101", "20240131"),), {b}),
        ((Wildcard("PatientName", "doe*"),), {a}),  # person names: case-insensitive
        ((SingleValue("PatientName", "ROE^RICHARD"),), {b}),
        ((Wildcard("PatientName", "D?e^Jane"),), {a}),
        ((UIDList("PatientID", ("PAT-A", "PAT-C")),), {a, c}),
        ((UIDList("StudyInstanceUID", (b, c)),), {b, c}),
        ((Wildcard("ProtocolName", "BRAIN*"),), {b}),  # any tag keyword
        ((Wildcard("ContentSequence.TextValue", "*nodule*"),), {a}),  # inside a sequence
        ((SequenceMatch("ContentSequence", (SingleValue("ValueType", "TEXT"),
                                             Wildcard("TextValue", "small*"))),), {a}),  # PS3.4 C.2.2.2.6
        ((SequenceMatch("ContentSequence", (Wildcard("TextValue", "large*"),)),), set()),
        ((Universal("Modality"),), {a, b, c}),
        ((Wildcard("InstitutionName", "Doe*"),), set()),  # one attribute, not any
        ((SingleValue("Modality", "CT"), Range("StudyDate", "20240101", None)), {c}),  # AND
        ((SingleValue("InstitutionName", "General Hospital"), SingleValue("Modality", "SR")), {a}),
    ]
    for filters, expected in cases:
        result = await index.query(SearchRequest(filters=filters))
        assert set(studies(result)) == expected and result.total == len(expected), filters
    mixed = await index.query(SearchRequest(text="chest", filters=(Range("StudyDate", "20240101", None),)))
    assert studies(mixed) == [c]


async def test_query_sort_and_pagination(index: SearchIndex, corpus: Corpus) -> None:
    a, b, c = corpus.a, corpus.b, corpus.c
    by_date = await index.query(SearchRequest(sort=Sort("StudyDate", descending=True)))
    assert studies(by_date) == [c, b, a]
    assert studies(await index.query(SearchRequest(sort=Sort("StudyDate", descending=False)))) == [a, b, c]
    assert studies(await index.query(SearchRequest(sort=Sort("PatientName", descending=False)))) == [a, b, c]
    assert studies(await index.query(SearchRequest(sort=Sort("PatientName", descending=True)))) == [c, b, a]
    pages = [await index.query(SearchRequest(sort=Sort("StudyDate"), limit=2, offset=o)) for o in (0, 2, 4)]
    assert [studies(p) for p in pages] == [[c, b], [a], []]
    assert all(p.total == 3 and facet(p, "Modality") == [("CT", 2), ("MR", 1), ("SR", 1)] for p in pages)
    ranked = await index.query(SearchRequest(text="chest", level=IMAGE, limit=100))
    scores = [hit.score or 0.0 for hit in ranked.hits]
    assert ranked.total == 5 and scores == sorted(scores, reverse=True)


async def test_query_monthly_histogram(index: SearchIndex, corpus: Corpus) -> None:
    year = (Range("StudyDate", "20240101", "20241231"),)
    result = await index.query(SearchRequest(filters=year, date_interval=date_interval(year)))
    assert facet(result, "StudyDate") == [("2024-01", 1), ("2024-03", 1)]


async def test_query_hostile_input_is_plain_data(index: SearchIndex, corpus: Corpus) -> None:
    texts = [*HOSTILE, "x" * 1024, "Müller ñ 中文 \U0001f600", "\\", "{", "a:b", 'NEAR("doe" "jane")']
    for text in texts:
        result = await index.query(SearchRequest(text=text, level=IMAGE))
        assert result.total == len(result.hits) <= 7, text
    # Filter values are data too: no LIKE/GLOB/wildcard-query metacharacter but * and ? matches.
    for value in [v[:MAX_VALUE_CHARS] for v in texts if v.strip("*")] + ["[D]oe", "D_e", "%", "_", "\\"]:
        for matcher in (SingleValue("PatientName", value), Wildcard("PatientName", value + "*"),
                        SingleValue("ContentSequence.TextValue", value)):
            assert (await index.query(SearchRequest(filters=(matcher,)))).total == 0, matcher
        await index.query(SearchRequest(filters=(Range("StudyDate", value, value),)))  # no error
    assert (await index.query(SearchRequest(filters=(Wildcard("PatientName", "[D]oe*"),)))).total == 0
    assert (await index.query(SearchRequest(text="doe OR smith"))).total == 0  # OR is a term
    assert await index.count() == 7  # nothing dropped or altered


async def test_fts5_schema_1_file_is_upgraded_in_place(tmp_path: Path) -> None:
    """A search.db written by schema 1 gains the facet columns; its rows need no rewrite."""
    path = tmp_path / "search.db"
    con = sqlite3.connect(path, isolation_level=None)
    for statement in fts5_search._SCHEMA:  # schema 1 is the base tables
        con.execute(statement)
    con.execute("INSERT INTO search_schema_version VALUES (1)")
    old = make_doc(tmp_path, patient_name="Old^Row", study_date="20200202")
    con.execute(  # written as schema 1 wrote it
        "INSERT INTO search_docs (rowid, sop_instance_uid, study_uid, series_uid, fields, indexed_at) "
        "VALUES (1, ?, ?, ?, ?, ?)",
        (old.sop_instance_uid, old.study_uid, old.series_uid, json.dumps(old.fields), old.indexed_at),
    )
    con.execute("INSERT INTO search_fts (rowid, text) VALUES (1, ?)", (old.text,))
    con.close()
    index = Fts5Search(path)
    try:
        await index.migrate()
        await index.migrate()
        result = await index.query(SearchRequest(text="old"))
        assert studies(result) == [old.study_uid]
        assert facet(result, "StudyDate") == [("2020", 1)] and facet(result, "Modality") == [("CT", 1)]
        listed = await index.query(SearchRequest(filters=(Wildcard("PatientName", "old*"),)))  # study groups
        assert studies(listed) == [old.study_uid] and listed.hits[0].instances == 1
        assert listed.hits[0].attributes["StudyDate"] == "20200202"
    finally:
        await index.close()


async def test_opensearch_schema_1_index_is_upgraded_in_place(tmp_path: Path, unique: str) -> None:
    """migrate() adds the facet fields to an index made by schema 1 (idempotent); old documents
    stay searchable, new ones get facets."""
    index = OpenSearchIndex(service_setting("ARCHIVE_SEARCH"), index=unique)
    v1 = {k: v for k, v in opensearch_search.MAPPINGS["properties"].items() if k not in FACET_PROPERTIES}
    old = make_doc(tmp_path, patient_name="Old^Doc")
    try:
        await index._client.indices.create(index=unique, body={
            "settings": {"analysis": opensearch_query.ANALYSIS},
            "mappings": {"dynamic": "strict", "properties": v1},
        })
        source = {k: v for k, v in opensearch_search._source(old).items() if k in v1}
        await index._client.index(index=unique, id=old.sop_instance_uid, body=source, refresh=True)
        await index.migrate()
        await index.migrate()
        mapping = await index._client.indices.get_mapping(index=unique)
        assert set(FACET_PROPERTIES) <= set(mapping[unique]["mappings"]["properties"])
        new = make_doc(tmp_path, patient_name="New^Doc", modality="MR")
        await index.upsert([new])
        result = await index.query(SearchRequest(text="doc", filters=(Wildcard("PatientName", "*^doc"),)))
        assert set(studies(result)) == {old.study_uid, new.study_uid}
        assert facet(result, "Modality") == [("MR", 1)]  # the old document until it is indexed again
    finally:
        await index.drop()
        await index.close()


async def test_opensearch_roles_migrating_at_once(unique: str) -> None:
    """Indexer and query processes start together: one creates the index while the other
    finds it before it can be searched (503 for a moment) and must wait, not fail."""
    first = OpenSearchIndex(service_setting("ARCHIVE_SEARCH"), index=unique)
    second = OpenSearchIndex(service_setting("ARCHIVE_SEARCH"), index=unique)
    try:
        await first.migrate()
        await first.drop()
        # what a concurrent process leaves: the index exists, its shard is not started yet
        # (held unallocated here, released half a second later)
        client = first._client
        await client.indices.create(index=unique, body={"settings": {"index.routing.allocation.enable": "none"}},
                                    params={"wait_for_active_shards": "0"})

        async def release() -> None:
            await asyncio.sleep(0.5)
            await client.indices.put_settings(index=unique, body={"index.routing.allocation.enable": "all"})

        releasing = asyncio.create_task(release())
        await second.migrate()
        await releasing
        assert await second.count() == 0
    finally:
        await first.drop()
        await first.close()
        await second.close()


async def test_delete_removes_documents_at_once(index: SearchIndex, tmp_path: Path) -> None:
    docs = [make_doc(tmp_path, patient_name="Gone^Soon"), make_doc(tmp_path, patient_name="Gone^Soon"),
            make_doc(tmp_path, patient_name="Stays^Here")]
    await index.upsert(docs)
    assert len(await index.search("gone")) == 2
    await index.delete([docs[0].sop_instance_uid, new_uid()])  # an unknown id is no error
    assert [h.sop_instance_uid for h in await index.search("gone")] == [docs[1].sop_instance_uid]
    assert await index.count() == 2
    assert {uid async for uid in index.ids()} == {docs[1].sop_instance_uid, docs[2].sop_instance_uid}
    await index.delete([docs[1].sop_instance_uid])
    assert await index.search("gone") == []
    await index.delete([])
    await index.upsert([docs[0]])  # indexed again after its delete (a re-send)
    assert [h.sop_instance_uid for h in await index.search("gone")] == [docs[0].sop_instance_uid]


# --- SQLite: study groups answer study lists as the instances do ----------------------------------


CHOICES = {
    "PatientName": ["Doe^Jane", "DOE^JANE", "Müller^Jürgen", "Garcia^Ana", "山田^太郎", "Roe^Richard"],
    "PatientID": ["P1", "P2", "P3"], "StudyDate": ["20230510", "20240115", "20240302", "2024"],
    "Modality": ["CT", "MR", "SR", "PR"], "InstitutionName": ["General Hospital", "Saint Mary"],
    "BodyPartExamined": ["HEAD", "CHEST", ""], "StudyDescription": ["CT CHEST", "MR BRAIN"],
    "AccessionNumber": ["A1", "A2"], "ReferringPhysicianName": ["Who^Doctor", "House^Greg"],
    "ProtocolName": ["BRAIN ROUTINE", "LUNG"],  # not a group attribute
}  # fmt: skip


def random_values(rng: random.Random) -> dict[str, list[str]]:
    return {k: [rng.choice(v)] for k, v in CHOICES.items() if rng.random() < 0.95}


def random_document(rng: random.Random, series: list[tuple[str, str, dict[str, list[str]]]]) -> SearchDocument:
    """An instance of one of ``series`` (study, series, values): mostly its series' values, but now
    and then one that disagrees, is missing or has two values, as real data can."""
    study, serie, values = rng.choice(series)
    fields = {k: list(v) for k, v in values.items()}
    if rng.random() < 0.15:
        keyword = rng.choice(list(CHOICES))
        roll = rng.random()
        if roll < 0.3:
            fields.pop(keyword, None)
        elif roll < 0.5:
            fields[keyword] = rng.sample(CHOICES[keyword], 2)
        else:
            fields[keyword] = [rng.choice(CHOICES[keyword])]
    sop = new_uid()
    fields.update(StudyInstanceUID=[study], SeriesInstanceUID=[serie], SOPInstanceUID=[sop])
    text = " ".join(v for values in fields.values() for v in values)
    return SearchDocument(sop, study, serie, fields, text, 0.0)


def random_series(rng: random.Random, studies: int, per_study: int) -> list[tuple[str, str, dict[str, list[str]]]]:
    out = []
    for _ in range(studies):
        study, base = new_uid(), random_values(rng)
        for _ in range(rng.randint(1, per_study)):
            values = dict(base)
            values.update({k: [rng.choice(CHOICES[k])] for k in ("Modality", "BodyPartExamined", "ProtocolName")})
            out.append((study, new_uid(), values))
    return out


GROUP_REQUESTS: list[SearchRequest] = [
    SearchRequest(limit=100),
    SearchRequest(limit=3, offset=2, sort=Sort("StudyDate")),
    SearchRequest(limit=100, sort=Sort("StudyDate", descending=False)),
    SearchRequest(limit=100, sort=Sort("PatientName")),
    SearchRequest(limit=4, offset=1, sort=Sort("PatientName", descending=False)),
    SearchRequest(filters=(Wildcard("PatientName", "doe*"),), limit=100),
    SearchRequest(filters=(SingleValue("PatientName", "MULLER^JURGEN"),), limit=100),
    SearchRequest(filters=(SingleValue("Modality", "MR"),), limit=100, sort=Sort("PatientName")),
    SearchRequest(filters=(SingleValue("Modality", "CT"), SingleValue("BodyPartExamined", "HEAD")), limit=100),
    SearchRequest(filters=(UIDList("PatientID", ("P1", "P3")), Range("StudyDate", "20240101", None)), limit=100),
    SearchRequest(filters=(Range("StudyDate", None, "20231231"),), limit=100, date_interval="month"),
    SearchRequest(filters=(Wildcard("StudyDescription", "*BRAIN"), Wildcard("ReferringPhysicianName", "who*")),
                  limit=100),
    SearchRequest(filters=(SingleValue("AccessionNumber", "A2"), Universal("InstitutionName")), limit=100),
    SearchRequest(filters=(SingleValue("InstitutionName", "Saint Mary"),), facets=("Modality",), limit=100),
]


async def test_fts5_study_groups_answer_as_the_instances_do(tmp_path: Path) -> None:
    """Random instances (values that disagree within a study, several values, missing ones), updates
    that move an instance between studies, deletes: every study-list request gives the same result
    from the groups as from the instances, and the groups equal a rebuild from the documents."""
    rng = random.Random(20261206)
    index = Fts5Search(tmp_path / "search.db")
    await index.migrate()

    async def check(step: str) -> None:
        for request in GROUP_REQUESTS:
            assert fts5_search.fts5_query.by_groups(request, None)
            fast = await index._readers.run(index._query, request, None, True)
            slow = await index._readers.run(index._query, request, None, False)
            assert fast == slow, (step, request)
        kept, rebuilt, misplaced = await index._readers.run(lambda: (
            index._r().execute("SELECT study_uid, fields, n, rep FROM search_study_groups ORDER BY 1, 2").fetchall(),
            index._r().execute(f"SELECT study_uid, {fts5_search.GROUP_FIELDS} AS g, count(*), min(rowid) "
                               "FROM search_docs GROUP BY 1, 2 ORDER BY 1, 2").fetchall(),
            index._r().execute(
                "SELECT count(*) FROM search_docs AS d LEFT JOIN search_study_groups AS g ON g.rowid = d.grp "
                f"WHERE g.rowid IS NULL OR g.study_uid != d.study_uid OR g.fields != "
                f"{fts5_search.group_fields('d.fields')}").fetchone()[0],
        ))
        assert kept == rebuilt and misplaced == 0, step

    try:
        series = random_series(rng, studies=12, per_study=3)
        docs = [random_document(rng, series) for _ in range(400)]
        for start in range(0, len(docs), 37):
            await index.upsert(docs[start:start + 37])
        await check("loaded")
        assert (await index.query(GROUP_REQUESTS[0])).total == 12
        moved = [dataclasses.replace(random_document(rng, series), sop_instance_uid=doc.sop_instance_uid)
                 for doc in rng.sample(docs, 60)]  # new values, maybe another study
        await index.upsert(moved + moved[:5])  # and the same uid twice in one batch
        await index.upsert(moved[5:10])  # unchanged: no group moves
        await check("updated")
        gone = [uid for (uid,) in await index._readers.run(lambda: index._r().execute(
            "SELECT d.sop_instance_uid FROM search_study_groups AS g JOIN search_docs AS d ON d.rowid = g.rep"
        ).fetchall())]  # the representatives: their groups must find the next one
        await index.delete(gone[::2] + [doc.sop_instance_uid for doc in rng.sample(docs, 80)])
        await check("deleted")
        # Groups out of step (each study's first document removed behind the adapter's back): the
        # counts are off, but every study is still listed, none fails for want of a document.
        await index._writer.run(lambda: index._w().execute(
            "DELETE FROM search_docs WHERE rowid IN (SELECT min(rep) FROM search_study_groups GROUP BY study_uid)"))
        everything = await index.query(GROUP_REQUESTS[0])
        from_documents = await index._readers.run(index._query, GROUP_REQUESTS[0], None, False)
        assert studies(everything) == studies(from_documents) and everything.total == from_documents.total
        await index.delete([doc.sop_instance_uid for doc in docs])
        await index._writer.run(lambda: index._w().execute("DELETE FROM search_study_groups"))
        await check("empty")
        assert (await index.query(GROUP_REQUESTS[0])).total == 0
    finally:
        await index.close()


async def test_fts5_study_group_keeping_reads_no_document_json(tmp_path: Path) -> None:
    """A group whose representative leaves finds the next one by index (a corrected name re-sent
    for a 20,000-instance study must not read the study's documents once a document), and an
    upsert finds the document it replaces by index."""
    index = Fts5Search(tmp_path / "search.db")
    await index.migrate()
    try:
        plan = await index._readers.run(lambda: index._r().execute(
            f"EXPLAIN QUERY PLAN {fts5_search.NEXT_REP}", (1,)).fetchall())
        assert any("USING COVERING INDEX search_docs_grp" in str(row) for row in plan), plan
        upsert_plans = await index._readers.run(lambda: index._r().execute(
            "EXPLAIN QUERY PLAN SELECT grp FROM search_docs WHERE sop_instance_uid = ?", ("x",)).fetchall())
        assert any("USING INDEX" in str(row) for row in upsert_plans), upsert_plans
    finally:
        await index.close()


def test_fts5_study_lists_go_to_the_groups_only_when_they_can() -> None:
    by_groups = fts5_search.fts5_query.by_groups
    assert all(by_groups(request, None) for request in GROUP_REQUESTS)
    assert not by_groups(SearchRequest(), '"doe"')  # free text: per instance
    assert not by_groups(SearchRequest(level=SERIES), None)
    assert not by_groups(SearchRequest(filters=(SingleValue("ProtocolName", "LUNG"),)), None)
    assert not by_groups(SearchRequest(filters=(SingleValue("SeriesInstanceUID", "1.2"),)), None)
    assert not by_groups(SearchRequest(filters=(SequenceMatch("ContentSequence", (
        SingleValue("ValueType", "TEXT"),)),)), None)


# --- OpenSearch: study documents answer study lists as the instances do ---------------------------


async def study_documents(index: OpenSearchIndex) -> dict[str, tuple[int, list[str]]]:
    """Every listed study document (of a study with instances): its instance count and its
    combinations (canonical JSON, sorted)."""
    result = await index._client.search(index=index.studies.index, body={"size": 10_000, "query": LISTED})
    return {hit["_id"]: (hit["_source"]["instances"],
                         sorted(json.dumps(c, sort_keys=True) for c in hit["_source"]["combos"]))
            for hit in result["hits"]["hits"]}


async def recomputed(index: OpenSearchIndex) -> dict[str, tuple[int, list[str]]]:
    """What the study documents must be: recomputed from the instance documents as they are now."""
    every = await index._client.search(index=index.index, body={
        "size": 0, "aggs": {"s": {"terms": {"field": "study_uid", "size": 10_000}}}})
    studies_now = [b["key"] for b in every["aggregations"]["s"]["buckets"]]
    combos = await index.studies._combinations(studies_now) if studies_now else {}
    return {study: (sum(c["n"] for c in entries), sorted(json.dumps(c, sort_keys=True) for c in entries))
            for study, entries in combos.items()}


async def same_answers(index: OpenSearchIndex, step: str) -> None:
    assert await index.studies.ready(index._older_documents), step  # the study path is the one taken
    for request in GROUP_REQUESTS:
        fast = await index.query(request)
        slow = await index._query_instances(request, [])
        assert fast == slow, (step, request)
    assert await study_documents(index) == await recomputed(index), step


@contextlib.asynccontextmanager
async def random_index(unique: str, seed: int, studies: int, count: int) -> AsyncIterator[
        tuple[OpenSearchIndex, random.Random, list[tuple[str, str, dict[str, list[str]]]], list[SearchDocument]]]:
    """An OpenSearch index of ``count`` random instances in ``studies`` studies (3 series each),
    written in batches of 37; dropped afterwards."""
    rng = random.Random(seed)
    index = OpenSearchIndex(service_setting("ARCHIVE_SEARCH"), index=unique)
    try:
        await index.migrate()
        series = random_series(rng, studies=studies, per_study=3)
        docs = [random_document(rng, series) for _ in range(count)]
        for start in range(0, len(docs), 37):
            await index.upsert(docs[start:start + 37])
        yield index, rng, series, docs
    finally:
        await index.drop()
        await index.close()


async def test_opensearch_study_documents_answer_as_the_instances_do(tmp_path: Path, unique: str) -> None:
    """Random instances (values that disagree within a study, several values, missing ones), updates
    that move an instance between studies, deletes: every study-list request gives the same result
    from the study documents as from the instance documents, and the study documents equal a
    recomputation from the instance documents."""
    async with random_index(unique, 20261207, studies=12, count=400) as (index, rng, series, docs):
        await same_answers(index, "loaded")
        assert (await index.query(GROUP_REQUESTS[0])).total == 12
        moved = [dataclasses.replace(random_document(rng, series), sop_instance_uid=doc.sop_instance_uid)
                 for doc in rng.sample(docs, 60)]  # new values, maybe another study
        await index.upsert(moved + moved[:5])  # and the same uid twice in one batch
        await same_answers(index, "updated")
        now = {doc.sop_instance_uid: doc for doc in docs + moved}
        first_study = {uid for uid, doc in now.items() if doc.study_uid == series[0][0]}
        await index.delete(sorted(first_study) + [doc.sop_instance_uid for doc in rng.sample(docs, 80)])
        await same_answers(index, "deleted")
        assert series[0][0] not in await study_documents(index)  # a study without instances is not listed
        kept = await index._client.get(index=index.studies.index, id=series[0][0])
        assert kept["_source"]["instances"] == 0 and kept["_source"]["combos"] == []  # but keeps its document
        # a study document a failed write left behind (its instances removed around the adapter): the
        # list leaves the study out and recomputes its document
        listed = await index.query(GROUP_REQUESTS[0])
        behind = listed.hits[0].study_uid
        await index._client.delete_by_query(index=unique, body={"query": {"term": {"study_uid": behind}}},
                                            refresh=True)
        assert behind in await study_documents(index)
        assert behind not in studies(await index.query(GROUP_REQUESTS[0]))
        assert behind not in await study_documents(index)
        await same_answers(index, "healed")
        await index.delete([doc.sop_instance_uid for doc in docs])
        assert await study_documents(index) == {} and (await index.query(GROUP_REQUESTS[0])).total == 0


async def test_opensearch_a_retried_delete_recomputes_the_studies_its_caller_names(unique: str) -> None:
    """A delete whose study recomputation failed (the instances gone, an outage longer than its retry)
    leaves study documents behind; retried, it finds no documents and so no studies: the caller's
    study UIDs (the catalog knows them: DeleteService.remove_leftovers) are recomputed."""
    async with random_index(unique, 11, studies=3, count=60) as (index, rng, series, docs):
        study = docs[0].study_uid
        gone = sorted({doc.sop_instance_uid for doc in docs if doc.study_uid == study})[:4]
        working = index._refresh_studies

        async def down(studies: set[str]) -> None:
            raise BackendUnavailable("search", "study index unavailable")

        index._refresh_studies = down  # type: ignore[method-assign]
        with pytest.raises(BackendUnavailable):
            await index.delete(gone)
        index._refresh_studies = working  # type: ignore[method-assign]
        assert await study_documents(index) != await recomputed(index)  # left behind its instances
        await index.delete(gone)  # retried without the studies: none found
        assert await study_documents(index) != await recomputed(index)
        await index.delete(gone, {study})
        await same_answers(index, "retried with its studies")


async def test_opensearch_study_pages_by_date_with_studies_without_one(unique: str) -> None:
    """Studies none of whose instances has a StudyDate sort last either way, on every page: a page
    ending in one made OpenSearch fail (it formats the last sort value, and "missing" was Long.MIN)."""
    async with random_index(unique, 3, studies=8, count=200) as (index, rng, series, docs):
        dateless = sorted({doc.study_uid for doc in docs})[:2]
        await index.upsert([dataclasses.replace(doc, fields={k: v for k, v in doc.fields.items() if k != "StudyDate"})
                            for doc in docs if doc.study_uid in dateless])
        for descending in (True, False):
            for limit in (1, 2, 3):
                for offset in range(0, 9):
                    for filters in ((), (SingleValue("Modality", "CT"),)):
                        request = SearchRequest(filters=filters, limit=limit, offset=offset,
                                                sort=Sort("StudyDate", descending=descending))
                        assert await index.query(request) == await index._query_instances(request, []), request
        dated = {doc.study_uid for doc in docs  # a first StudyDate that is a date ("2024" is not)
                 if doc.study_uid not in dateless and len((doc.fields.get("StudyDate") or [""])[0]) == 8}
        for descending in (True, False):
            order = [hit.study_uid for hit in (await index.query(SearchRequest(
                limit=100, sort=Sort("StudyDate", descending=descending)))).hits]
            assert set(order[:len(dated)]) == dated and set(dateless) <= set(order[len(dated):])


async def test_opensearch_a_study_index_of_an_older_schema_waits_for_a_rebuild(unique: str) -> None:
    """A study index made by the schema before (no date_key) gets the new field at migrate and is not
    read until a rebuild has written every study document again."""
    async with random_index(unique, 9, studies=4, count=40) as (index, rng, series, docs):
        studies = index.studies
        await index._client.indices.put_mapping(index=studies.index, body={"_meta": {"schema_version": 1,
                                                                                      "complete": True}})
        await index.migrate()
        meta = (await index._client.indices.get_mapping(index=studies.index))[studies.index]["mappings"]
        assert meta["_meta"] == {"schema_version": STUDY_SCHEMA, "complete": False, "text_complete": False}
        assert "date_key" in meta["properties"]["combos"]["properties"]
        studies._next_check = 0.0
        assert not await studies.ready(index._older_documents)
        await index.rebuild_study_documents()
        assert await studies.ready(index._older_documents)
        await same_answers(index, "rebuilt")


async def test_opensearch_verify_finds_the_study_documents_behind_and_repairs_them(unique: str) -> None:
    """Study documents left behind their instances (instances removed around the adapter, a document
    overwritten with wrong counts, one missing): verify names exactly those studies; repair fixes them."""
    async with random_index(unique, 5, studies=6, count=120) as (index, rng, series, docs):
        assert await index.verify_study_documents(repair=False) == []
        studies_now = sorted({doc.study_uid for doc in docs})
        emptied, wrong, missing = studies_now[:3]
        await index._client.delete_by_query(index=unique, body={"query": {"term": {"study_uid": emptied}}},
                                            refresh=True)
        document = (await index._client.get(index=index.studies.index, id=wrong))["_source"]
        await index._client.index(index=index.studies.index, id=wrong, refresh=True,
                                  body={**document, "instances": document["instances"] + 1})
        await index._client.delete(index=index.studies.index, id=missing, refresh=True)
        assert sorted(await index.verify_study_documents(repair=False)) == sorted([emptied, wrong, missing])
        assert sorted(await index.verify_study_documents(repair=True)) == sorted([emptied, wrong, missing])
        assert await index.verify_study_documents(repair=False) == []
        await same_answers(index, "repaired")


async def test_opensearch_study_documents_under_concurrent_writers(tmp_path: Path, unique: str) -> None:
    """Four writers (as four indexers, each its own client) upsert, move and delete instances of the
    same few studies at once: no study document is left behind its instances."""
    rng = random.Random(7)
    url = service_setting("ARCHIVE_SEARCH")
    writers = [OpenSearchIndex(url, index=unique) for _ in range(4)]
    try:
        await writers[0].migrate()
        series = random_series(rng, studies=3, per_study=3)
        pool = [random_document(rng, series) for _ in range(240)]

        async def write(writer: OpenSearchIndex, seed: int) -> None:
            mine = random.Random(seed)
            for _ in range(12):
                roll = mine.random()
                if roll < 0.6:
                    await writer.upsert(mine.sample(pool, 12))
                elif roll < 0.85:  # the same instances with new values, maybe in another study
                    await writer.upsert([dataclasses.replace(random_document(mine, series),
                                                             sop_instance_uid=doc.sop_instance_uid)
                                         for doc in mine.sample(pool, 8)])
                else:
                    await writer.delete([doc.sop_instance_uid for doc in mine.sample(pool, 10)])

        await asyncio.gather(*(write(writer, seed) for seed, writer in enumerate(writers)))
        await same_answers(writers[0], "after concurrent writes")
    finally:
        await writers[0].drop()
        for writer in writers:
            await writer.close()


async def test_opensearch_study_path_waits_for_a_complete_study_index(tmp_path: Path, unique: str) -> None:
    """An instance index filled before the study index existed (an upgrade): study lists read the
    instance documents until the study documents are rebuilt; documents of an older schema keep
    them so after a rebuild too, until they are indexed again."""
    rng = random.Random(11)
    index = OpenSearchIndex(service_setting("ARCHIVE_SEARCH"), index=unique)
    try:
        await index.migrate()
        series = random_series(rng, studies=5, per_study=2)
        docs = [random_document(rng, series) for _ in range(60)]
        await index._upsert(docs)  # around the study documents, as a release before them wrote
        old = dataclasses.replace(random_document(rng, series))
        source = {k: v for k, v in opensearch_search._source(old).items() if k not in ("group_key", "schema_version")}
        await index._client.index(index=unique, id=old.sop_instance_uid, body=source, refresh=True)
        await index.studies.drop()
        await index.migrate()  # the study index made now, beside 61 instances: not complete
        later = OpenSearchIndex(service_setting("ARCHIVE_SEARCH"), index=unique)
        try:
            assert not await later.studies.ready(later._older_documents)
            listed = await later.query(GROUP_REQUESTS[0])
            assert listed == await later._query_instances(GROUP_REQUESTS[0], []) and listed.total == 5
            assert await later.rebuild_study_documents() == 5
            assert not await later.studies.ready(later._older_documents)  # the older document
            await later.upsert([old])  # indexed again
            assert await later.rebuild_study_documents() == 5
            await same_answers(later, "rebuilt")
            # a role of the release before writes again (a rolling upgrade): the next look turns the path off
            await later._client.index(index=unique, id=old.sop_instance_uid, body=source, refresh=True)
            later.studies._next_check = 0.0
            assert not await later.studies.ready(later._older_documents)
        finally:
            await later.close()
    finally:
        await index.drop()
        await index.close()


def test_group_key_stays_a_doc_value() -> None:
    """A combination key fits Lucene's 32,766 bytes whatever the values (many long values are cut)."""
    from archive.adapters.opensearch_studies import combination, group_key

    fields = {"PatientName": ["Doe^Jane"], "StudyDescription": ["é" * 5000] * 40, "Modality": ["CT", "PT"]}
    entry = combination(group_key(fields), 3)
    assert entry["PatientName"] == ["Doe^Jane"] and entry["Modality"] == ["CT", "PT"] and entry["n"] == 3
    assert entry["modality"] == "CT" and entry["patient_name"] == ["DOE^JANE"]
    assert 10 <= len(entry["StudyDescription"]) < 16 and set(entry["StudyDescription"]) == {"é" * 1024}
    escaped = {keyword: ["\x01" * 300] * 2 for keyword in STUDY_GROUP_ATTRIBUTES}  # 6 bytes a character in JSON
    key = group_key(escaped)
    assert 20_000 < len(key.encode()) <= 32_766
    assert sorted(len(values) for values in json.loads(key)) == [1] * 4 + [2] * 6  # the longest lose one


def test_reindex_rebuilds_the_study_documents_of_opensearch_only(tmp_path: Path) -> None:
    """`dicom-archive reindex` ends with a rebuild of the study documents where the index keeps them."""
    from archive.core.ports import StudyDocumentsSearch

    assert isinstance(OpenSearchIndex("http://127.0.0.1:1", index="x"), StudyDocumentsSearch)
    assert not isinstance(Fts5Search(tmp_path / "search.db"), StudyDocumentsSearch)
