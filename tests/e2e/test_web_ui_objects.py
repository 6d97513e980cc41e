"""Non-image objects in the web UI, in Chromium (Playwright) against its own ``dicom-archive serve``.

An encapsulated PDF is drawn by pdf.js (a non-blank canvas, its text in the text layer, the second
page, zoom, the original PDF downloaded); a TID 1500-shaped SR and one written by highdicom read as
text (headings, findings, measurements with their units), a hostile value in a report stays text;
µ-law, A-law and 16-bit PCM audio objects play from a WAV made in the page (``audio.duration``
after ``loadedmetadata``; the WAV's samples read back); a PDF report added to a study from the
study page lands as an Encapsulated PDF instance with the study's patient (QIDO-RS, C-FIND, the
stored file read back by pydicom) and shows, also with sign-in on (real Keycloak). axe-core on
each view.
"""

from __future__ import annotations

import io
import re
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread

from tests.conftest import missing
from tests.e2e.harness import ArchiveProcess, http_json, serve, wait_until
from tests.e2e.test_web_ui import AXE, HOSTILE, STATIC, Watched, _watch, browser  # noqa: F401 (the browser fixture)
from tests.e2e.test_web_ui_upload import _c_find_study
from tests.factories import make_ct, new_uid, write_part10
from tests.sopclasses import make_measurement_sr, make_pdf_document, make_waveform_audio, tiny_pdf
from tests.stow_client import stow

PATIENT = "OBJ-1"
PAGE_ONE = "Discharge summary for the archive test"
PAGE_TWO = "Second page: follow-up in six weeks"
FINDING = f"Nodule {HOSTILE} <script>alert(2)</script> stable"
PDF = tiny_pdf(PAGE_ONE, PAGE_TWO, padding=20_000)  # over the 16 KiB bulk threshold: a BulkDataURI
UPLOADED = tiny_pdf("Uploaded report, line one")  # small: InlineBinary in the metadata
TITLE = f"Befund Müller {HOSTILE}"
MU_LAW = {"interpretation": "MB", "frequency": 8000, "channels": 1, "samples": 12000}  # 1.5 s
A_LAW = {"interpretation": "AB", "frequency": 11025, "channels": 1, "samples": 22050}  # 2 s
WAIT = 30_000  # ms: the machine is shared, a page can take seconds under load
PCM = {"interpretation": "SS", "frequency": 16000, "channels": 2, "samples": 12000}  # 0.75 s


@dataclass
class Objects:
    study: str
    pdf: str  # the object page URLs
    sr: str
    mu_law: str
    pcm: str
    tid1500: str  # made by highdicom
    a_law: str


def _url(ds: Any) -> str:
    return f"/ui/study/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instance/{ds.SOPInstanceUID}"


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ArchiveProcess]:
    if not (STATIC / "index.html").is_file():
        missing("the web UI is not built: run `make ui` (Node.js 20 and npm)")
    proc = serve(tmp_path_factory.mktemp("web-ui-objects")).start()
    try:
        yield proc
        assert proc.stop() == 0, proc.log_tail()
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def objects(archive: ArchiveProcess, tmp_path_factory: pytest.TempPathFactory) -> Objects:
    tmp = tmp_path_factory.mktemp("objects")
    study = new_uid()
    ct = make_ct(study_uid=study, patient_id=PATIENT, patient_name="山田^花子", size=8, charset="ISO_IR 192")
    pdf = make_pdf_document(study, PATIENT, PDF)
    sr = make_measurement_sr(study, PATIENT, FINDING)
    sr.SeriesNumber = 3
    mu = make_waveform_audio(study, PATIENT, **MU_LAW)  # type: ignore[arg-type]
    pcm = make_waveform_audio(study, PATIENT, **PCM)  # type: ignore[arg-type]
    pdf.SeriesNumber, mu.SeriesNumber, pcm.SeriesNumber = 2, 4, 5
    tid1500 = _highdicom_report(ct)
    alaw = make_waveform_audio(study, PATIENT, **A_LAW)  # type: ignore[arg-type]
    alaw.SeriesNumber = 7
    datasets = [ct, pdf, sr, mu, pcm, tid1500, alaw]
    for ds in datasets[1:]:  # one patient and study: the CT's
        ds.SpecificCharacterSet = "ISO_IR 192"
        for keyword in ("PatientName", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime", "AccessionNumber",
                        "StudyID", "ReferringPhysicianName"):
            setattr(ds, keyword, getattr(ct, keyword))
    status, _, body = stow(archive.http, [write_part10(ds, tmp / f"{ds.SOPInstanceUID}.dcm").read_bytes()
                                          for ds in datasets])
    assert status == 200, body
    wait_until(lambda: len(http_json(f"{archive.http}/dicom-web/studies/{study}/instances")[1] or []) == 7, timeout=60)
    return Objects(study, _url(pdf), _url(sr), _url(mu), _url(pcm), _url(tid1500), _url(alaw))


def _highdicom_report(ct: Any) -> Any:
    """A TID 1500 Measurement Report as highdicom writes it (Comprehensive 3D SR), on the CT."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Person,
        observer_identifying_attributes=hd.sr.PersonObserverIdentifyingAttributes(name="Reader^Rita"))
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier="Nodule 1"),
        measurements=[hd.sr.Measurement(name=codes.SCT.Diameter, value=21.0, unit=codes.UCUM.Millimeter)],
        finding_type=codes.SCT.Nodule)
    report = hd.sr.MeasurementReport(observation_context=hd.sr.ObservationContext(observer_person_context=observer),
                                     procedure_reported=codes.LN.CTUnspecifiedBodyRegion, imaging_measurements=[group])
    return hd.sr.Comprehensive3DSR(evidence=[ct], content=report, series_number=6, series_instance_uid=hd.UID(),
                                   sop_instance_uid=hd.UID(), instance_number=1, manufacturer="test")


@pytest.fixture
def ui(browser: Any, archive: ArchiveProcess) -> Iterator[Watched]:  # noqa: F811
    context = browser.new_context(base_url=archive.http, locale="en-GB", accept_downloads=True)
    watched = _watch(context)
    try:
        yield watched
        assert watched.dialogs == [], "a DICOM value ran as script"
        assert watched.errors == [], watched.errors  # CSP violations are console errors
    finally:
        context.close()


DARK_PIXELS = """() => {
  const canvas = document.querySelector('.pdf-page canvas');
  const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
  let dark = 0;
  for (let i = 0; i < data.length; i += 4) if (data[i + 3] > 0 && data[i] < 128) dark++;
  return dark;
}"""


def _pdf_drawn(page: Any, number: int, of: int) -> None:
    from playwright.sync_api import expect

    expect(page.get_by_role("status").filter(has_text=re.compile("^Page "))).to_have_text(
        f"Page {number} of {of}", timeout=30_000)


def test_a_pdf_is_drawn_with_its_text_pages_zoom_and_download(ui: Watched, objects: Objects) -> None:
    from playwright.sync_api import expect

    page = ui.page
    page.goto(f"/ui/study/{objects.study}")
    page.locator(".series-card", has_text="Series 2:").get_by_role("link", name="Open pdf document").click()
    expect(page).to_have_url(re.compile(re.escape(objects.pdf) + "$"), timeout=WAIT)
    _pdf_drawn(page, 1, 2)
    expect(page.get_by_role("heading", name="Referral letter")).to_be_visible(timeout=WAIT)
    assert page.evaluate(DARK_PIXELS) > 200, "the canvas is blank"
    expect(page.locator(".textLayer")).to_contain_text(PAGE_ONE, timeout=WAIT)
    width = page.locator(".pdf-page canvas").bounding_box()["width"]

    page.get_by_role("button", name="Next page").click()
    _pdf_drawn(page, 2, 2)
    expect(page.locator(".textLayer")).to_contain_text(PAGE_TWO, timeout=WAIT)
    expect(page.locator(".textLayer")).not_to_contain_text(PAGE_ONE, timeout=WAIT)
    expect(page.get_by_role("button", name="Next page")).to_be_disabled(timeout=WAIT)

    page.get_by_role("button", name="Zoom in").click()
    expect(page.locator(".zoom")).to_have_text("125 %", timeout=WAIT)
    _pdf_drawn(page, 2, 2)
    assert page.locator(".pdf-page canvas").bounding_box()["width"] == pytest.approx(width * 1.25, abs=2)

    with page.expect_download() as info:
        page.get_by_role("link", name="Download the PDF").click()
    saved = Path(info.value.path()).read_bytes()
    assert saved.rstrip(b"\x00") == PDF.rstrip(b"\x00")  # as stored (an odd length is padded by one NUL)
    assert info.value.suggested_filename == "Referral letter.pdf"


def test_a_structured_report_reads_as_text(ui: Watched, objects: Objects) -> None:
    from playwright.sync_api import expect

    page = ui.page
    page.goto(f"/ui/study/{objects.study}")
    page.locator(".series-card", has_text="Series 3:").get_by_role("link", name="Open report").click()
    report = page.get_by_role("article", name="Imaging Measurement Report")
    expect(report).to_be_visible(timeout=WAIT)
    expect(report.get_by_role("heading", name="Imaging Measurements")).to_be_visible(timeout=WAIT)
    expect(report.get_by_role("heading", name="Measurement Group")).to_be_visible(timeout=WAIT)
    items = [t.strip() for t in report.locator(".sr-item").all_inner_texts()]
    assert "Length: 12.5 millimeter" in items, items
    assert "concept modifier: Finding Site: Lung" in items, items
    assert f"Finding: {FINDING}" in items, items
    assert "observation context: Person Observer Name: Reader, Rita" in items, items
    assert "observation context: Study Date: 2024-01-15" in items, items
    facts = report.locator(".sr-flags").inner_text()
    assert "complete" in facts and "verified" in facts and "Reader, Rita" in facts, facts


def test_a_highdicom_measurement_report_reads_as_text(ui: Watched, objects: Objects) -> None:
    from playwright.sync_api import expect

    page = ui.page
    page.goto(objects.tid1500)
    report = page.get_by_role("article", name="Imaging Measurement Report")
    expect(report.get_by_role("heading", name="Measurement Group")).to_be_visible(timeout=WAIT)
    items = [t.strip() for t in report.locator(".sr-item").all_inner_texts()]
    for line in ("Diameter: 21 mm", "observation context: Tracking Identifier: Nodule 1", "Finding: Nodule",
                 "observation context: Person Observer Name: Reader, Rita", "Procedure reported: CT unspecified body region"):
        assert any(item.endswith(line) for item in items), (line, "\n".join(items))


def test_a_hostile_value_in_a_report_stays_text(ui: Watched, objects: Objects) -> None:
    from playwright.sync_api import expect

    page = ui.page
    page.goto(objects.sr)
    finding = page.locator(".sr-item[data-type=TEXT] .sr-value")
    expect(finding).to_have_text(FINDING, timeout=WAIT)
    assert page.locator(".sr img, .sr script").count() == 0
    assert page.evaluate("window.alert.toString()").endswith("{ [native code] }")
    # the dialogs and script errors are asserted by the ui fixture


@pytest.mark.parametrize("which, seconds, caption", [
    ("mu_law", 1.5, "1.5 s · 1 channel · 8000 Hz · µ-law"),
    ("pcm", 0.75, "0.8 s · 2 channels · 16000 Hz · 16-bit PCM"),
    ("a_law", 2.0, "2.0 s · 1 channel · 11025 Hz · A-law"),
])
def test_audio_plays_from_a_wav_made_in_the_page(ui: Watched, objects: Objects, which: str, seconds: float,
                                                 caption: str) -> None:
    from playwright.sync_api import expect

    page = ui.page
    page.goto(getattr(objects, which))
    audio = page.locator("audio")
    expect(audio).to_have_attribute("src", re.compile("^blob:"), timeout=30_000)
    duration = audio.evaluate("""(a) => new Promise((resolve, reject) => {
      if (a.readyState >= 1) resolve(a.duration);
      a.addEventListener('loadedmetadata', () => resolve(a.duration));
      a.addEventListener('error', () => reject(new Error('audio error ' + (a.error && a.error.code))));
    })""")
    assert duration == pytest.approx(seconds, abs=0.01)
    expect(page.locator(".audio-track figcaption")).to_have_text(caption, timeout=WAIT)


def test_a_pdf_report_added_to_a_study_lands_and_shows(ui: Watched, archive: ArchiveProcess, objects: Objects,
                                                       tmp_path: Path) -> None:
    from playwright.sync_api import expect

    page = ui.page
    page.goto(f"/ui/study/{objects.study}")
    upload = tmp_path / f"{TITLE}.pdf"  # an umlaut (UTF-8 in the file) and markup (text on the page)
    upload.write_bytes(UPLOADED)
    page.get_by_label("Add a PDF report to this study").set_input_files(upload)
    expect(page.locator(".pdf-upload [aria-live]")).to_have_text(f"{TITLE}.pdf was added to the study.",
                                                                 timeout=60_000)

    # QIDO-RS: a new DOC series in the study, its instance an Encapsulated PDF with the study's patient
    _, series = http_json(f"{archive.http}/dicom-web/studies/{objects.study}/series?Modality=DOC")
    added = [s for s in series if s["0020000E"]["Value"][0] != objects.pdf.split("/")[5]]
    assert len(added) == 1, series
    series_uid = added[0]["0020000E"]["Value"][0]
    assert re.fullmatch(r"2\.25\.[0-9]{1,39}", series_uid)
    _, instances = http_json(f"{archive.http}/dicom-web/studies/{objects.study}/series/{series_uid}/instances"
                              "?includefield=PatientID")
    assert len(instances) == 1 and instances[0]["00100020"]["Value"] == [PATIENT]
    assert instances[0]["00080016"]["Value"] == ["1.2.840.10008.5.1.4.1.1.104.1"]
    sop_uid = instances[0]["00080018"]["Value"][0]
    assert sop_uid in _c_find_study(archive.dicom_port, objects.study)

    # the stored file, read back by pydicom: the patient and study attributes of the study
    request = urllib.request.Request(
        f"{archive.http}/dicom-web/studies/{objects.study}/series/{series_uid}/instances/{sop_uid}"
        "?accept=application%2Fdicom%3B%20transfer-syntax%3D%2A")
    with urllib.request.urlopen(request) as response:
        stored = dcmread(io.BytesIO(response.read()))
    assert str(stored.PatientName) == "山田^花子" and stored.PatientID == PATIENT
    assert (stored.PatientBirthDate, stored.PatientSex, stored.StudyDate) == ("19700101", "F", "20240115")
    assert (stored.AccessionNumber, stored.StudyID, str(stored.ReferringPhysicianName)) == ("ACC-1", "1", "Smith^John")
    assert stored.Modality == "DOC" and stored.DocumentTitle == TITLE and stored.SeriesNumber == 8
    assert stored.MIMETypeOfEncapsulatedDocument == "application/pdf"
    assert stored.EncapsulatedDocument.rstrip(b"\x00") == UPLOADED.rstrip(b"\x00")
    assert stored.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"

    # the study page lists it; it opens and draws
    card = page.locator(".series-card", has_text="PDF report")
    card.get_by_role("link", name="Open pdf document").click()
    _pdf_drawn(page, 1, 1)
    expect(page.get_by_role("heading", name=TITLE)).to_be_visible(timeout=WAIT)  # the title as text
    expect(page.locator(".textLayer")).to_contain_text("Uploaded report, line one", timeout=WAIT)
    assert page.evaluate(DARK_PIXELS) > 100, "the canvas is blank"


def test_axe_finds_no_serious_violation_on_the_object_views(browser: Any, objects: Objects,  # noqa: F811
                                                            archive: ArchiveProcess) -> None:
    """axe-core injected into a context that bypasses the page's CSP for the injection only."""
    if not AXE.is_file():
        missing(f"{AXE} is absent: `make ui` installs the UI's npm packages")
    context = browser.new_context(base_url=archive.http, bypass_csp=True)
    try:
        watched = _watch(context)
        page = watched.page
        for url, ready in ((f"/ui/study/{objects.study}", "Open report"), (objects.pdf, "Page 1 of 2"),
                           (objects.sr, "Imaging Measurement Report"), (objects.mu_law, "µ-law")):
            page.goto(url)
            page.get_by_text(ready).first.wait_for(timeout=30_000)
            page.add_script_tag(path=str(AXE))
            result = page.evaluate("axe.run(document, {resultTypes: ['violations']})")
            bad = [(v["id"], v["impact"], [n["target"] for n in v["nodes"]][:3])
                   for v in result["violations"] if v["impact"] in ("serious", "critical")]
            assert bad == [], (url, bad)
        assert watched.dialogs == [] and watched.errors == [], watched.errors
    finally:
        context.close()


def _ulaw2linear(byte: int) -> int:
    """g711.c ulaw2linear, written out here independently of the page's decoder."""
    u = ~byte & 0xFF
    t = (((u & 0x0F) << 3) + 0x84) << ((u & 0x70) >> 4)
    return (0x84 - t) if u & 0x80 else (t - 0x84)


def _alaw2linear(byte: int) -> int:
    """g711.c alaw2linear, written out here independently of the page's decoder."""
    a = byte ^ 0x55
    t, segment = (a & 0x0F) << 4, (a & 0x70) >> 4
    t = t + 8 if segment == 0 else (t + 0x108) << max(segment - 1, 0)
    return t if a & 0x80 else -t


@pytest.mark.parametrize("which", ["mu_law", "pcm", "a_law"])
def test_audio_samples_are_decoded_right(browser: Any, archive: ArchiveProcess, objects: Objects,  # noqa: F811
                                         which: str) -> None:
    """The WAV the page made holds the waveform's samples: 16-bit PCM as stored, µ-law as G.711
    decodes it. Read back from its blob: URL in a context that bypasses the CSP (connect-src has no
    blob:; the page itself only plays it)."""
    from tests.sopclasses import make_waveform_audio as make, mu_law

    params = {"mu_law": MU_LAW, "pcm": PCM, "a_law": A_LAW}[which]
    made = make("1.2.3", PATIENT, **params)  # type: ignore[arg-type]
    stored = bytes(made.WaveformSequence[0].WaveformData)
    if which == "mu_law":
        expected = [_ulaw2linear(b) for b in stored]
        assert stored[:4] == bytes(mu_law(v) for v in (0, 4064, 7649, 10328))  # the tone, encoded
    elif which == "a_law":
        expected = [_alaw2linear(b) for b in stored]
    else:
        expected = [int.from_bytes(stored[i:i + 2], "little", signed=True) for i in range(0, len(stored), 2)]
    context = browser.new_context(base_url=archive.http, bypass_csp=True)
    try:
        page = context.new_page()
        page.goto(getattr(objects, which))
        audio = page.locator("audio")
        audio.wait_for(timeout=30_000)
        header, samples = audio.evaluate("""async (a) => {
          const bytes = new Uint8Array(await (await fetch(a.src)).arrayBuffer());
          const view = new DataView(bytes.buffer);
          const out = [];
          for (let i = 44; i < bytes.length; i += 2) out.push(view.getInt16(i, true));
          return [[view.getUint16(22, true), view.getUint32(24, true), view.getUint16(34, true)], out];
        }""")
    finally:
        context.close()
    assert header == [params["channels"], params["frequency"], 16]
    assert samples == expected


def test_with_sign_in_a_writer_adds_a_pdf_that_opens_and_a_reader_may_not(browser: Any,  # noqa: F811
                                                                           tmp_path: Path) -> None:
    """Against the real Keycloak (tests/e2e/test_web_ui_signin.py's archive on its fixed port): the
    writer adds a PDF (STOW-RS with the bearer token) and opens it (its bulk data fetched with the
    token); the reader opens the study's SR but gets no upload control."""
    from playwright.sync_api import expect

    from tests.e2e.test_web_ui_signin import JWT, STUDY, _record, _sign_in, _start, _store

    proc, issuer = _start(tmp_path)
    try:
        _store(proc, issuer, tmp_path)
        big = tmp_path / "Signed report.pdf"
        big.write_bytes(tiny_pdf("Signed-in upload", padding=20_000))  # a BulkDataURI: fetched with the token
        context = browser.new_context(base_url=proc.http)
        try:
            watched = _watch(context)
            page = watched.page
            recorded = _record(page, proc.http)
            page.goto(f"/ui/study/{STUDY.uid}")
            _sign_in(page, issuer, "writer")
            page.wait_for_url(f"{proc.http}/ui/study/{STUDY.uid}")
            page.get_by_label("Add a PDF report to this study").set_input_files(big)
            expect(page.locator(".pdf-upload [aria-live]")).to_have_text("Signed report.pdf was added to the study.",
                                                                         timeout=60_000)
            page.locator(".series-card", has_text="PDF report").get_by_role("link", name="Open pdf document").click()
            _pdf_drawn(page, 1, 1)
            expect(page.locator(".textLayer")).to_contain_text("Signed-in upload", timeout=WAIT)
            bulk = [p for p in recorded.bearer if "/bulkdata/" in p]
            assert bulk and all(recorded.bearer[p].startswith("Bearer ey") for p in bulk), recorded.bearer
            assert not any(JWT.search(u) for u in recorded.urls)
            assert watched.dialogs == [] and watched.errors == [], watched.errors
        finally:
            context.close()
        context = browser.new_context(base_url=proc.http)
        try:
            watched = _watch(context)
            page = watched.page
            page.goto(f"/ui/study/{STUDY.uid}")
            _sign_in(page, issuer, "reader")
            page.wait_for_url(f"{proc.http}/ui/study/{STUDY.uid}")
            page.get_by_role("link", name="Open report").click()
            expect(page.locator(".sr-item[data-type=TEXT] .sr-value")).to_have_text(STUDY.report or "", timeout=WAIT)
            page.go_back()
            expect(page.get_by_role("link", name="Open pdf document")).to_be_visible(timeout=WAIT)
            expect(page.locator(".study-facts")).to_be_visible(timeout=WAIT)  # the study loaded: the control would be there
            expect(page.get_by_label("Add a PDF report to this study")).to_have_count(0)
            assert watched.dialogs == [] and watched.errors == [], watched.errors
        finally:
            context.close()
        assert proc.stop() == 0, proc.log_tail()
    finally:
        proc.stop()
