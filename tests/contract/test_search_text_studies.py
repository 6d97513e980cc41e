"""OpenSearch: free text on a study list from the study documents' common text answers as the instance
documents do (archive.adapters.opensearch_common, opensearch_studies, opensearch_search._query_studies).

Every request is answered both ways, through ``query`` and by the instance documents alone, and the
two must agree on everything but the scores (and, for a relevance order, the order): the study
path must be taken where every matching study matches with all of its instances, and give way
where one does not.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import random
from collections.abc import AsyncIterator

from archive.adapters import opensearch_query
from archive.adapters.opensearch_common import common_lines
from archive.adapters.opensearch_query import text_clause
from archive.adapters.opensearch_search import OpenSearchIndex
from archive.adapters.opensearch_studies import COMMON_FIELDS, STUDY_MAPPINGS
from archive.core.models import SearchDocument
from archive.core.query import Range, SingleValue, UIDList, Universal, Wildcard
from archive.core.search import SearchRequest, SearchResult, Sort, query_terms
from tests.conftest import service_setting
from tests.factories import new_uid

NAMES = ["Doe^Jane", "Müller^Jürgen", "Garcia^Ana", "Roe^Richard", "Doe^John"]
DESCRIPTIONS = ["THORAX SCREENING", "NEURO FOLLOWUP", "WRIST TRAUMA"]
PROTOCOLS = ["LUNG", "BRAIN ROUTINE", "HAND PA"]


def corpus(rng: random.Random, studies: int) -> list[SearchDocument]:
    """Studies whose patient and study values every instance has, series values per series, and a
    comment some instances have: text made of the values as flatten makes it (one per line). The
    first study (accession A0) has what PARTIAL asks for in some of its instances only; the second
    is a Doe too."""
    study = new_uid()
    base = {"PatientName": ["Doe^Jane"], "PatientID": ["P0"], "StudyDate": ["20240115"],
            "StudyDescription": ["NEURO FOLLOWUP"], "AccessionNumber": ["A0"], "InstitutionName": ["Saint Mary"]}
    docs = []
    for protocol in ("BRAIN ROUTINE", "LUNG"):
        series = new_uid()
        values = {**base, "Modality": ["MR"], "BodyPartExamined": ["HEAD"], "ProtocolName": [protocol]}
        docs += [instance(study, series, {**values, "InstanceNumber": [str(n)]}, rng, comment=n == 0)
                 for n in range(3)]
    for n in range(1, studies):
        study = new_uid()
        name = "Doe^John" if n == 1 else rng.choice(NAMES)
        base = {"PatientName": [name], "PatientID": [f"P{n % 4}"],
                "StudyDate": [rng.choice(["20230510", "20240115", "20240302"])],
                "StudyDescription": [rng.choice(DESCRIPTIONS)], "AccessionNumber": [f"A{n}"],
                "InstitutionName": [rng.choice(["General Hospital", "Saint Mary"])]}
        for _ in range(rng.randint(1, 3)):
            series = new_uid()
            values = {**base, "Modality": [rng.choice(["CT", "MR", "CR"])],
                      "BodyPartExamined": [rng.choice(["CHEST", "HEAD", "HAND"])],
                      "ProtocolName": [rng.choice(PROTOCOLS)]}
            for number in range(rng.randint(1, 5)):
                docs.append(instance(study, series, {**values, "InstanceNumber": [str(number)]}, rng))
    return docs


def instance(study: str, series: str, values: dict[str, list[str]], rng: random.Random,
             comment: bool = False) -> SearchDocument:
    sop = new_uid()
    fields = {**values, "StudyInstanceUID": [study], "SeriesInstanceUID": [series], "SOPInstanceUID": [sop]}
    if comment or rng.random() < 0.1:
        fields["ImageComments"] = ["motion artefact"]
    text = "\n".join(v for vs in fields.values() for v in vs)
    return SearchDocument(sop, study, series, fields, text, 0.0)


FULL = [  # every matching study matches with all its instances: the study path answers
    SearchRequest(text="doe", limit=100),
    SearchRequest(text="muller", limit=100, sort=Sort("StudyDate")),
    SearchRequest(text="MÜLL*", limit=100, sort=Sort("PatientName", descending=False)),
    SearchRequest(text="doe hosp*", limit=100),
    SearchRequest(text="general", limit=3, offset=2, sort=Sort("StudyDate", descending=False)),
    SearchRequest(text="saint", limit=2, offset=1, sort=Sort("PatientName")),
    SearchRequest(text="doe", filters=(SingleValue("Modality", "CT"),), limit=100),
    SearchRequest(text="mary", filters=(Range("StudyDate", "20240101", None),), limit=100, date_interval="month"),
    SearchRequest(text="neuro", filters=(Wildcard("PatientName", "doe*"), Universal("InstitutionName")), limit=100),
    SearchRequest(text="general", filters=(UIDList("PatientID", ("P1", "P3")),), limit=100,
                  sort=Sort("StudyDate")),
    SearchRequest(text="nothing-like-this", limit=100),
]
PARTIAL = [  # some study has instances the text does not match: the instance documents answer
    SearchRequest(text="lung", limit=100),
    SearchRequest(text="artefact", limit=100, sort=Sort("StudyDate")),
    SearchRequest(text="doe routine", filters=(SingleValue("Modality", "MR"),), limit=100),
]


def unscored(result: SearchResult, relevance: bool) -> SearchResult:
    """The result without scores; in a relevance order, without the order."""
    hits = tuple(dataclasses.replace(hit, score=None) for hit in result.hits)
    if relevance:
        hits = tuple(sorted(hits, key=lambda hit: hit.study_uid))
    return dataclasses.replace(result, hits=hits)


async def agree(index: OpenSearchIndex, step: str, full: list[SearchRequest] = FULL,
                partial: list[SearchRequest] = PARTIAL, others: list[SearchRequest] | None = None) -> None:
    """Each request answers as the instance documents do; the study path answers ``full``, not
    ``partial`` (``others``: either)."""
    assert await index.studies.text_ready(index._older_documents), step
    for request in full + partial + (others or []):
        terms = query_terms(request.text)
        fast = await index.query(request)
        slow = await index._query_instances(request, terms)
        relevance = request.sort.key == "relevance"
        assert unscored(fast, relevance) == unscored(slow, relevance), (step, request)
        if fast.hits:
            assert all(hit.score is not None for hit in fast.hits), (step, request)
        took_studies = await index._query_studies(request, terms) is not None
        path = "study path" if took_studies else "instances"
        assert request in (others or []) or took_studies == (request in full), (step, request, path)
    await common_is_sound(index, step)


async def common_is_sound(index: OpenSearchIndex, step: str) -> None:
    """Every line of a complete common text is in every instance document of its study (matched as
    free text matches: the line's terms, each instance counted)."""
    found = await index._client.search(index=index.studies.index, body={
        "size": 10_000, "query": {"term": {"common_complete": True}}, "_source": ["common", "instances"]})
    checked = 0
    for hit in found["hits"]["hits"]:
        study, source = hit["_id"], hit["_source"]
        for line in common_lines(source.get("common", "")):
            terms = query_terms(line)
            if not terms:
                continue
            query = {"bool": {"must": [text_clause(terms)], "filter": [{"term": {"study_uid": study}}]}}
            matching = await index._client.count(index=index.index, body={"query": query})
            everything = await index._client.count(index=index.index, body={"query": {"term": {"study_uid": study}}})
            assert matching["count"] == everything["count"], (step, study, line)
            checked += 1
    assert checked or not found["hits"]["hits"], step


@contextlib.asynccontextmanager
async def text_index(unique: str, seed: int, studies: int) -> AsyncIterator[
        tuple[OpenSearchIndex, random.Random, list[SearchDocument]]]:
    rng = random.Random(seed)
    index = OpenSearchIndex(service_setting("ARCHIVE_SEARCH"), index=unique)
    try:
        await index.migrate()
        docs = corpus(rng, studies)
        rng.shuffle(docs)
        for start in range(0, len(docs), 23):
            await index.upsert(docs[start:start + 23])
        yield index, rng, docs
    finally:
        await index.drop()
        await index.close()


async def test_opensearch_free_text_study_lists_answer_as_the_instances_do(unique: str) -> None:
    """Loaded, then instances changed (a name corrected on one instance: its study's common text
    narrows), moved to another study, deleted: every request answers as the instance documents do,
    from the study documents exactly when every matching study matches whole."""
    async with text_index(unique, 20261207, studies=14) as (index, rng, docs):
        await agree(index, "loaded")
        # a corrected name on one instance of a "Doe" study: "doe" no longer matches all of that study
        doe = next(doc for doc in docs if doc.fields["PatientName"][0] == "Doe^John")
        corrected = dataclasses.replace(doe, fields={**doe.fields, "PatientName": ["Smith^Jane"]},
                                        text=doe.text.replace(doe.fields["PatientName"][0], "Smith^Jane"))
        await index.upsert([corrected])
        smith = SearchRequest(text="smith", limit=100)
        named = [r for r in FULL if "doe" in r.text or any(m.keyword == "PatientName" for m in r.filters)]
        unnamed = [r for r in FULL if r not in named]
        await agree(index, "corrected", full=unnamed, partial=[smith, FULL[0], *PARTIAL], others=named)
        # an instance moved to another study (the same SOP Instance UID, another study's values)
        target = next(doc for doc in docs if doc.study_uid != doe.study_uid)
        moved = dataclasses.replace(target, sop_instance_uid=docs[-1].sop_instance_uid, fields={
            **target.fields, "SOPInstanceUID": [docs[-1].sop_instance_uid]})
        await index.upsert([moved])
        await agree(index, "moved", full=unnamed, partial=[smith, FULL[0], *PARTIAL], others=named)
        # every instance of the corrected study deleted: the study leaves every list; its common stays
        gone = [doc.sop_instance_uid for doc in docs if doc.study_uid == doe.study_uid]
        await index.delete(gone)
        assert (await index.query(smith)).total == 0
        await agree(index, "deleted", full=[*unnamed, smith], others=named)  # none matches: answered at once


async def test_opensearch_a_rebuild_makes_the_common_text_from_the_instance_fields(unique: str) -> None:
    """Study documents without common text (made by a release before it) are filled by a rebuild from
    the instance documents' stored fields: free text then takes the study path."""
    async with text_index(unique, 5, studies=8) as (index, rng, docs):
        await index._client.update_by_query(index=index.studies.index, refresh=True, body={
            "script": {"source": "ctx._source.remove('common'); ctx._source.remove('common_complete')"}})
        index.studies._next_check = 0.0
        assert await index.studies.text_ready(index._older_documents)
        request = SearchRequest(text="doe", limit=100)
        assert await index._query_studies(request, ["doe"]) is None  # no common text: no study matches whole
        assert await index.query(request) == await index._query_instances(request, ["doe"])
        assert await index.rebuild_study_documents() == len({doc.study_uid for doc in docs})
        await agree(index, "rebuilt")


async def study_index_of_schema_2(index: OpenSearchIndex) -> None:
    """The study index made again as the release before made it: no analyser, no common text, complete."""
    await index.studies.drop()
    old = copy.deepcopy(STUDY_MAPPINGS)
    for name in COMMON_FIELDS:
        del old["properties"][name]
    await index._client.indices.create(index=index.studies.index, body={
        "settings": {"index": {"number_of_shards": 1, "number_of_replicas": 0,
                               "mapping.nested_objects.limit": 1_000_000}},
        "mappings": {**old, "_meta": {"schema_version": 2, "complete": True}}})


async def test_opensearch_the_text_path_waits_for_older_instance_documents_and_an_upgrade(unique: str) -> None:
    """A study index of the schema before (no analyser, no common text; study lists read it) beside
    instance documents of the schema before: migrate adds the analyser and fields, study lists keep
    reading it, free text does not, even after a rebuild, until every instance is indexed again."""
    async with text_index(unique, 9, studies=6) as (index, rng, docs):
        studies = index.studies
        await study_index_of_schema_2(index)
        await index._client.update_by_query(index=index.index, refresh=True, body={
            "script": {"source": "ctx._source.schema_version = 3"}})
        await studies._rounds(sorted({doc.study_uid for doc in docs}), studies._recompute)  # as the release before
        later = OpenSearchIndex(service_setting("ARCHIVE_SEARCH"), index=unique)
        try:
            await later.migrate()
            meta = (await later._client.indices.get_mapping(index=studies.index))[studies.index]["mappings"]
            assert meta["_meta"] == {"schema_version": 3, "complete": True, "text_complete": False}
            assert set(COMMON_FIELDS) <= set(meta["properties"])
            settings = await later._client.indices.get_settings(index=studies.index)
            assert "folded" in settings[studies.index]["settings"]["index"]["analysis"]["analyzer"]
            assert await later.studies.ready(later._older_documents)
            assert not await later.studies.text_ready(later._older_documents)
            request = SearchRequest(text="doe", limit=100)
            assert await later.query(request) == await later._query_instances(request, ["doe"])
            await later.rebuild_study_documents()
            later.studies._next_check = 0.0
            assert not await later.studies.text_ready(later._older_documents)  # the older instance documents
            for start in range(0, len(docs), 31):  # indexed again, as dicom-archive reindex does
                await later.upsert(docs[start:start + 31])
            await later.rebuild_study_documents()
            await agree(later, "reindexed")
        finally:
            await later.close()


async def test_opensearch_an_upgrade_cut_short_leaves_no_closed_study_index(unique: str) -> None:
    """A role that died after closing the study index and adding the analyser, before opening it
    again: the next migrate opens it and finishes the upgrade."""
    async with text_index(unique, 4, studies=3) as (index, rng, docs):
        studies = index.studies
        await study_index_of_schema_2(index)
        await index._client.indices.close(index=studies.index)
        await index._client.indices.put_settings(index=studies.index, body={"analysis": opensearch_query.ANALYSIS})
        later = OpenSearchIndex(service_setting("ARCHIVE_SEARCH"), index=unique)
        try:
            await later.migrate()
            meta = (await later._client.indices.get_mapping(index=studies.index))[studies.index]["mappings"]
            assert meta["_meta"]["schema_version"] == 3
            await later._client.count(index=studies.index)  # open: a closed index refuses this
            await later.upsert(docs[:5])  # its writes go through
        finally:
            await later.close()


async def test_opensearch_common_text_under_concurrent_writers(unique: str) -> None:
    """Four writers (four indexers, each its own client) write, correct and move instances of the same
    few studies at once: every complete common text stays within each instance's text, and free
    text answers as the instance documents do."""
    rng = random.Random(3)
    url = service_setting("ARCHIVE_SEARCH")
    writers = [OpenSearchIndex(url, index=unique) for _ in range(4)]
    try:
        await writers[0].migrate()
        pool = corpus(rng, 4)

        async def write(writer: OpenSearchIndex, seed: int) -> None:
            mine = random.Random(seed)
            for _ in range(10):
                roll = mine.random()
                if roll < 0.6:
                    await writer.upsert(mine.sample(pool, min(10, len(pool))))
                elif roll < 0.85:  # a name corrected, maybe in another study's instance
                    doc, name = mine.choice(pool), mine.choice(NAMES)
                    text = doc.text.replace(doc.fields["PatientName"][0], name)
                    changed = {**doc.fields, "PatientName": [name]}
                    await writer.upsert([dataclasses.replace(doc, fields=changed, text=text)])
                else:
                    await writer.delete([doc.sop_instance_uid for doc in mine.sample(pool, 5)])

        await asyncio.gather(*(write(writer, seed) for seed, writer in enumerate(writers)))
        await common_is_sound(writers[0], "after concurrent writes")
        for request in FULL + PARTIAL:
            fast = await writers[0].query(request)
            slow = await writers[0]._query_instances(request, query_terms(request.text))
            relevance = request.sort.key == "relevance"
            assert unscored(fast, relevance) == unscored(slow, relevance), request
    finally:
        await writers[0].drop()
        for writer in writers:
            await writer.close()
