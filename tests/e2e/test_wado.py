"""WADO-RS retrieve, metadata, bulkdata and CORS against a real `dicom-archive serve`.

Instances are generated here, sent with DCMTK storescu, and every expectation
is computed from the generated files (never read back from our catalog).
dicomweb-client, the reference Python DICOMweb client, retrieves a study, a
series' metadata and instances.
"""

from __future__ import annotations

import copy
import email.parser
import io
import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from dicomweb_client.api import DICOMwebClient
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, RLELossless

from archive.ingest.describe import BULK_THRESHOLD, dataset_offset
from tests.e2e.harness import ArchiveProcess, http_json, serve, wait_until
from tests.e2e.senders import storescu
from tests.factories import make_ct, new_uid, write_part10

pytestmark = pytest.mark.dcmtk

STUDY, CT_SERIES, RLE_SERIES = new_uid(), new_uid(), new_uid()
DICOM = 'multipart/related; type="application/dicom"'
OCTETS = 'multipart/related; type="application/octet-stream"'
ORIGIN = "https://viewer.example"
PRIVATE = bytes(range(256)) * 100  # above the bulk threshold: a BulkDataURI in the metadata


@dataclass(frozen=True)
class Sent:
    files: dict[str, Path]  # SOP Instance UID -> the file sent
    rle_uid: str

    def dataset(self, uid: str) -> Dataset:
        return dcmread(self.files[uid])


def _files(directory: Path) -> Sent:
    directory.mkdir(parents=True, exist_ok=True)
    files = {}
    for i in range(3):
        ds = make_ct(study_uid=STUDY, series_uid=CT_SERIES, instance_number=i + 1, seed=i, size=96)
        if i == 0:
            ds.add_new(0x00091002, "LO", "E2E CREATOR")
            ds.add_new(0x00091010, "OB", PRIVATE)
        files[str(ds.SOPInstanceUID)] = write_part10(ds, directory / f"{ds.SOPInstanceUID}.dcm")
    ds = make_ct(study_uid=STUDY, series_uid=RLE_SERIES, size=64, seed=9)
    ds.SeriesNumber = 2
    ds = copy.deepcopy(ds)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.compress(RLELossless, generate_instance_uid=False)
    files[str(ds.SOPInstanceUID)] = write_part10(ds, directory / f"{ds.SOPInstanceUID}.dcm", RLELossless)
    return Sent(files, str(ds.SOPInstanceUID))


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ArchiveProcess, Sent]]:
    work = tmp_path_factory.mktemp("wado")
    proc = serve(work, ARCHIVE_CORS_ORIGINS=ORIGIN).start()
    try:
        sent = _files(work / "in")
        plain = [path for uid, path in sent.files.items() if uid != sent.rle_uid]
        for files, extra in ((plain, []), ([sent.files[sent.rle_uid]], ["-xr"])):  # -xr: propose RLE Lossless
            result = storescu(proc.dicom_port, files, extra=extra)
            assert result.returncode == 0, result.stderr
        wait_until(lambda: len(http_json(f"{proc.http}/dicom-web/studies/{STUDY}/instances")[1] or []) == 4)
        yield proc, sent
    finally:
        proc.stop()


def get(url: str, headers: dict[str, str] | None = None, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def parts(headers: dict[str, str], body: bytes) -> list[tuple[str, bytes]]:
    """Parse multipart/related with the standard library's MIME parser (independent of ours)."""
    message = email.parser.BytesParser().parsebytes(
        b"Content-Type: " + headers["Content-Type"].encode() + b"\r\n\r\n" + body)
    assert message.is_multipart()
    return [(p.get("Content-Type"), p.get_payload(decode=True)) for p in message.get_payload()]


def test_instances_as_stored_are_byte_identical(archive: tuple[ArchiveProcess, Sent]) -> None:
    proc, sent = archive
    status, headers, body = get(f"{proc.http}/dicom-web/studies/{STUDY}", {"Accept": f"{DICOM}; transfer-syntax=*"})
    assert status == 200 and headers["Content-Type"].startswith(DICOM)
    received = {str(dcmread(io.BytesIO(content)).SOPInstanceUID): (ctype, content) for ctype, content in parts(headers, body)}
    assert set(received) == set(sent.files)
    for uid, path in sent.files.items():
        ctype, content = received[uid]
        original = path.read_bytes()
        stored_syntax = str(dcmread(path).file_meta.TransferSyntaxUID)
        assert ctype == f"application/dicom; transfer-syntax={stored_syntax}"
        # the dataset is the one sent, byte for byte (the File Meta is the archive's own)
        assert content[dataset_offset_of(content):] == original[dataset_offset(path):]


def dataset_offset_of(content: bytes) -> int:
    from pydicom.filereader import _read_file_meta_info

    fh = io.BytesIO(content)
    fh.seek(132)
    _read_file_meta_info(fh)
    return fh.tell()


def test_compressed_instance_is_transcoded_on_request(archive: tuple[ArchiveProcess, Sent]) -> None:
    proc, sent = archive
    url = f"{proc.http}/dicom-web/studies/{STUDY}/series/{RLE_SERIES}/instances/{sent.rle_uid}"
    original = sent.dataset(sent.rle_uid)
    assert original.file_meta.TransferSyntaxUID == RLELossless
    for accept in (DICOM, f"{DICOM}; transfer-syntax={ExplicitVRLittleEndian}"):  # default, then named
        status, headers, body = get(url, {"Accept": accept})
        assert status == 200, body[:200]
        [(ctype, content)] = parts(headers, body)
        assert ctype == f"application/dicom; transfer-syntax={ExplicitVRLittleEndian}"
        got = dcmread(io.BytesIO(content))
        assert got.SOPInstanceUID == sent.rle_uid and got.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert (got.pixel_array == original.pixel_array).all()
    status, _, _ = get(url, {"Accept": f"{DICOM}; transfer-syntax=1.2.840.10008.1.2.4.50"})
    assert status == 406


def _expected_metadata(ds: Dataset) -> dict:
    """pydicom's DICOM JSON of the original, without bulk elements (and without pixel data)."""
    full = ds.to_json_dict(bulk_data_threshold=BULK_THRESHOLD, bulk_data_element_handler=lambda e: "bulk")
    return {k: v for k, v in full.items() if "BulkDataURI" not in v and not k.startswith("7FE0")}


def test_metadata_is_what_pydicom_gives_minus_bulk_data(archive: tuple[ArchiveProcess, Sent]) -> None:
    proc, sent = archive
    status, headers, body = get(f"{proc.http}/dicom-web/studies/{STUDY}/metadata")  # from the catalog (unit tested)
    assert status == 200 and headers["Content-Type"].startswith("application/dicom+json")
    metadata = {m["00080018"]["Value"][0]: m for m in json.loads(body)}
    assert set(metadata) == set(sent.files)
    for uid, meta in metadata.items():
        ds = sent.dataset(uid)
        assert {k: v for k, v in meta.items() if "BulkDataURI" not in v} == _expected_metadata(ds)
        # every BulkDataURI resolves, to the element's value
        pixel_uri = meta["7FE00010"]["BulkDataURI"]
        assert pixel_uri.startswith(f"{proc.http}/dicom-web/studies/{STUDY}/series/")
        status, headers, body = get(pixel_uri, {"Accept": OCTETS})
        assert status == 200
        if uid == sent.rle_uid:
            assert meta["7FE00010"]["vr"] == "OB"
            from pydicom.encaps import generate_frames
            assert [c for _, c in parts(headers, body)] == list(generate_frames(ds.PixelData, number_of_frames=1))
        else:
            assert parts(headers, body) == [("application/octet-stream", ds.PixelData)]
    private = metadata[next(iter(sent.files))]["00091010"]
    assert private["vr"] == "OB"
    status, headers, body = get(private["BulkDataURI"], {"Accept": OCTETS})
    assert parts(headers, body) == [("application/octet-stream", PRIVATE)]


def test_metadata_etag(archive: tuple[ArchiveProcess, Sent]) -> None:
    proc, _ = archive
    url = f"{proc.http}/dicom-web/studies/{STUDY}/series/{CT_SERIES}/metadata"
    status, headers, _ = get(url)
    assert status == 200
    status, again, body = get(url, {"If-None-Match": headers["ETag"]})
    assert status == 304 and body == b"" and again["ETag"] == headers["ETag"]


def test_errors(archive: tuple[ArchiveProcess, Sent]) -> None:
    proc, _ = archive
    assert get(f"{proc.http}/dicom-web/studies/{new_uid()}")[0] == 404
    assert get(f"{proc.http}/dicom-web/studies/{new_uid()}/metadata")[0] == 404
    assert get(f"{proc.http}/dicom-web/studies/1.2.x3")[0] == 400
    assert get(f"{proc.http}/dicom-web/studies/{STUDY}", {"Accept": "text/html"})[0] == 406


def test_cors_preflight_and_headers(archive: tuple[ArchiveProcess, Sent]) -> None:
    proc, _ = archive
    url = f"{proc.http}/dicom-web/studies/{STUDY}/metadata"
    status, headers, _ = get(url, {"Origin": ORIGIN, "Access-Control-Request-Method": "GET",
                                   "Access-Control-Request-Headers": "if-none-match"}, method="OPTIONS")
    assert status == 204
    assert headers["Access-Control-Allow-Origin"] == ORIGIN
    assert headers["Access-Control-Allow-Headers"] == "if-none-match"
    status, headers, _ = get(url, {"Origin": ORIGIN})
    assert headers["Access-Control-Allow-Origin"] == ORIGIN and "ETag" in headers["Access-Control-Expose-Headers"]
    status, headers, _ = get(url, {"Origin": "https://elsewhere.example"})
    assert status == 200 and "Access-Control-Allow-Origin" not in headers


def test_dicomweb_client(archive: tuple[ArchiveProcess, Sent]) -> None:
    """The reference client retrieves a study, series metadata and an instance (issue 4)."""
    proc, sent = archive
    client = DICOMwebClient(url=f"{proc.http}/dicom-web")
    study = client.retrieve_study(STUDY)  # no transfer syntax named: the default, Explicit VR Little Endian
    assert sorted(str(ds.SOPInstanceUID) for ds in study) == sorted(sent.files)
    for ds in study:
        original = sent.dataset(str(ds.SOPInstanceUID))
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert (ds.pixel_array == original.pixel_array).all() and ds.PatientName == original.PatientName
    as_stored = client.retrieve_study(STUDY, media_types=(("application/dicom", "*"),))
    assert {str(ds.SOPInstanceUID): ds.PixelData for ds in as_stored} == {
        uid: sent.dataset(uid).PixelData for uid in sent.files}
    metadata = client.retrieve_series_metadata(STUDY, CT_SERIES)
    assert sorted(m["00080018"]["Value"][0] for m in metadata) == sorted(
        uid for uid in sent.files if uid != sent.rle_uid)
    # dicomweb-client sends "Host: 127.0.0.1" without the port, and our BulkDataURIs follow the Host
    # header: resolve them against the client's base URL
    def bulk(tag: str, vr: str, uri: str) -> bytes:
        return bytes(client.retrieve_bulkdata(proc.http + urllib.parse.urlsplit(uri).path)[0])

    first = Dataset.from_json(metadata[0], bulk_data_uri_handler=bulk)
    assert bytes(first.PixelData) == sent.dataset(str(first.SOPInstanceUID)).PixelData
    instance = client.retrieve_instance(STUDY, RLE_SERIES, sent.rle_uid,
                                        media_types=(("application/dicom", str(ExplicitVRLittleEndian)),))
    assert instance.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert (instance.pixel_array == sent.dataset(sent.rle_uid).pixel_array).all()
