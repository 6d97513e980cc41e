"""WADO-RS downloads against a real ``dicom-archive serve``: a study or a series as
``application/zip`` (Accept header or the ``?accept=`` link form), an instance as
``application/dicom``; member bytes equal to the files sent, member names from UIDs and numbers
only (a hostile patient name and description never reach a path), 406 for what is not served.
"""

from __future__ import annotations

import io
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydicom import Dataset, dcmread

from tests.e2e.harness import ArchiveProcess, http_json, serve, wait_until
from tests.factories import make_ct, new_uid, write_part10
from tests.stow_client import stow

HOSTILE = "../../../etc/passwd^<img src=x>"


@dataclass(frozen=True)
class Sent:
    study: str
    series: dict[str, list[str]]  # series UID -> SOP UIDs
    files: dict[str, bytes]  # SOP UID -> the Part 10 bytes sent
    numbers: dict[str, tuple[int, int]]  # SOP UID -> (series number, instance number)


@pytest.fixture(scope="module")
def sent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ArchiveProcess, Sent]]:
    tmp = tmp_path_factory.mktemp("wado-zip")
    study = new_uid()
    series: dict[str, list[str]] = {}
    files: dict[str, bytes] = {}
    numbers: dict[str, tuple[int, int]] = {}
    for s_number, count in ((1, 3), (2, 2)):
        series_uid = new_uid()
        for i in range(count):
            ds = make_ct(study_uid=study, series_uid=series_uid, patient_name=HOSTILE, patient_id="../ZIP-1",
                         instance_number=i + 1, seed=i, size=64)
            ds.SeriesNumber, ds.SeriesDescription = s_number, "/abs/../x"
            uid = str(ds.SOPInstanceUID)
            series.setdefault(series_uid, []).append(uid)
            files[uid] = write_part10(ds, tmp / f"{uid}.dcm").read_bytes()
            numbers[uid] = (s_number, i + 1)
    proc = serve(tmp).start()
    try:
        status, _, body = stow(proc.http, list(files.values()))
        assert status == 200, body
        wait_until(lambda: len(http_json(f"{proc.http}/dicom-web/studies/{study}/instances")[1] or []) == len(files),
                   timeout=60)
        yield proc, Sent(study, series, files, numbers)
        assert proc.stop() == 0, proc.log_tail()
    finally:
        proc.stop()


def _get(url: str, accept: str | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def _dataset(part10: bytes) -> Dataset:
    """The dataset without its file meta (the archive writes its own File Meta Information)."""
    return dcmread(io.BytesIO(part10))


def _stored(proc: ArchiveProcess, sent: Sent) -> Callable[[str], bytes]:
    """An instance's stored bytes, as WADO-RS sends it as a .dcm (transfer-syntax=*)."""
    def get(uid: str) -> bytes:
        series_uid = next(s for s, uids in sent.series.items() if uid in uids)
        status, _, body = _get(f"{proc.http}/dicom-web/studies/{sent.study}/series/{series_uid}/instances/{uid}",
                               "application/dicom; transfer-syntax=*")
        assert status == 200
        return body
    return get


def _check_zip(body: bytes, sent: Sent, expected: list[str], check_stored: Callable[[str], bytes] | None = None) -> None:
    with zipfile.ZipFile(io.BytesIO(body)) as archive:
        assert archive.testzip() is None
        names = archive.namelist()
        assert len(names) == len(expected)
        for name in names:  # validated values only: no traversal, no absolute path, no free text
            assert not name.startswith("/") and ".." not in name.split("/") and "\\" not in name
            assert all(c in "0123456789._/dcm" for c in name), name
        by_uid = {name.rsplit("/", 1)[1].removesuffix(".dcm").split("_", 1)[1]: name for name in names}
        assert sorted(by_uid) == sorted(expected)
        for uid in expected:
            s_number, i_number = sent.numbers[uid]
            series_uid = next(s for s, uids in sent.series.items() if uid in uids)
            assert by_uid[uid] == f"{sent.study}/{s_number}_{series_uid}/{i_number}_{uid}.dcm"
            assert _dataset(archive.read(by_uid[uid])) == _dataset(sent.files[uid])
            if check_stored is not None:  # the member is the stored object, byte for byte
                assert archive.read(by_uid[uid]) == check_stored(uid)


def test_study_zip_by_accept_header(sent: tuple[ArchiveProcess, Sent]) -> None:
    proc, data = sent
    status, headers, body = _get(f"{proc.http}/dicom-web/studies/{data.study}", "application/zip")
    assert status == 200, body[:300]
    assert headers["Content-Type"] == "application/zip"
    assert headers["Content-Disposition"] == f'attachment; filename="study-{data.study}.zip"'
    _check_zip(body, data, list(data.files), _stored(proc, data))


def test_series_zip_by_link(sent: tuple[ArchiveProcess, Sent]) -> None:
    proc, data = sent
    series_uid, uids = next(iter(data.series.items()))
    query = urllib.parse.urlencode({"accept": "application/zip"})
    status, headers, body = _get(f"{proc.http}/dicom-web/studies/{data.study}/series/{series_uid}?{query}")
    assert status == 200, body[:300]
    assert headers["Content-Disposition"] == f'attachment; filename="series-{series_uid}.zip"'
    _check_zip(body, data, uids, _stored(proc, data))


def test_instance_as_dcm_and_zip(sent: tuple[ArchiveProcess, Sent]) -> None:
    proc, data = sent
    series_uid, uids = next(iter(data.series.items()))
    url = f"{proc.http}/dicom-web/studies/{data.study}/series/{series_uid}/instances/{uids[0]}"
    query = urllib.parse.urlencode({"accept": "application/dicom; transfer-syntax=*"})
    status, headers, body = _get(f"{url}?{query}")
    assert status == 200, body[:300]
    assert headers["Content-Type"].startswith("application/dicom")
    assert headers["Content-Disposition"] == f'attachment; filename="image-{uids[0]}.dcm"'
    assert _dataset(body) == _dataset(data.files[uids[0]])
    status, _, body = _get(url, "application/zip")
    assert status == 200
    _check_zip(body, data, [uids[0]])


@pytest.mark.parametrize("accept", ["image/png", "application/dicom", "application/zip;q=0, image/jpeg"])
def test_unsupported_accept_is_406(sent: tuple[ArchiveProcess, Sent], accept: str) -> None:
    proc, data = sent
    status, _, body = _get(f"{proc.http}/dicom-web/studies/{data.study}", accept)
    assert status == 406, body[:300]
    status, _, _ = _get(f"{proc.http}/dicom-web/studies/{data.study}?{urllib.parse.urlencode({'accept': accept})}")
    assert status == 406


def test_multipart_still_served(sent: tuple[ArchiveProcess, Sent]) -> None:
    proc, data = sent
    status, headers, _ = _get(f"{proc.http}/dicom-web/studies/{data.study}",
                              'multipart/related; type="application/dicom"; transfer-syntax=*')
    assert status == 200 and headers["Content-Type"].startswith("multipart/related")


def test_missing_study_is_404(sent: tuple[ArchiveProcess, Sent]) -> None:
    proc, _ = sent
    status, _, _ = _get(f"{proc.http}/dicom-web/studies/1.2.3.999?accept=application/zip")
    assert status == 404


def test_a_zip_download_is_audited_as_instances_accessed(sent: tuple[ArchiveProcess, Sent]) -> None:
    """PS3.15 A.5.3.6 (DICOM Instances Accessed, 110103), as every WADO-RS retrieve."""
    proc, data = sent
    log = Path(proc.env["ARCHIVE_DATA_DIR"]) / "audit" / "audit.log"

    def records() -> list[ET.Element]:
        lines = log.read_text().splitlines() if log.exists() else []
        return [ET.fromstring(line) for line in lines if data.study in line]

    before = len(records())
    status, _, _ = _get(f"{proc.http}/dicom-web/studies/{data.study}?accept=application/zip")
    assert status == 200
    new = wait_until(lambda: records()[before:] or None, timeout=20)
    assert [m.find("EventIdentification/EventID").get("csd-code") for m in new] == ["110103"]  # type: ignore[union-attr]
    assert all(m.find("EventIdentification").get("EventOutcomeIndicator") == "0" for m in new)  # type: ignore[union-attr]
