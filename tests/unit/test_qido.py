"""QIDO-RS over the embedded catalog through a real HTTP server (aiohttp test server)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from archive.adapters.sqlite_catalog import SqliteCatalog
from archive.core.records import CatalogEntry
from archive.query.routes import add_routes
from archive.web import base_app
from tests.factories import make_ct, make_message, new_uid

STUDY_A, STUDY_B = new_uid(), new_uid()
SERIES_A = new_uid()


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[TestClient]:
    catalog = SqliteCatalog(tmp_path / "catalog.db")
    await catalog.migrate()
    entries = []
    for i in range(3):
        ds = make_ct(study_uid=STUDY_A, series_uid=SERIES_A, instance_number=i + 1, patient_id="P-A",
                     patient_name="Müller^Jürgen", study_date="20240110", accession="ACC-A", charset="ISO_IR 192")
        entries.append(CatalogEntry.from_message(make_message(ds, tmp_path)))
    ds = make_ct(study_uid=STUDY_B, patient_id="P-B", patient_name="Smith^Anna", study_date="20231201",
                 accession="ACC-B", modality="MR")
    entries.append(CatalogEntry.from_message(make_message(ds, tmp_path)))
    await catalog.upsert(entries)
    app = base_app([catalog])
    add_routes(app, catalog, max_limit=2)
    async with TestClient(TestServer(app)) as c:
        yield c
    await catalog.close()


async def get(client: TestClient, path: str, status: int = 200) -> list[dict]:
    response = await client.get(path)
    assert response.status == status, await response.text()
    if status != 200:
        return []
    assert response.headers["Content-Type"].startswith("application/dicom+json")
    return await response.json()


def uids(results: list[dict]) -> set[str]:
    return {r["0020000D"]["Value"][0] for r in results}


async def test_study_matching(client: TestClient) -> None:
    assert uids(await get(client, "/dicom-web/studies?PatientID=P-A")) == {STUDY_A}
    assert uids(await get(client, "/dicom-web/studies?00100020=P-B")) == {STUDY_B}
    assert uids(await get(client, "/dicom-web/studies?PatientName=muller*")) == {STUDY_A}
    assert uids(await get(client, "/dicom-web/studies?AccessionNumber=ACC-B")) == {STUDY_B}
    assert uids(await get(client, "/dicom-web/studies?StudyDate=20240101-")) == {STUDY_A}
    assert uids(await get(client, "/dicom-web/studies?StudyDate=-20231231")) == {STUDY_B}
    assert uids(await get(client, "/dicom-web/studies?ModalitiesInStudy=MR")) == {STUDY_B}
    assert uids(await get(client, f"/dicom-web/studies?StudyInstanceUID={STUDY_A},{STUDY_B}")) == {STUDY_A, STUDY_B}


async def test_required_attributes_and_counts(client: TestClient) -> None:
    [study] = await get(client, "/dicom-web/studies?PatientID=P-A")
    assert study["00201208"]["Value"] == [3]  # NumberOfStudyRelatedInstances
    assert study["00201206"]["Value"] == [1]  # NumberOfStudyRelatedSeries
    assert study["00080061"]["Value"] == ["CT"]
    assert study["00100010"]["Value"][0]["Alphabetic"] == "Müller^Jürgen"
    assert study["00081190"]["Value"][0].endswith(f"/dicom-web/studies/{STUDY_A}")
    assert "00081030" in study  # StudyDescription is returned at study level
    assert "00180015" not in study  # BodyPartExamined is not a study attribute


async def test_series_and_instances(client: TestClient) -> None:
    series = await get(client, f"/dicom-web/studies/{STUDY_A}/series")
    assert [s["0020000E"]["Value"][0] for s in series] == [SERIES_A]
    assert series[0]["00201209"]["Value"] == [3]
    instances = await get(client, f"/dicom-web/studies/{STUDY_A}/series/{SERIES_A}/instances")
    assert len(instances) == 2  # limit capped at 2 by the server
    assert [i["00200013"]["Value"][0] for i in instances] == [1, 2]
    page2 = await get(client, f"/dicom-web/studies/{STUDY_A}/instances?offset=2")
    assert [i["00200013"]["Value"][0] for i in page2] == [3]
    assert len(await get(client, "/dicom-web/instances?PatientID=P-B")) == 1


async def test_truncation_warning_and_includefield(client: TestClient) -> None:
    response = await client.get(f"/dicom-web/studies/{STUDY_A}/instances")
    assert "Warning" in response.headers
    response = await client.get(f"/dicom-web/studies/{STUDY_A}/instances?offset=2")
    assert "Warning" not in response.headers
    [study] = await get(client, "/dicom-web/studies?PatientID=P-A&includefield=00180015")
    [full] = await get(client, "/dicom-web/studies?PatientID=P-A&includefield=all")
    assert len(full) >= len(study)


@pytest.mark.parametrize(
    "query",
    [
        "PatientID=x&NoSuchAttribute=1",
        "StudyDate=2024-01-01x",
        "StudyDate=yesterday",
        "limit=abc",
        "offset=-1",
        "fuzzymatching=maybe",
        "includefield=NotAKeyword",
        "99999999=1",
        "=1",  # pydicom's tag_for_keyword("") is a retired element's tag
        "StudyDate=2024%C2%B2",
        "limit=%D9%A5",
        "offset=1_0",
    ],
)
async def test_malformed_queries_are_400(client: TestClient, query: str) -> None:
    response = await client.get(f"/dicom-web/studies?{query}")
    assert response.status == 400
    assert "unknown attribute ''" in (await response.json())["error"] or query != "=1"


async def test_hostile_values_are_data(client: TestClient) -> None:
    assert await get(client, "/dicom-web/studies?PatientID=%27%20OR%201%3D1%20--") == []
    assert await get(client, "/dicom-web/studies?PatientName=%25") == []


async def test_unscoped_series_and_instances_carry_study_attributes(client: TestClient) -> None:
    [series] = await get(client, "/dicom-web/series?PatientID=P-B")
    assert series["00100020"]["Value"] == ["P-B"]  # PatientID, a study-level return attribute
    assert series["00080020"]["Value"] == ["20231201"]  # StudyDate
    [instance] = await get(client, "/dicom-web/instances?PatientID=P-B")
    assert instance["00080060"]["Value"] == ["MR"]  # Modality, a series-level return attribute
    scoped = await get(client, f"/dicom-web/studies/{STUDY_A}/series")
    assert "00100020" not in scoped[0]


async def test_control_characters_are_400(client: TestClient) -> None:
    response = await client.get("/dicom-web/studies?PatientID=%00x")
    assert response.status == 400


async def test_public_url_is_the_base_of_retrieve_urls(tmp_path: Path) -> None:
    from archive.settings import Settings

    catalog = SqliteCatalog(tmp_path / "catalog.db")
    await catalog.migrate()
    await catalog.upsert([CatalogEntry.from_message(make_message(make_ct(study_uid=STUDY_A), tmp_path))])
    app = base_app([catalog])
    add_routes(app, catalog, max_limit=10, settings=Settings(public_url="https://archive.example.com/"))
    async with TestClient(TestServer(app)) as c:
        [study] = await get(c, "/dicom-web/studies")
    await catalog.close()
    assert study["00081190"]["Value"] == [f"https://archive.example.com/dicom-web/studies/{STUDY_A}"]


def test_public_url_must_be_http() -> None:
    from archive.core.errors import ConfigError
    from archive.settings import Settings

    with pytest.raises(ConfigError, match="ARCHIVE_PUBLIC_URL"):
        Settings.from_env({"ARCHIVE_PUBLIC_URL": "archive.example.com"})
