"""The JSON search API: parameter parsing, 400s, hostile input, the OpenAPI document.

Served by a real aiohttp server over the embedded FTS5 index.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from openapi_spec_validator import validate

from archive.adapters.fts5_search import Fts5Search
from archive.adapters.sqlite_catalog import SqliteCatalog
from archive.core.flatten import flatten
from archive.core.levels import Level
from archive.core.query import Range, SequenceMatch, SingleValue, UIDList, Universal, Wildcard
from archive.core.search import Sort
from archive.query.openapi import spec
from archive.query.routes import add_routes
from archive.query.search.api import BadParameter, parse
from archive.web import base_app
from tests.factories import make_ct, make_message, new_uid

STUDY_A, STUDY_B = new_uid(), new_uid()


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[TestClient]:
    index = Fts5Search(tmp_path / "search.db")
    catalog = SqliteCatalog(tmp_path / "catalog.db")
    await index.migrate()
    await catalog.migrate()
    docs = []
    for i in range(2):
        ds = make_ct(study_uid=STUDY_A, patient_id="P-A", patient_name="Doe^Jane", study_date="20240110",
                     instance_number=i, seed=i)
        ds.ProtocolName = "LUNG <b>SCREEN</b>"
        docs.append(flatten(make_message(ds, tmp_path)))
    ds = make_ct(study_uid=STUDY_B, patient_id="P-B", patient_name="Roe^Anna", study_date="20221201", modality="MR")
    docs.append(flatten(make_message(ds, tmp_path)))
    await index.upsert(docs)
    app = base_app([catalog, index])
    add_routes(app, catalog, 100, index)
    async with TestClient(TestServer(app)) as test_client:
        yield test_client
    await index.close()
    await catalog.close()


async def get(client: TestClient, query: str | dict[str, str], status: int = 200) -> Any:
    response = await client.get("/api/search", params=query) if isinstance(query, dict) else \
        await client.get(f"/api/search{query}")
    body = await response.json()
    assert response.status == status, body
    return body


def test_parse_into_the_query_model() -> None:
    request = parse([
        ("q", "lung nodule"), ("level", "series"), ("limit", "5"), ("offset", "10"), ("sort", "-PatientName"),
        ("PatientName", "doe*"), ("PatientID", "P-1"), ("StudyDate", "20240101-"), ("Modality", "CT\\MR"),
        ("StudyInstanceUID", "1.2.3,1.2.4"), ("BodyPartExamined", ""), ("00181030", "LUNG*"),
        ("ContentSequence.TextValue", "*nodule*"), ("facets", "Modality,StudyDate"),
    ])
    assert request.text == "lung nodule" and request.level is Level.SERIES
    assert (request.limit, request.offset, request.sort) == (5, 10, Sort("PatientName", True))
    assert request.filters == (
        Wildcard("PatientName", "doe*"), SingleValue("PatientID", "P-1"), Range("StudyDate", "20240101", None),
        UIDList("Modality", ("CT", "MR")), UIDList("StudyInstanceUID", ("1.2.3", "1.2.4")),
        Universal("BodyPartExamined"), Wildcard("ProtocolName", "LUNG*"),
        SequenceMatch("ContentSequence", (Wildcard("TextValue", "*nodule*"),)),
    )
    assert request.facets == ("Modality", "StudyDate")
    assert parse([]).sort == Sort("StudyDate", True)  # newest first without free text
    assert parse([("q", "x")]).sort == Sort("relevance", True)
    assert parse([("limit", "100000")]).limit == 100  # lowered to the maximum
    assert parse([("StudyDate", "20240101-20240630")]).date_interval == "month"
    assert parse([("StudyDate", "20200101-20240630")]).date_interval == "year"
    assert parse([("facets", "")]).facets == ()


@pytest.mark.parametrize(("params", "parameter"), [
    ([("Foo", "1")], "Foo"),
    ([("patient", "x")], "patient"),
    ([("ContentSequence.Nope", "x")], "ContentSequence.Nope"),
    ([("StudyDate", "2024")], "StudyDate"),
    ([("StudyDate", "20240101-2024")], "StudyDate"),
    ([("StudyDate", "yesterday")], "StudyDate"),
    ([("StudyDate", "-")], "StudyDate"),
    ([("PatientID", "a\x00b")], "PatientID"),
    ([("PatientID", "x" * 257)], "PatientID"),
    ([("level", "patient")], "level"),
    ([("limit", "ten")], "limit"),
    ([("limit", "0")], "limit"),
    ([("offset", "-1")], "offset"),
    ([("offset", "9950"), ("limit", "100")], "offset"),
    ([("sort", "Modality")], "sort"),
    ([("sort", "")], "sort"),  # schemathesis: an empty sort was the default, the document's enum has no ""
    ([("", "x")], ""),  # fuzzing: pydicom's tag_for_keyword("") is a retired element's tag
    ([("PatientName.", "x")], "PatientName."),
    ([("StudyDate", "٢٠٢٤٠١٠١")], "StudyDate"),
    ([("limit", "٥")], "limit"),
    ([("limit", "1_0")], "limit"),
    ([("facets", "Modality,PatientID")], "facets"),
    ([("q", "x" * 1025)], "q"),
    ([("q", "doe\x00jane")], "q"),
    ([("q", "a"), ("q", "b")], "q"),
])
def test_malformed_parameters_are_named(params: list[tuple[str, str]], parameter: str) -> None:
    with pytest.raises(BadParameter) as info:
        parse(params)
    assert info.value.parameter == parameter
    assert str(info.value).startswith(f"{parameter}: ")


async def test_search_round_trip(client: TestClient) -> None:
    body = await get(client, "?q=lung%20screen")
    assert (body["level"], body["total"], body["sort"], body["offset"], body["limit"]) == ("study", 1, "relevance", 0, 20)
    hit = body["hits"][0]
    assert hit["StudyInstanceUID"] == STUDY_A and "SeriesInstanceUID" not in hit
    assert hit["instances"] == 2 and hit["modalities"] == ["CT"] and hit["score"] > 0
    assert hit["attributes"]["PatientID"] == "P-A" and hit["attributes"]["StudyDate"] == "20240110"
    # fragments are HTML-escaped; only our <em> marks are markup
    assert {"field": "ProtocolName", "fragments": ["<em>LUNG</em> &lt;b&gt;<em>SCREEN</em>&lt;/b&gt;"]} in hit["highlights"]
    assert body["facets"]["Modality"] == [{"value": "CT", "count": 1}]
    everything = await get(client, "?level=instance&sort=StudyDate")
    assert everything["total"] == 3 and everything["sort"] == "StudyDate"
    assert [h["attributes"]["StudyDate"] for h in everything["hits"]] == ["20221201", "20240110", "20240110"]
    assert all("SOPInstanceUID" in h and h["score"] is None for h in everything["hits"])
    assert everything["facets"]["StudyDate"] == [{"value": "2022", "count": 1}, {"value": "2024", "count": 2}]
    filtered = await get(client, {"PatientName": "roe*", "StudyDate": "-20231231", "Modality": "MR"})
    assert [h["StudyInstanceUID"] for h in filtered["hits"]] == [STUDY_B]
    assert (await get(client, {"limit": "1", "offset": "1", "sort": "-StudyDate"}))["hits"][0]["StudyInstanceUID"] == STUDY_B


async def test_bad_request_is_400_json_naming_the_parameter(client: TestClient) -> None:
    body = await get(client, {"Modalty": "CT"}, 400)
    assert body["parameter"] == "Modalty" and "unknown parameter" in body["error"]
    body = await get(client, {"StudyDate": "20241301x"}, 400)
    assert body["parameter"] == "StudyDate"


HOSTILE = ['"', "'", '"); DROP TABLE search_docs; --', "OR", "a OR b", "NEAR(doe jane)", "*", "**", "\\",
           "{", "}", ":", "text:doe", "fields.PatientID:P-A", "(", "^", "~", "doe -jane", "%", "_", "Müller",
           "中文", "\U0001f600", "x" * 1024, "doe\tjane", "\u202e", "\ufffd"]


async def test_hostile_free_text_is_plain_text(client: TestClient) -> None:
    for text in HOSTILE:
        body = await get(client, {"q": text, "level": "instance"})
        assert body["total"] == len(body["hits"]) <= 3, text
    assert (await get(client, {"q": "doe OR roe"}))["total"] == 0  # OR is a term, not an operator
    assert (await get(client, {"q": "doe jane"}))["total"] == 1
    for value in HOSTILE[:-5]:
        body = await get(client, {"PatientName": value[:256]})
        assert body["total"] == (2 if value.strip("*") == "" else 0), value
    assert (await get(client, {"level": "instance"}))["total"] == 3  # nothing was altered


def test_openapi_document_is_valid() -> None:
    document = spec("http://localhost:8080")
    validate(document)  # raises on an invalid OpenAPI 3 document


async def test_openapi_is_served_and_documents_every_route(client: TestClient) -> None:
    response = await client.get("/api/openapi.json")
    assert response.status == 200
    document = await response.json()
    validate(document)
    routes = {r.canonical for r in client.app.router.resources() if r.canonical.startswith(("/api", "/dicom-web"))}
    assert {"/api/search", "/api/openapi.json"} <= routes
    assert routes <= set(document["paths"]), routes - set(document["paths"])
    names = {p["name"] for p in document["paths"]["/api/search"]["get"]["parameters"]}
    assert {"q", "level", "limit", "offset", "sort", "facets"} <= names


async def test_study_hits_carry_the_whole_studys_counts_from_the_catalog(tmp_path: Path) -> None:
    """The web UI's study list shows series and instances per study from the one search request:
    the study's own counts (PS3.4 C.3.4 computed keys), not only the instances that matched."""
    from archive.core.records import CatalogEntry

    index = Fts5Search(tmp_path / "search.db")
    catalog = SqliteCatalog(tmp_path / "catalog.db")
    await index.migrate()
    await catalog.migrate()
    study, ct, mr = new_uid(), new_uid(), new_uid()
    messages = [make_message(make_ct(study_uid=study, series_uid=ct, patient_id="P-C", instance_number=i, seed=i,
                                     size=4), tmp_path) for i in range(3)]
    messages.append(make_message(make_ct(study_uid=study, series_uid=mr, patient_id="P-C", modality="MR", size=4),
                                 tmp_path))
    await catalog.upsert([CatalogEntry.from_message(m) for m in messages])
    await index.upsert([flatten(m) for m in messages])
    unindexed = make_message(make_ct(patient_id="P-D", size=4), tmp_path)  # in the index, not yet in the catalog
    await index.upsert([flatten(unindexed)])
    app = base_app([catalog, index])
    add_routes(app, catalog, 100, index)
    try:
        async with TestClient(TestServer(app)) as client:
            body = await get(client, {"PatientID": "P-C", "Modality": "MR"})
            (hit,) = body["hits"]
            assert hit["instances"] == 1  # matching
            assert hit["attributes"]["NumberOfStudyRelatedSeries"] == 2  # the whole study
            assert hit["attributes"]["NumberOfStudyRelatedInstances"] == 4
            hits = (await get(client, {"PatientID": "P-*"}))["hits"]
            by_uid = {h["StudyInstanceUID"]: h["attributes"] for h in hits}
            assert "NumberOfStudyRelatedSeries" not in by_uid[unindexed.study_uid]
            series = (await get(client, {"PatientID": "P-C", "level": "series"}))["hits"]
            assert len(series) == 2 and all("NumberOfStudyRelatedSeries" not in h["attributes"] for h in series)
    finally:
        await index.close()
        await catalog.close()
