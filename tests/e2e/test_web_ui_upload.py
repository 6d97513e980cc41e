"""The web UI's upload page and download links in Chromium (Playwright), against its own
``dicom-archive serve`` (the search-page tests assert the whole archive of their module).

A folder of generated instances in two series, a copy of one of them and a text file is chosen
through the folder input: every instance lands (the search API and a C-FIND over DIMSE find
them), the result list says stored, duplicate and rejected (not a DICOM file, never sent); the
study page's zip link downloads a zip holding every instance.
"""

from __future__ import annotations

import base64
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
from tests.e2e.test_web_ui import AXE, STATIC, Watched, _watch, browser  # noqa: F401 (the browser fixture)
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

    # and laid out as media: PS3.10 file names and a DICOMDIR that names every instance
    with page.expect_download() as info:
        page.get_by_role("link", name="for a CD or USB stick (zip with DICOMDIR)").click()
    with zipfile.ZipFile(io.BytesIO(Path(info.value.path()).read_bytes())) as media:
        names = media.namelist()
        assert names[0] == "DICOMDIR" and len(names) == len(files) + 1
        records = dcmread(io.BytesIO(media.read("DICOMDIR"))).DirectoryRecordSequence
        assert sorted(r.ReferencedSOPInstanceUIDInFile for r in records if "ReferencedFileID" in r) == sorted(files)


RESPONSIVE_FILES = 2000
# The page never freezes: no task over 600 ms. Measured on a 2-core machine at load 8-11, the archive
# ingesting on the same cores: 5-12 long tasks, the longest 190-400 ms, that one when the 2,000 files
# are handed to the page (the File objects and the first rows); the others under 100 ms. What
# freezes other archives' pages is seconds.
LONGEST_TASK_MS = 600
MOST_LONG_TASKS = 50

# Every task the main thread ran for 50 ms or more (the Long Tasks API), from before the page loads.
LONGTASKS = """
window.__longtasks = [];
new PerformanceObserver((list) => {
  for (const entry of list.getEntries()) window.__longtasks.push([Math.round(entry.startTime), Math.round(entry.duration)]);
}).observe({ type: "longtask", buffered: true });
"""


def test_the_page_stays_responsive_with_thousands_of_files(ui: Watched, archive: ArchiveProcess,
                                                          tmp_path: Path) -> None:
    """2,000 small instances in one folder: all stored, the main thread never blocked for long."""
    from playwright.sync_api import expect

    page = ui.page
    folder = tmp_path / "many"
    folder.mkdir()
    study, series = new_uid(), new_uid()
    template = make_ct(study_uid=study, series_uid=series, patient_id="UPLOAD-MANY", size=8)
    for i in range(RESPONSIVE_FILES):
        template.SOPInstanceUID = new_uid()
        template.InstanceNumber = i + 1
        write_part10(template, folder / f"IM{i:05d}")
    page.add_init_script(LONGTASKS)
    page.goto("/ui/upload")
    expect(page.locator("#upload-title")).to_be_focused()  # loaded: its tasks are not the upload's
    started = page.evaluate("performance.now()")
    page.set_input_files("#upload-folder", folder)
    expect(page.locator("#upload-summary")).to_have_text(
        f"{RESPONSIVE_FILES} of {RESPONSIVE_FILES} files done: {RESPONSIVE_FILES} stored, 0 duplicate, 0 rejected",
        timeout=180_000)
    tasks = [duration for start, duration in page.evaluate("window.__longtasks") if start >= started]
    print(f"long tasks while uploading {RESPONSIVE_FILES} files: {len(tasks)}, longest {max(tasks, default=0):.0f} ms")
    assert max(tasks, default=0) < LONGEST_TASK_MS, tasks
    assert len(tasks) < MOST_LONG_TASKS, tasks
    assert page.locator(".upload-table tbody tr").count() == 200  # the list draws the first rows only
    wait_until(lambda: http_json(f"{archive.http}/api/search?PatientID=UPLOAD-MANY")[1]["total"] == 1, timeout=60)
    assert len(_c_find_study(archive.dicom_port, study)) == RESPONSIVE_FILES


def test_axe_finds_no_serious_violation_on_the_upload_page(browser: Any, archive: ArchiveProcess,  # noqa: F811
                                                          tmp_path: Path) -> None:
    """The page with a result list (stored and rejected rows); axe injected as in test_web_ui."""
    from playwright.sync_api import expect

    if not AXE.is_file():
        missing(f"{AXE} is absent: `make ui` installs the UI's npm packages")
    ds = make_ct(patient_id="UPLOAD-AXE", size=8)
    write_part10(ds, tmp_path / "IM0001")
    (tmp_path / "readme.txt").write_text("x" * 200)
    context = browser.new_context(base_url=archive.http, bypass_csp=True)
    try:
        watched = _watch(context)
        page = watched.page
        page.goto("/ui/upload")
        page.set_input_files("#upload-files", [tmp_path / "IM0001", tmp_path / "readme.txt"])
        expect(page.locator("#upload-summary")).to_have_text("2 of 2 files done: 1 stored, 0 duplicate, 1 rejected")
        page.add_script_tag(path=str(AXE))
        result = page.evaluate("axe.run(document, {resultTypes: ['violations']})")
        bad = [(v["id"], v["impact"], [n["target"] for n in v["nodes"]][:3])
               for v in result["violations"] if v["impact"] in ("serious", "critical")]
        assert bad == []
        assert watched.dialogs == [] and watched.errors == []
    finally:
        context.close()


# A drop of files as a browser makes it (a DataTransfer holding File objects), dispatched on the zone.
DROP = """([files]) => {
  const data = new DataTransfer();
  for (const [name, b64] of files) {
    const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    data.items.add(new File([bytes], name));
  }
  const zone = document.querySelector(".dropzone");
  zone.dispatchEvent(new DragEvent("dragover", { dataTransfer: data, bubbles: true, cancelable: true }));
  zone.dispatchEvent(new DragEvent("drop", { dataTransfer: data, bubbles: true, cancelable: true }));
}"""


def test_dropped_files_and_the_archive_s_duplicate_reason(ui: Watched, archive: ArchiveProcess, tmp_path: Path) -> None:
    """Dropped files: an instance whose SOP Instance UID the archive holds with other content is a
    duplicate with the archive's WarningReason (B000, ARCHIVE_DUPLICATE_POLICY keep-first)."""
    from playwright.sync_api import expect

    ds = make_ct(patient_id="UPLOAD-DROP", size=8, seed=1)
    first = write_part10(ds, tmp_path / "first.dcm").read_bytes()
    ds.SeriesDescription = "other content, same SOP Instance UID"
    other = write_part10(ds, tmp_path / "other.dcm").read_bytes()
    page = ui.page
    page.goto("/ui/upload")
    expect(page.locator(".dropzone")).to_be_visible()  # the page renders once its config has loaded
    page.evaluate(DROP, [[["first.dcm", base64.b64encode(first).decode()]]])
    expect(page.locator("#upload-summary")).to_have_text("1 of 1 files done: 1 stored, 0 duplicate, 0 rejected")
    page.evaluate(DROP, [[["other.dcm", base64.b64encode(other).decode()],
                          ["photo.jpg", base64.b64encode(b"\xff\xd8" * 100).decode()]]])
    expect(page.locator("#upload-summary")).to_have_text("3 of 3 files done: 1 stored, 1 duplicate, 1 rejected")
    row = page.locator(".upload-table tbody tr", has_text="other.dcm")
    expect(row).to_have_attribute("data-state", "duplicate")
    expect(row.locator("td").nth(2)).to_contain_text("(0xB000)")
    expect(page.locator(".upload-table tbody tr", has_text="photo.jpg")).to_have_attribute("data-state", "rejected")
