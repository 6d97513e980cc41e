"""Real DICOMweb clients against `dicom-archive serve`: dicomweb-client (the reference Python client)
on every service, the request sequence of OHIF Viewer from another origin, and dciodvfy on every
instance served (WADO-RS and WADO-URI) compared with the instance stored.

Expectations come from the corpus files (tests/e2e/dicomweb_data.py), never from our catalog.
"""

from __future__ import annotations

import io
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from PIL import Image
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from tests.conftest import require_tool
from tests.e2e.dicomweb_data import Corpus, make_corpus
from tests.e2e.dicomweb_peers import Web, multipart_parts
from tests.e2e.harness import ArchiveProcess, serve, wait_until
from tests.e2e.senders import storescu
from tests.factories import make_ct, new_uid, write_part10

pytestmark = pytest.mark.dcmtk

VIEWER = "https://viewer.example"  # a browser origin other than the archive's
FRAMES_ANY = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'


@dataclass
class Served:
    proc: ArchiveProcess
    web: Web
    client: DICOMwebClient
    corpus: Corpus
    workdir: Path


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    workdir = tmp_path_factory.mktemp("dicomweb-clients")
    proc = serve(workdir, ARCHIVE_CORS_ORIGINS=VIEWER)
    # dicomweb-client sends Host without the port: BulkDataURIs are built from ARCHIVE_PUBLIC_URL
    proc.env["ARCHIVE_PUBLIC_URL"] = proc.http
    proc.start()
    try:
        corpus = make_corpus(workdir / "in")
        result = storescu(proc.dicom_port, corpus.files)
        assert result.returncode == 0, result.stderr
        web = Web(proc.http, requests.Session())
        wait_until(lambda: len(web.get("/dicom-web/instances").json() or []) == len(corpus.items), timeout=60)
        yield Served(proc, web, DICOMwebClient(url=f"{proc.http}/dicom-web"), corpus, workdir)
    finally:
        proc.stop()


def _uids(results: list[dict], tag: str) -> set[str]:
    return {r[tag]["Value"][0] for r in results}


# --- dicomweb-client ----------------------------------------------------------------------------

def test_dicomweb_client_search(served: Served) -> None:
    client, corpus = served.client, served.corpus
    assert _uids(client.search_for_studies(), "0020000D") == set(corpus.studies())
    found = client.search_for_studies(search_filters={"PatientName": "gomez"}, fuzzymatching=True,
                                      fields=["StudyDescription"])
    assert _uids(found, "0020000D") == {corpus.items["s2mf"].study} and found[0]["00081030"]["Value"] == ["FLUORO"]
    paged = [client.search_for_studies(limit=1, offset=o) for o in range(3)]
    assert set().union(*(_uids(p, "0020000D") for p in paged)) == set(corpus.studies())
    ct = corpus.items["s1ct0"]
    assert _uids(client.search_for_series(ct.study), "0020000E") == {ct.series, corpus.items["s1mr0"].series}
    assert _uids(client.search_for_series(search_filters={"Modality": "SR"}), "0020000E") == {corpus.items["s2sr"].series}
    instances = client.search_for_instances(ct.study, ct.series, fields=["all"])
    assert _uids(instances, "00080018") == {i.sop for i in corpus.of_series(ct.series)}
    assert all(r["00280010"]["Value"] == [64] for r in instances)


def test_dicomweb_client_retrieve(served: Served) -> None:
    client, corpus = served.client, served.corpus
    ct, mf = corpus.items["s1ct0"], corpus.items["s2mf"]
    study = client.retrieve_study(ct.study)
    assert {str(ds.SOPInstanceUID) for ds in study} == {i.sop for i in corpus.of_study(ct.study)}
    series = client.retrieve_series(ct.study, ct.series)
    assert sorted(int(ds.InstanceNumber) for ds in series) == [1, 2, 3, 4]
    instance = client.retrieve_instance(mf.study, mf.series, mf.sop)
    sent = dcmread(mf.file)
    assert instance.PixelData == sent.PixelData and instance.PatientName == sent.PatientName
    metadata = client.retrieve_series_metadata(ct.study, ct.series)
    assert {m["00080018"]["Value"][0] for m in metadata} == {i.sop for i in corpus.of_series(ct.series)}
    assert client.retrieve_study_metadata(mf.study) and client.retrieve_instance_metadata(mf.study, mf.series, mf.sop)
    uri = metadata[0]["7FE00010"]["BulkDataURI"]
    sop = metadata[0]["00080018"]["Value"][0]
    assert client.retrieve_bulkdata(uri)[0] == dcmread(next(i.file for i in corpus.items.values() if i.sop == sop)).PixelData


def test_dicomweb_client_frames_and_rendered(served: Served) -> None:
    client, mf = served.client, served.corpus.items["s2mf"]
    sent = dcmread(mf.file)
    frames = client.retrieve_instance_frames(mf.study, mf.series, mf.sop, frame_numbers=[2, 4])
    assert frames == [sent.pixel_array[i].astype("<u2").tobytes() for i in (1, 3)]
    png = client.retrieve_instance_rendered(mf.study, mf.series, mf.sop, media_types=("image/png",),
                                            params={"window": "2048,4096,linear"})
    assert Image.open(io.BytesIO(png)).size == (30, 40)
    jpeg = client.retrieve_instance_frames_rendered(mf.study, mf.series, mf.sop, frame_numbers=[3],
                                                    media_types=("image/jpeg",))
    assert Image.open(io.BytesIO(jpeg)).format == "JPEG"


def test_dicomweb_client_store(served: Served) -> None:
    client = served.client
    study = new_uid()
    series = new_uid()
    # Part 10 files read back, as a client sends what it has on disk (STOW-RS parts are PS3.10 files)
    datasets = [dcmread(write_part10(make_ct(study_uid=study, series_uid=series, patient_id="DW-STOW",
                                             instance_number=i + 1, seed=i, size=16), served.workdir / f"stow{i}.dcm"))
                for i in range(2)]
    response = client.store_instances(datasets)
    referenced = {str(item.ReferencedSOPInstanceUID) for item in response.ReferencedSOPSequence}
    assert referenced == {str(ds.SOPInstanceUID) for ds in datasets}
    assert "FailedSOPSequence" not in response or not response.FailedSOPSequence
    wait_until(lambda: len(client.search_for_instances(study)) == 2)
    assert client.retrieve_instance(study, series, str(datasets[0].SOPInstanceUID)).PixelData == datasets[0].PixelData


# --- OHIF Viewer --------------------------------------------------------------------------------

def _cors(web: Web, path: str) -> None:
    """The preflight a browser sends before a GET with an Accept header from another origin."""
    response = web.request("OPTIONS", path, {"Origin": VIEWER, "Access-Control-Request-Method": "GET",
                                             "Access-Control-Request-Headers": "accept"})
    assert response.status_code in (200, 204)
    assert response.headers["Access-Control-Allow-Origin"] == VIEWER
    assert "GET" in response.headers["Access-Control-Allow-Methods"]
    assert "accept" in response.headers["Access-Control-Allow-Headers"].lower()


def _viewer_get(web: Web, path: str, accept: str = "application/dicom+json") -> requests.Response:
    _cors(web, path)
    response = web.session.get(web.base + path, headers={"Origin": VIEWER, "Accept": accept}, timeout=60)
    assert response.status_code == 200, response.text[:300]
    assert response.headers["Access-Control-Allow-Origin"] == VIEWER
    return response


def _displayable(instance: dict, sent: Dataset) -> None:
    """What OHIF reads from series metadata to display an image, with the values stored."""
    for keyword in ("Rows", "Columns", "BitsAllocated", "PixelRepresentation", "PhotometricInterpretation",
                    "SamplesPerPixel", "SOPInstanceUID", "ImagePositionPatient", "ImageOrientationPatient",
                    "PixelSpacing", "NumberOfFrames", "RescaleIntercept", "RescaleSlope", "WindowCenter"):
        if keyword not in sent:
            continue
        tag = f"{sent.data_element(keyword).tag:08X}"  # type: ignore[union-attr]
        assert tag in instance, keyword
        got = instance[tag]["Value"]
        value = sent.data_element(keyword).value  # type: ignore[union-attr]
        expected = list(value) if isinstance(value, MultiValue) else [value]
        assert [v if isinstance(v, str) else float(v) for v in got] == \
            [v if isinstance(v, str) else float(v) for v in expected], keyword


def test_ohif_request_sequence(served: Served) -> None:
    web, corpus = served.web, served.corpus
    studies = _viewer_get(web, "/dicom-web/studies?limit=101&offset=0&fuzzymatching=false"
                               "&includefield=00081030%2C00080060").json()
    assert set(corpus.studies()) <= _uids(studies, "0020000D")  # with what other tests stored
    assert all("00081030" in s and "00201208" in s and "00080061" in s for s in studies)
    for study in corpus.studies():
        series_list = _viewer_get(web, f"/dicom-web/studies/{study}/series"
                                       "?includefield=00080021%2C00080031%2C0008103E%2C00200011").json()
        assert _uids(series_list, "0020000E") == {i.series for i in corpus.of_study(study)}
        for series in _uids(series_list, "0020000E"):
            metadata = _viewer_get(web, f"/dicom-web/studies/{study}/series/{series}/metadata").json()
            items = {i.sop: i for i in corpus.of_series(series)}
            assert {m["00080018"]["Value"][0] for m in metadata} == set(items)
            for instance in metadata:
                item = items[instance["00080018"]["Value"][0]]
                sent = dcmread(item.file)
                _displayable(instance, sent)
                if "PixelData" not in sent:
                    continue
                frame = _viewer_get(web, f"{item.path}/frames/1", FRAMES_ANY)
                assert frame.headers["Content-Type"].startswith("multipart/related")
                (_, payload), = multipart_parts(frame.headers["Content-Type"], frame.content)
                assert len(payload) == sent.Rows * sent.Columns * sent.SamplesPerPixel * sent.BitsAllocated // 8
                assert payload == np.ascontiguousarray(
                    sent.pixel_array[0] if item.frames > 1 else sent.pixel_array).astype(
                    sent.pixel_array.dtype.newbyteorder("<")).tobytes()


# --- dciodvfy -----------------------------------------------------------------------------------

def _errors(path: Path) -> set[str]:
    result = subprocess.run([require_tool("dciodvfy"), str(path)], capture_output=True, text=True, errors="replace",
                            timeout=60)
    return {line.strip() for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")}


@pytest.mark.parametrize("name", ["s1ct0", "s1mr0", "s2mf", "s2sr", "s3ct1"])
def test_served_instances_validate_no_worse_than_stored(served: Served, name: str) -> None:
    item = served.corpus.items[name]
    out = served.workdir / "dciodvfy"
    out.mkdir(exist_ok=True)
    stored = _errors(item.file)
    served_files = {}
    for accept in (None, 'multipart/related; type="application/dicom"; transfer-syntax=*'):
        answer = served.web.get(item.path, accept)
        assert answer.status == 200
        (_, body), = answer.parts()
        served_files[f"wado-rs-{'any' if accept else 'default'}"] = body
    uri = served.web.get(f"/wado?requestType=WADO&studyUID={item.study}&seriesUID={item.series}"
                         f"&objectUID={item.sop}&contentType=application/dicom")
    assert uri.status == 200 and uri.content_type == "application/dicom"
    served_files["wado-uri"] = uri.body
    for how, body in served_files.items():
        path = out / f"{name}-{how}.dcm"
        path.write_bytes(body)
        assert dcmread(path).SOPInstanceUID == item.sop
        assert _errors(path) <= stored, (how, _errors(path) - stored)
