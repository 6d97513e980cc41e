"""The JSON search API end to end: `dicom-archive serve`, instances sent with DCMTK storescu and
pynetdicom, /api/search asserted against what the test data says (never read back from the catalog).

Runs with the embedded FTS5 index and with OpenSearch (the other backends embedded).
"""

from __future__ import annotations

import asyncio
import urllib.parse
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset

from archive.adapters.opensearch_search import OpenSearchIndex
from tests.conftest import service_setting
from tests.e2e.harness import ArchiveProcess, http_json, metric, serve, wait_until
from tests.e2e.senders import pynetdicom_store, storescu
from tests.factories import make_ct, new_uid, write_part10
from tests.sopclasses import make_sr


@dataclass(frozen=True)
class Study:
    patient_id: str
    patient_name: str
    date: str
    modality: str
    institution: str
    body_part: str
    description: str
    instances: int
    report: str | None = None  # an SR series with this text


STUDIES = (
    Study("E2E-S1", "Alpha^Ann", "20190704", "CT", "General Hospital", "CHEST", "CT THORAX", 3,
          "suspicious nodule in the right upper lobe"),
    Study("E2E-S2", "Beta^Bob", "20230211", "MR", "Saint Mary Clinic", "HEAD", "MR BRAIN", 2),
    Study("E2E-S3", "Gamma^Cy", "20230915", "CT", "General Hospital", "ABDOMEN", "CT ABDOMEN", 2),
    Study("E2E-S4", "Delta^Dee", "20230920", "CR", "Harbour Imaging", "CHEST", "CHEST PA", 1),
)


def datasets(study: Study, study_uid: str) -> list[Dataset]:
    series = new_uid()
    out = []
    for i in range(study.instances):
        ds = make_ct(study_uid=study_uid, series_uid=series, patient_id=study.patient_id, size=16, seed=i,
                     patient_name=study.patient_name, study_date=study.date, modality=study.modality,
                     instance_number=i + 1)
        ds.InstitutionName, ds.BodyPartExamined = study.institution, study.body_part
        ds.StudyDescription = study.description
        out.append(ds)
    if study.report:
        sr = make_sr(study_uid, study.patient_id, study.report)
        sr.PatientName, sr.StudyDate, sr.InstitutionName = study.patient_name, study.date, study.institution
        out.append(sr)
    return out


@pytest.fixture(params=["fts5", "opensearch"])
def archive(request: pytest.FixtureRequest, tmp_path: Path, unique: str) -> Iterator[ArchiveProcess]:
    env: dict[str, str] = {}
    if request.param == "opensearch":
        env = {"ARCHIVE_SEARCH": service_setting("ARCHIVE_SEARCH"), "ARCHIVE_SEARCH_INDEX": unique}
    proc = serve(tmp_path, **env).start()
    try:
        backends = http_json(f"{proc.http}/readyz")[1]["backends"]
        assert ("opensearch" if env else "fts5-search") in backends, backends
        yield proc
        assert proc.stop() == 0, proc.log_tail()
    finally:
        proc.stop()
        if request.param == "opensearch":
            index = OpenSearchIndex(env["ARCHIVE_SEARCH"], index=unique)

            async def drop() -> None:
                await index.drop()
                await index.close()

            asyncio.run(drop())


@pytest.fixture
def loaded(archive: ArchiveProcess, tmp_path: Path) -> dict[str, str]:
    """Send every study (CT/MR/CR with storescu, reports with pynetdicom); patient ID -> study UID."""
    uids = {s.patient_id: new_uid() for s in STUDIES}
    files, reports = [], []
    for study in STUDIES:
        for ds in datasets(study, uids[study.patient_id]):
            if ds.Modality == "SR":
                reports.append(ds)
            else:
                files.append(write_part10(ds, tmp_path / f"{ds.SOPInstanceUID}.dcm"))
    result = storescu(archive.dicom_port, files)
    assert result.returncode == 0, result.stderr
    assert pynetdicom_store(archive.dicom_port, reports) == [0x0000] * len(reports)
    expected = len(files) + len(reports)
    # the indexer counts a batch once it is written: on OpenSearch the study documents are recomputed
    # after the instances are searchable, so the instance level alone would not say the list is current
    wait_until(lambda: metric(archive, "archive_indexed_instances_total") >= expected, timeout=60)
    assert search(archive, level="instance")["total"] == expected
    return uids


def search(proc: ArchiveProcess, status: int = 200, **params: str) -> Any:
    code, body = http_json(f"{proc.http}/api/search?{urllib.parse.urlencode(params)}")
    assert code == status, body
    return body


def buckets(body: dict[str, Any], facet: str) -> dict[str, int]:
    return {b["value"]: b["count"] for b in body["facets"][facet]}


def test_search_api_end_to_end(archive: ArchiveProcess, loaded: dict[str, str]) -> None:
    everything = search(archive)
    assert everything["total"] == len(STUDIES)
    assert {h["StudyInstanceUID"] for h in everything["hits"]} == set(loaded.values())
    # newest first without free text
    newest = sorted(STUDIES, key=lambda s: s.date, reverse=True)
    assert [h["StudyInstanceUID"] for h in everything["hits"]] == [loaded[s.patient_id] for s in newest]
    modalities: Counter[str] = Counter()
    for s in STUDIES:
        modalities.update({s.modality, "SR"} if s.report else {s.modality})
    assert buckets(everything, "Modality") == dict(modalities)
    assert buckets(everything, "StudyDate") == dict(Counter(s.date[:4] for s in STUDIES))
    assert buckets(everything, "InstitutionName") == dict(Counter(s.institution for s in STUDIES))
    assert buckets(everything, "BodyPartExamined") == dict(Counter(s.body_part for s in STUDIES))
    first = next(h for h in everything["hits"] if h["StudyInstanceUID"] == loaded["E2E-S1"])
    assert first["instances"] == STUDIES[0].instances + 1 and first["modalities"] == ["CT", "SR"]
    assert first["attributes"]["PatientName"] == "Alpha^Ann" and first["attributes"]["StudyDate"] == "20190704"

    # free text in report content, with the matching field highlighted
    found = search(archive, q="nodule LOBE")
    assert [h["StudyInstanceUID"] for h in found["hits"]] == [loaded["E2E-S1"]] and found["total"] == 1
    assert found["hits"][0]["highlights"][0]["field"] == "ContentSequence.TextValue"
    assert "<em>nodule</em>" in found["hits"][0]["highlights"][0]["fragments"][0]
    assert search(archive, q="nodule", level="series")["hits"][0]["modalities"] == ["SR"]

    # filters of the query model, alone and with text
    expect = {s.patient_id for s in STUDIES if "20230101" <= s.date and s.modality == "CT"}
    body = search(archive, StudyDate="20230101-", Modality="CT")
    assert {h["attributes"]["PatientID"] for h in body["hits"]} == expect
    body = search(archive, q="chest", StudyDate="20230101-20231231")
    assert {h["attributes"]["PatientID"] for h in body["hits"]} == {"E2E-S4"}
    assert body["date_interval"] == "month"
    assert buckets(body, "StudyDate") == {"2023-09": 1}
    body = search(archive, PatientName="gam*", level="instance")
    assert body["total"] == STUDIES[2].instances
    body = search(archive, InstitutionName="General Hospital", level="series", sort="-PatientName")
    assert [h["attributes"]["PatientID"] for h in body["hits"]] == ["E2E-S3", "E2E-S1", "E2E-S1"]

    # pagination over a stable order
    pages = [search(archive, sort="StudyDate", limit="3", offset=str(o)) for o in (0, 3)]
    order = [h["StudyInstanceUID"] for p in pages for h in p["hits"]]
    assert order == [loaded[s.patient_id] for s in sorted(STUDIES, key=lambda s: s.date)]

    # malformed and hostile requests
    assert search(archive, 400, StudyDate="2023")["parameter"] == "StudyDate"
    assert search(archive, 400, NotAKeyword="x")["parameter"] == "NotAKeyword"
    assert search(archive, 400, level="patient")["parameter"] == "level"
    for text in ('"', "OR", "NEAR(", "*", "\\", "{", ":", "Müller", "x" * 1000, "a\"b'c;--"):
        assert search(archive, q=text)["total"] == 0, text
    assert search(archive, level="instance")["total"] == sum(s.instances + bool(s.report) for s in STUDIES)

    code, document = http_json(f"{archive.http}/api/openapi.json")
    assert code == 200 and "/api/search" in document["paths"]
