"""The web UI's upload page and download links in Chromium (Playwright), against its own
``dicom-archive serve`` (the search-page tests assert the whole archive of their module).

A folder of generated instances in two series, a copy of one of them and a text file is chosen
through the folder input: every instance lands (the search API and a C-FIND over DIMSE find
them), the result list says stored, duplicate and rejected (not a DICOM file, never sent); the
study page's zip link downloads a zip holding every instance.
"""

from __future__ import annotations

import io
import shutil
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind  # type: ignore[attr-defined]

from tests.e2e.harness import ArchiveProcess, http_json, serve, wait_until
from tests.e2e.test_web_ui import STATIC, Watched, _watch, browser  # noqa: F401 (the browser fixture)
from tests.conftest import missing
from tests.factories import make_ct, new_uid, write_part10

PATIENT = "UPLOAD-1"


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ArchiveProcess]:
    if not (STATIC / "index.html").is_file():
        missing("the web UI is not built: run `make ui` (Node.js 20 and npm)")
    proc = serve(tmp_path_factory.mktemp("web-ui-upload")).start()
    try:
        yield proc
        assert proc.stop() == 0, proc.log_tail()
    finally:
        proc.stop()


@pytest.fixture
def ui(browser: Any, archive: ArchiveProcess) -> Iterator[Watched]:  # noqa: F811
    context = browser.new_context(base_url=archive.http, locale="en-GB", accept_downloads=True)
    watched = _watch(context)
    try:
        yield watched
        assert watched.dialogs == []
        assert watched.errors == [], watched.errors
    finally:
        context.close()


def _folder(root: Path) -> tuple[str, dict[str, Path]]:
    """A study of 5 instances in two series under sub-folders, a copy of one, and a text file."""
    study = new_uid()
    files: dict[str, Path] = {}
    for s_number, count in ((1, 3), (2, 2)):
        series = new_uid()
        folder = root / f"series{s_number}"
        folder.mkdir(parents=True)
        for i in range(count):
            ds = make_ct(study_uid=study, series_uid=series, patient_id=PATIENT, instance_number=i + 1, seed=i, size=16)
            ds.SeriesNumber = s_number
            files[str(ds.SOPInstanceUID)] = write_part10(ds, folder / f"IM{i:04d}")
    first = next(iter(files.values()))
    shutil.copy(first, root / "copy-of-first.dcm")
    (root / "notes.txt").write_text("not an image" * 20)
    return study, files


def _c_find_study(port: int, study: str) -> list[str]:
    ae = AE(ae_title="UPLOADTEST")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate("127.0.0.1", port, ae_title="ARCHIVE")
    assert assoc.is_established
    identifier = Dataset()
    identifier.QueryRetrieveLevel, identifier.StudyInstanceUID, identifier.SOPInstanceUID = "IMAGE", study, ""
    identifier.SeriesInstanceUID = ""
    found = []
    try:
        for status, ds in assoc.send_c_find(identifier, StudyRootQueryRetrieveInformationModelFind):
            if status and status.Status in (0xFF00, 0xFF01) and ds is not None:
                found.append(str(ds.SOPInstanceUID))
    finally:
        assoc.release()
    return found


def test_upload_a_folder_then_download_the_study(ui: Watched, archive: ArchiveProcess, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    page = ui.page
    study, files = _folder(tmp_path / "upload")
    page.goto("/ui/upload")
    page.set_input_files("#upload-folder", tmp_path / "upload")
    expect(page.locator("#upload-summary")).to_have_text(
        "7 of 7 files done: 5 stored, 1 duplicate, 1 rejected", timeout=60_000)
    states = {cells[0]: (cells[1], cells[2]) for cells in (
        row.locator("td").all_inner_texts() for row in page.locator(".upload-table tbody tr").all())}
    assert states["upload/notes.txt"][0] == "Rejected" and "not a DICOM file" in states["upload/notes.txt"][1]
    duplicates = [name for name, (state, _) in states.items() if state == "Duplicate"]
    assert len(duplicates) == 1 and duplicates[0] in ("upload/copy-of-first.dcm", "upload/series1/IM0000")

    # every instance is in the archive: the search API and the catalog over DIMSE
    wait_until(lambda: http_json(f"{archive.http}/api/search?PatientID={PATIENT}")[1]["total"] == 1, timeout=60)
    assert sorted(_c_find_study(archive.dicom_port, study)) == sorted(files)

    # the study page's zip link: every instance, as its bytes are stored
    page.goto(f"/ui/study/{study}")
    with page.expect_download() as info:
        page.get_by_role("link", name="Download the study (zip)").click()
    download = info.value
    assert download.suggested_filename == f"study-{study}.zip"
    with zipfile.ZipFile(io.BytesIO(Path(download.path()).read_bytes())) as archive_zip:
        names = archive_zip.namelist()
        assert len(names) == len(files)
        for name in names:
            uid = name.rsplit("/", 1)[1].removesuffix(".dcm").split("_", 1)[1]
            assert dcmread(io.BytesIO(archive_zip.read(name))) == dcmread(files[uid])
