"""End to end on `dicom-archive serve` with embedded backends, real senders."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from tests.e2e.harness import ArchiveProcess, http_json, serve, verify, wait_until
from tests.e2e.senders import associate_result, echoscu, pynetdicom_store, storescu
from tests.factories import make_ct, new_uid, write_part10
from tests.sopclasses import every_kind


LOOPS = {"": "uvloop.Loop", "asyncio": "asyncio.unix_events._UnixSelectorEventLoop"}  # ARCHIVE_EVENT_LOOP


@pytest.fixture(params=["pynetdicom", "asyncio", "asyncio+asyncio"])
def archive(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ArchiveProcess]:
    """`serve` with each DICOM receiver engine (ARCHIVE_SCP_ENGINE), on the default event loop
    (uvloop) and on the standard library's (ARCHIVE_EVENT_LOOP=asyncio)."""
    engine, _, loop = request.param.partition("+")
    proc = serve(tmp_path, ARCHIVE_SCP_ENGINE=engine, **({"ARCHIVE_EVENT_LOOP": loop} if loop else {})).start()
    assert f'"loop": "{LOOPS[loop]}"' in proc.log_path.read_text(), proc.log_tail()
    yield proc
    assert proc.stop() == 0, proc.log_tail()


def studies(proc: ArchiveProcess, query: str = "") -> list[dict]:
    status, body = http_json(f"{proc.http}/dicom-web/studies{query}")
    assert status == 200, body
    return body or []


def instance_count(proc: ArchiveProcess, study_uid: str) -> int:
    status, body = http_json(f"{proc.http}/dicom-web/studies/{study_uid}/instances")
    assert status == 200, body
    return len(body or [])


def test_echo_and_storescu_round_trip(archive: ArchiveProcess, tmp_path: Path) -> None:
    assert echoscu(archive.dicom_port).returncode == 0
    study, series = new_uid(), new_uid()
    files = [write_part10(make_ct(study_uid=study, series_uid=series, instance_number=i, seed=i,
                                  patient_id="E2E-1"),
                          tmp_path / f"ct{i}.dcm") for i in range(10)]
    result = storescu(archive.dicom_port, files)
    assert result.returncode == 0, result.stderr
    wait_until(lambda: instance_count(archive, study) == 10)
    found = studies(archive, "?PatientID=E2E-1")
    assert len(found) == 1
    assert found[0]["00201208"]["Value"] == [10]  # NumberOfStudyRelatedInstances
    assert found[0]["00201206"]["Value"] == [1]
    code, report = verify(archive.env)
    assert code == 0 and report["consistent"], report
    assert report["objects"] == report["catalog_instances"] == report["search_documents"] == 10


def test_every_kind_of_object_stored_as_received(archive: ArchiveProcess, tmp_path: Path) -> None:
    study = new_uid()
    kinds = every_kind(study, "KINDS-1")
    for ds, ts in kinds:
        assert pynetdicom_store(archive.dicom_port, [ds], transfer_syntax=ts) == [0x0000], ds.SOPClassUID.name
    wait_until(lambda: instance_count(archive, study) == len(kinds))
    # Stored as received: the object is the Part 10 form of exactly what was sent.
    objects = Path(archive.env["ARCHIVE_DATA_DIR"]) / "objects"
    for ds, ts in kinds:
        stored = [p for p in objects.rglob(f"{ds.SOPInstanceUID}.dcm")]
        assert len(stored) == 1
        back = dcmread(stored[0])
        assert back.file_meta.TransferSyntaxUID == ts
        assert back.SOPInstanceUID == ds.SOPInstanceUID
        if "PixelData" in ds:
            assert back.PixelData == ds.PixelData
    modalities = studies(archive, f"?StudyInstanceUID={study}")[0]["00080061"]["Value"]
    assert set(modalities) >= {"CT", "SR", "DOC", "AU", "RTPLAN", "XC"}


def test_duplicates(archive: ArchiveProcess) -> None:
    ds = make_ct(patient_id="DUP-1")
    assert pynetdicom_store(archive.dicom_port, [ds]) == [0x0000]
    assert pynetdicom_store(archive.dicom_port, [ds]) == [0x0000]  # identical: idempotent
    changed = ds.copy()
    changed.SeriesDescription = "DIFFERENT"
    assert pynetdicom_store(archive.dicom_port, [changed]) == [0xB000]  # kept first, warning
    wait_until(lambda: instance_count(archive, ds.StudyInstanceUID) == 1)
    code, report = verify(archive.env)
    assert code == 0, report
    stored = next((Path(archive.env["ARCHIVE_DATA_DIR"]) / "objects").rglob(f"{ds.SOPInstanceUID}.dcm"))
    assert dcmread(stored).SeriesDescription == "AXIAL"


def test_bad_input_gets_clear_statuses_and_stores_nothing(archive: ArchiveProcess) -> None:
    hostile = make_ct()
    hostile.SOPInstanceUID = "1.2.3.../../../../tmp/x"
    bad_study = make_ct()
    bad_study.StudyInstanceUID = "1.2.abc"
    statuses = pynetdicom_store(archive.dicom_port, [hostile, bad_study])
    assert statuses[0] in (0xC001, 0xA900), hex(statuses[0])
    assert statuses[1] == 0xC001
    objects = Path(archive.env["ARCHIVE_DATA_DIR"]) / "objects"
    assert not [p for p in objects.rglob("*") if p.is_file()]
    assert not Path("/tmp/x").exists()


def test_allow_lists_reject_at_association(tmp_path: Path) -> None:
    proc = serve(tmp_path, ARCHIVE_ALLOWED_AETS="GOODSCU").start()
    try:
        assert associate_result(proc.dicom_port, "GOODSCU")[0]
        established, result, reason = associate_result(proc.dicom_port, "EVILSCU")
        assert (established, result, reason) == (False, 0x01, 0x03)  # calling AE not recognised
    finally:
        proc.stop()
    (tmp_path / "n").mkdir()
    proc = serve(tmp_path / "n", ARCHIVE_ALLOWED_NETWORKS="10.0.0.0/8").start()
    try:
        established, result, reason = associate_result(proc.dicom_port, "GOODSCU")
        assert (established, result, reason) == (False, 0x01, 0x01)
    finally:
        proc.stop()


def test_backend_failure_answers_a700_and_loses_nothing(archive: ArchiveProcess) -> None:
    first = make_ct(patient_id="FAIL-1")
    assert pynetdicom_store(archive.dicom_port, [first]) == [0x0000]
    objects = Path(archive.env["ARCHIVE_DATA_DIR"]) / "objects"
    moved = objects.with_name("objects.moved")
    objects.rename(moved)
    objects.write_text("not a directory")  # the object store is now unusable
    try:
        assert pynetdicom_store(archive.dicom_port, [make_ct(patient_id="FAIL-1")]) == [0xA700]
    finally:
        objects.unlink()
        moved.rename(objects)
    again = make_ct(patient_id="FAIL-1", study_uid=first.StudyInstanceUID)
    assert pynetdicom_store(archive.dicom_port, [again]) == [0x0000]
    wait_until(lambda: instance_count(archive, first.StudyInstanceUID) == 2)
    code, report = verify(archive.env)
    assert code == 0, report


def test_health_readiness_metrics(archive: ArchiveProcess) -> None:
    assert http_json(f"{archive.http}/healthz")[0] == 200
    status, body = http_json(f"{archive.http}/readyz")
    assert status == 200 and body["ready"]
    import urllib.request

    pynetdicom_store(archive.dicom_port, [make_ct(patient_id="SECRET-PID-42", patient_name="Secret^Name")])

    def scrape() -> str:
        with urllib.request.urlopen(f"{archive.http}/metrics") as response:
            return str(response.read().decode())

    # The indexer runs in a child process of `serve`: its metrics are aggregated here too.
    def indexed() -> str | None:
        text = scrape()
        return text if "archive_indexed_instances_total 1.0" in text else None

    text = wait_until(indexed)
    assert 'archive_cstore_total{result="success"} 1.0' in text
    assert "archive_time_to_searchable_seconds_count 1.0" in text
    assert "SECRET" not in text
    assert "SECRET-PID-42" not in archive.log_tail(1000) and "Secret^Name" not in archive.log_tail(1000)
