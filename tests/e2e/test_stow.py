"""STOW-RS against a real `dicom-archive serve`: stored over HTTP, found and retrieved over DIMSE
and QIDO-RS, and the other way round; dicomweb-client as the reference client.

Expectations come from the files made here, never from our catalog.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread

from archive.ingest.describe import dataset_offset
from tests.e2e.dimse_peers import findscu, getscu
from tests.e2e.harness import ArchiveProcess, http_json, serve, wait_until
from tests.e2e.senders import pynetdicom_store, storescu
from tests.factories import make_ct, new_uid, write_part10
from tests.stow_client import multipart, post, sequence, stow, value

pytestmark = pytest.mark.dcmtk

FAILED, REFERENCED, RETRIEVE_URL = "00081198", "00081199", "00081190"
SOP_UID, FAILURE, WARNING = "00081155", "00081197", "00081196"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("stow")


@pytest.fixture(scope="module")
def archive(workdir: Path) -> Iterator[ArchiveProcess]:
    proc = serve(workdir).start()
    try:
        yield proc
    finally:
        proc.stop()


def _files(directory: Path, study: str, count: int, *, patient_id: str, size: int = 32) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    series = new_uid()
    return [write_part10(make_ct(study_uid=study, series_uid=series, instance_number=i + 1, seed=i, size=size,
                                 patient_id=patient_id), directory / f"{i}.dcm") for i in range(count)]


def _dataset_bytes(path: Path) -> bytes:
    """The encoded dataset after preamble and File Meta (which each writer makes its own)."""
    return path.read_bytes()[dataset_offset(path):]


def _qido_instances(proc: ArchiveProcess, study: str) -> set[str]:
    status, body = http_json(f"{proc.http}/dicom-web/studies/{study}/instances")
    assert status == 200, body
    return {i["00080018"]["Value"][0] for i in body or []}


def test_stow_then_find_over_dimse_and_qido_and_get_the_same_bytes(archive: ArchiveProcess, workdir: Path) -> None:
    study = new_uid()
    files = _files(workdir / "stow-1", study, 4, patient_id="STOW-P1")
    sops = {str(dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files}
    status, headers, body = stow(archive.http, [f.read_bytes() for f in files], study=study)
    assert status == 200, body
    assert headers["Content-Type"] == "application/dicom+json"
    assert {value(i, SOP_UID) for i in sequence(body, REFERENCED)} == sops
    assert value(body, RETRIEVE_URL) == f"{archive.http}/dicom-web/studies/{study}"

    # QIDO-RS, and the RetrieveURL of each instance names where it is
    wait_until(lambda: _qido_instances(archive, study) == sops)
    # C-FIND over DIMSE (DCMTK findscu)
    code, responses, log = findscu(archive.dicom_port, "study", [
        "QueryRetrieveLevel=IMAGE", f"StudyInstanceUID={study}", "SOPInstanceUID"], workdir / "find-1")
    assert code == 0, log
    assert {str(r.SOPInstanceUID) for r in responses} == sops
    # C-GET: the dataset comes back as sent (byte for byte when in the transfer syntax it was sent in)
    out = workdir / "get-1"
    result = getscu(archive.dicom_port, ["QueryRetrieveLevel=STUDY", f"StudyInstanceUID={study}"], out)
    assert result.returncode == 0, result.stderr
    sent = {str(dcmread(f, stop_before_pixels=True).SOPInstanceUID): f for f in files}
    got = {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in out.iterdir()}
    assert set(got) == set(sent)
    for sop, path in got.items():
        ours, theirs = dcmread(path), dcmread(sent[sop])
        if ours.file_meta.TransferSyntaxUID == theirs.file_meta.TransferSyntaxUID:
            assert _dataset_bytes(path) == _dataset_bytes(sent[sop])
        else:  # the retriever's context took another uncompressed syntax: same elements, same pixels
            assert ours.PixelData == theirs.PixelData
            assert {e.tag: e.value for e in ours} == {e.tag: e.value for e in theirs}


def test_dicomweb_client_stores_and_finds(archive: ArchiveProcess, workdir: Path) -> None:
    dicomweb_client = pytest.importorskip("dicomweb_client")
    client = dicomweb_client.DICOMwebClient(url=f"{archive.http}/dicom-web")
    study = new_uid()
    datasets = [dcmread(f) for f in _files(workdir / "dwc", study, 3, patient_id="STOW-DWC")]
    response = client.store_instances(datasets=datasets)
    # dicomweb-client parses the body only when Content-Type is exactly application/dicom+json
    stored = {str(item.ReferencedSOPInstanceUID) for item in response.ReferencedSOPSequence}
    assert stored == {str(ds.SOPInstanceUID) for ds in datasets}
    assert "FailedSOPSequence" not in response
    # (dicomweb-client sends a Host header without the port, and the URL is built from Host)
    assert response.RetrieveURL.endswith(f"/dicom-web/studies/{study}")

    def found() -> set[str]:
        return {i["00080018"]["Value"][0] for i in client.search_for_instances(study_instance_uid=study)}

    wait_until(lambda: found() == stored)

    # a dataset of another study, to the URL of this one: rejected, and dicomweb-client raises on 409
    other = dcmread(_files(workdir / "dwc-other", new_uid(), 1, patient_id="STOW-DWC")[0])
    with pytest.raises(Exception) as raised:
        client.store_instances(datasets=[other], study_instance_uid=study)
    assert "409" in str(raised.value)


def test_cstore_then_stow_identical_and_different(archive: ArchiveProcess, workdir: Path) -> None:
    study = new_uid()
    (first,) = _files(workdir / "dup", study, 1, patient_id="STOW-DUP")
    sent = storescu(archive.dicom_port, [first])
    assert sent.returncode == 0, sent.stderr
    sop = str(dcmread(first, stop_before_pixels=True).SOPInstanceUID)
    wait_until(lambda: _qido_instances(archive, study) == {sop})

    status, _, body = stow(archive.http, [first.read_bytes()])  # the same instance again: success
    assert status == 200, body
    assert WARNING not in sequence(body, REFERENCED)[0]

    changed = dcmread(first)
    changed.PatientSex = "M"
    status, _, body = stow(archive.http, [write_part10(changed, workdir / "dup" / "changed.dcm").read_bytes()])
    assert status == 202, body  # keep-first: the archived instance stays, with a warning
    (item,) = sequence(body, REFERENCED)
    assert (value(item, SOP_UID), value(item, WARNING)) == (sop, 0xB000)

    # and STOW-RS first, then C-STORE of the same instance: Success over DIMSE too
    (second,) = _files(workdir / "dup2", study, 1, patient_id="STOW-DUP", size=16)
    assert stow(archive.http, [second.read_bytes()])[0] == 200
    assert pynetdicom_store(archive.dicom_port, [dcmread(second)]) == [0x0000]


def test_malformed_part_is_a_failure_and_the_rest_stored(archive: ArchiveProcess, workdir: Path) -> None:
    study = new_uid()
    files = _files(workdir / "mixed", study, 2, patient_id="STOW-MIX")
    status, _, body = stow(archive.http, [files[0].read_bytes(), b"\x00" * 300 + b"not DICOM", files[1].read_bytes()])
    assert status == 202, body
    assert [value(f, FAILURE) for f in sequence(body, FAILED)] == [0xC000]
    sops = {str(dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files}
    assert {value(i, SOP_UID) for i in sequence(body, REFERENCED)} == sops
    wait_until(lambda: _qido_instances(archive, study) == sops)


def test_unsupported_media_type_415(archive: ArchiveProcess, workdir: Path) -> None:
    (f,) = _files(workdir / "415", new_uid(), 1, patient_id="STOW-415")
    status, _, _ = post(f"{archive.http}/dicom-web/studies", f.read_bytes(), "application/dicom")
    assert status == 415
    body, _ = multipart([f.read_bytes()], boundary="xyz")
    status, _, _ = post(f"{archive.http}/dicom-web/studies", body,
                        'multipart/related; type="application/dicom+xml"; boundary=xyz')
    assert status == 415


def test_size_cap_413(tmp_path: Path) -> None:
    proc = serve(tmp_path, ARCHIVE_STOW_MAX_BYTES="200000").start()
    try:
        study = new_uid()
        files = _files(tmp_path / "in", study, 6, patient_id="STOW-413", size=128)  # ~33 KB each
        status, _, body = stow(proc.http, [f.read_bytes() for f in files] * 100)  # ~20 MB: refused early
        assert status == 413, body
        assert "ARCHIVE_STOW_MAX_BYTES" in body["error"]
        assert stow(proc.http, [f.read_bytes() for f in files[:3]])[0] == 200  # under the cap
        spool = tmp_path / "data" / "spool"
        assert [p for p in spool.rglob("*") if p.is_file()] == []  # nothing left behind
        wait_until(lambda: len(_qido_instances(proc, study)) == 3)
    finally:
        proc.stop()
