"""The web UI in a real browser: Playwright (PyPI) drives Debian's Chromium against ``dicom-archive
serve`` on loopback (embedded backends), with studies sent over STOW-RS.

What a user does on the search page, asserted against the test data: search by name, by free text
and by facet finds the right study; a hostile value stays text (no dialog, no element made from
it); Japanese, Greek and German names are found and shown; the URL round-trips a search; the list
is usable by keyboard; axe-core finds no serious or critical violation; the Content-Security-Policy
is strict and nothing on the page breaks it.

Chromium: ``apt-get install chromium`` (scripts/system-deps.sh), never ``playwright install``.
The built UI: ``make ui`` (``make test`` builds it).
"""

from __future__ import annotations

import json
import os
import re
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from archive.query.ui.routes import STATIC
from tests.conftest import missing
from tests.e2e.harness import ROOT, ArchiveProcess, http_json, serve, wait_until
from tests.factories import make_ct, new_uid, write_part10
from tests.sopclasses import make_sr
from tests.stow_client import stow

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
AXE = ROOT / "ui" / "node_modules" / "axe-core" / "axe.min.js"
HOSTILE = "<img src=x onerror=alert(1)>"


@dataclass(frozen=True)
class Study:
    patient_id: str
    name: str
    shown: str  # the name as the list shows it
    date: str
    institution: str
    body_part: str
    description: str
    series: tuple[tuple[str, int], ...]  # (modality, instances) per series
    report: str | None = None  # an SR series with this text
    uid: str = field(default_factory=new_uid)


STUDIES = (
    Study("UI-A", "Alpha^Ann", "Alpha, Ann", "20190704", "General Hospital", "CHEST", "CT THORAX",
          (("CT", 3),), "suspicious nodule in the right upper lobe"),
    Study("UI-B", "Beta^Bob", "Beta, Bob", "20230211", "Saint Mary Clinic", "HEAD", "MR BRAIN", (("MR", 1), ("MR", 1))),
    Study("UI-X", HOSTILE, "<img src", "20230915", "<b>Harbour</b> Imaging", "ABDOMEN", HOSTILE, (("CT", 1),)),
    Study("UI-J", "山田^太郎", "山田, 太郎", "20221010", "General Hospital", "ABDOMEN", "腹部 CT", (("CT", 2),)),
    Study("UI-M", "Müller^Jürgen", "Müller, Jürgen", "20210505", "Klinikum Süd", "CHEST", "THORAX PA", (("CR", 1),)),
    Study("UI-G", "Παπαδόπουλος^Γιάννης", "Παπαδόπουλος, Γιάννης", "20200303", "General Hospital", "HEAD", "MR KEFALI",
          (("MR", 1),)),
)
BY_ID = {s.patient_id: s for s in STUDIES}


def _parts(study: Study, tmp: Path) -> list[bytes]:
    out = []
    for modality, count in study.series:
        series = new_uid()
        for i in range(count):
            ds = make_ct(study_uid=study.uid, series_uid=series, patient_id=study.patient_id, patient_name=study.name,
                         study_date=study.date, modality=modality, instance_number=i + 1, size=8, seed=i,
                         charset="ISO_IR 192", accession=f"ACC-{study.patient_id}")
            ds.InstitutionName, ds.BodyPartExamined = study.institution, study.body_part
            ds.StudyDescription = study.description
            ds.private_block(0x0009, "ACME 1.0", create=True).add_new(0x10, "LO", f"private note {study.patient_id}")
            out.append(write_part10(ds, tmp / f"{ds.SOPInstanceUID}.dcm").read_bytes())
    if study.report:
        sr = make_sr(study.uid, study.patient_id, study.report)
        sr.PatientName, sr.StudyDate, sr.InstitutionName = study.name, study.date, study.institution
        sr.SpecificCharacterSet, sr.StudyDescription = "ISO_IR 192", study.description
        sr.AccessionNumber, sr.PatientBirthDate, sr.PatientSex = f"ACC-{study.patient_id}", "19700101", "F"
        out.append(write_part10(sr, tmp / f"{sr.SOPInstanceUID}.dcm").read_bytes())
    return out


def _instances(study: Study) -> int:
    return sum(n for _, n in study.series) + (1 if study.report else 0)


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ArchiveProcess]:
    if not (STATIC / "index.html").is_file():
        missing("the web UI is not built: run `make ui` (Node.js 20 and npm)")
    tmp = tmp_path_factory.mktemp("web-ui")
    proc = serve(tmp).start()
    try:
        for study in STUDIES:
            status, _, body = stow(proc.http, _parts(study, tmp))
            assert status == 200, body
        wait_until(lambda: http_json(f"{proc.http}/api/search?limit=1")[1]["total"] == len(STUDIES), timeout=60)
        # the catalog too (the list's series and instance counts come from it)
        wait_until(lambda: len(http_json(f"{proc.http}/dicom-web/studies")[1] or []) == len(STUDIES), timeout=60)
        yield proc
        assert proc.stop() == 0, proc.log_tail()
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    yield from launch_chromium()


def launch_chromium(*extra_args: str) -> Iterator[Any]:
    """Debian's Chromium driven by Playwright (skip, or fail in CI, when either is absent)."""
    if not os.access(CHROMIUM, os.X_OK):
        missing(f"{CHROMIUM} is absent: apt-get install chromium (scripts/system-deps.sh)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing("the playwright package is absent: pip install -e '.[test]'")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=[*CHROMIUM_ARGS, *extra_args])
        try:
            yield chromium
        finally:
            chromium.close()


@dataclass
class Watched:
    """A page and everything it did that it must not: dialogs, script errors, CSP violations."""

    page: Any
    dialogs: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def _watch(context: Any) -> Watched:
    page = context.new_page()
    watched = Watched(page)

    def on_dialog(dialog: Any) -> None:
        watched.dialogs.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", on_dialog)
    page.on("pageerror", lambda error: watched.errors.append(f"page error: {error}"))
    page.on("response", lambda response: watched.errors.append(f"{response.status} {response.url}")
            if response.status >= 400 else None)
    page.on("console", lambda message: watched.errors.append(f"console {message.type}: {message.text}")
            if message.type == "error" else None)
    return watched


@pytest.fixture
def ui(browser: Any, archive: ArchiveProcess) -> Iterator[Watched]:
    context = browser.new_context(base_url=archive.http, locale="en-GB")
    watched = _watch(context)
    try:
        yield watched
        assert watched.dialogs == [], "a DICOM value ran as script"
        assert watched.errors == [], watched.errors  # CSP violations are console errors
    finally:
        context.close()


def rows(page: Any) -> Any:
    return page.locator("table.studies tbody tr")


def patient_cells(page: Any) -> list[str]:
    return [text.strip() for text in page.locator("table.studies tbody tr td:first-child").all_inner_texts()]


def search_for(page: Any, label: str, value: str) -> None:
    page.get_by_label(label, exact=True).fill(value)
    page.get_by_label(label, exact=True).press("Enter")


def expect_patients(page: Any, *ids: str) -> None:
    """The list shows exactly these studies (the status line says so first: the answer arrived)."""
    from playwright.sync_api import expect

    expect(page.get_by_role("status")).to_have_text(
        "No study matches." if not ids else re.compile(rf"^1–{len(ids)} of {len(ids)} stud(y|ies)$"))
    # A status that reads the same before and after (a filter that keeps the same studies) is met
    # before the new answer: the rows are what says it came (between the two, the list is empty).
    expected = sorted(BY_ID[i].shown for i in ids)
    try:
        wait_until(lambda: sorted(patient_cells(page)) == expected, timeout=10)
    except TimeoutError:
        pass  # the assertion below shows the difference
    assert sorted(patient_cells(page)) == expected


def test_search_by_patient_name_finds_the_study_with_its_counts(ui: Watched) -> None:
    page = ui.page
    page.goto("/")  # redirects to /ui/
    assert urllib.parse.urlsplit(page.url).path == "/ui/"
    expect_patients(page, *BY_ID)  # the whole archive, newest first
    search_for(page, "Patient name", "alpha")
    expect_patients(page, "UI-A")
    assert "PatientName=alpha" in page.url
    cells = rows(page).first.locator("td").all_inner_texts()
    alpha = BY_ID["UI-A"]
    # patient, ID, birth date, study date, description, modalities, series, instances
    assert cells[:8] == ["Alpha, Ann", "UI-A", "1970-01-01", "2019-07-04", "CT THORAX", "CT, SR", "2",
                         str(_instances(alpha))]


def test_free_text_finds_the_report(ui: Watched) -> None:
    page = ui.page
    page.goto("/ui/")
    search_for(page, "Search all attributes and report text", "nodule")
    expect_patients(page, "UI-A")
    search_for(page, "Search all attributes and report text", "no such finding anywhere")
    expect_patients(page)


def test_facets_narrow_the_list_and_say_how_many(ui: Watched) -> None:
    from playwright.sync_api import expect

    page = ui.page
    page.goto("/ui/")
    expect_patients(page, *BY_ID)
    modality = page.get_by_role("region", name="Modality")
    mr = modality.get_by_role("button", name=re.compile(r"^MR\s"))
    expect(mr).to_contain_text("2")  # Beta and the Greek patient
    mr.click()
    expect_patients(page, "UI-B", "UI-G")
    expect(mr).to_have_attribute("aria-pressed", "true")
    assert "Modality=MR" in page.url
    page.get_by_role("region", name="Body part").get_by_role("button", name=re.compile(r"^HEAD\s")).click()
    expect_patients(page, "UI-B", "UI-G")
    page.get_by_role("region", name="Study date").get_by_role("button", name=re.compile(r"^2023\s")).click()
    expect_patients(page, "UI-B")
    assert "StudyDate=20230101-20231231" in page.url
    # the year narrowed to months; the form shows the range
    expect(page.get_by_role("region", name="Study date").get_by_role("button", name=re.compile(r"^2023-02\s"))).to_be_visible()
    expect(page.get_by_label("Study date from")).to_have_value("2023-01-01")
    mr.click()  # pressed again: the filter goes
    expect(mr).to_have_attribute("aria-pressed", "false")
    assert "Modality" not in urllib.parse.parse_qs(urllib.parse.urlsplit(page.url).query)
    page.get_by_role("region", name="Body part").get_by_role("button", name=re.compile(r"^HEAD\s")).click()
    expect_patients(page, "UI-B", "UI-X")  # 2023, any body part, any modality


def test_a_hostile_value_is_text(ui: Watched) -> None:
    page = ui.page
    page.goto("/ui/?PatientID=UI-X")
    expect_patients(page, "UI-X")
    cells = rows(page).first.locator("td")
    assert cells.nth(4).inner_text() == HOSTILE  # the description, whole, as text
    assert cells.nth(0).inner_text() == "<img src"  # the name's first component group (PS3.5 6.2: "=" splits)
    assert page.locator("table.studies img, .facets img, .facets b").count() == 0
    assert page.get_by_role("region", name="Institution").get_by_text("<b>Harbour</b> Imaging").count() == 1
    assert page.evaluate("document.querySelectorAll('img').length") == 0


@pytest.mark.parametrize("label, typed, patient", [
    ("Patient name", "山田", "UI-J"),
    ("Search all attributes and report text", "太郎", "UI-J"),
    ("Search all attributes and report text", "腹部", "UI-J"),
    ("Patient name", "Παπαδόπουλος", "UI-G"),
    ("Patient name", "παπαδοπουλος", "UI-G"),  # case and accents folded
    ("Patient name", "müller", "UI-M"),
    ("Patient name", "Muller", "UI-M"),
    ("Search all attributes and report text", "jurgen", "UI-M"),
])
def test_non_latin_names_are_found_and_shown(ui: Watched, label: str, typed: str, patient: str) -> None:
    page = ui.page
    page.goto("/ui/")
    search_for(page, label, typed)
    expect_patients(page, patient)
    assert urllib.parse.parse_qs(urllib.parse.urlsplit(page.url).query) == {
        "PatientName" if label == "Patient name" else "q": [typed]}


def test_the_url_round_trips_a_search(ui: Watched, browser: Any, archive: ArchiveProcess) -> None:
    from playwright.sync_api import expect

    page = ui.page
    page.goto("/ui/")
    page.get_by_role("textbox", name="Modality").fill("CT")
    page.get_by_label("Study date from").fill("2020-01-01")
    page.get_by_role("button", name="Search", exact=True).first.click()
    expect_patients(page, "UI-X", "UI-J")
    page.get_by_role("button", name="Patient", exact=True).click()  # sort by name, ascending
    expect(page.get_by_role("columnheader", name="Patient", exact=True)).to_have_attribute("aria-sort", "ascending")
    bookmarked = page.url
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(bookmarked).query)
    assert query == {"Modality": ["CT"], "StudyDate": ["20200101-"], "sort": ["PatientName"]}
    names = patient_cells(page)
    assert names == ["<img src", "山田, 太郎"]  # ascending by the folded name: "<" before any letter
    # another browser session opens the bookmark: the same form, the same list in the same order
    other = browser.new_context(base_url=archive.http)
    try:
        second = _watch(other)
        second.page.goto(bookmarked)
        expect_patients(second.page, "UI-X", "UI-J")
        assert patient_cells(second.page) == names
        expect(second.page.get_by_role("textbox", name="Modality")).to_have_value("CT")
        expect(second.page.get_by_label("Study date from")).to_have_value("2020-01-01")
        assert second.dialogs == [] and second.errors == []
    finally:
        other.close()
    page.go_back()  # before the sort
    expect(page.get_by_role("columnheader", name="Patient", exact=True)).not_to_have_attribute("aria-sort", "ascending")
    page.go_forward()
    expect(page.get_by_role("columnheader", name="Patient", exact=True)).to_have_attribute("aria-sort", "ascending")


def test_the_list_works_by_keyboard(ui: Watched) -> None:
    from playwright.sync_api import expect

    page = ui.page
    page.goto("/ui/?sort=PatientName")
    expect_patients(page, *BY_ID)
    links = page.locator("table.studies a.study")
    links.first.focus()
    page.keyboard.press("ArrowDown")
    expect(links.nth(1)).to_be_focused()
    page.keyboard.press("End")
    expect(links.last).to_be_focused()
    page.keyboard.press("Home")
    expect(links.first).to_be_focused()
    # the free-text box is where the keyboard starts: first field after the skip link, the title
    # and the Upload link
    page.reload()
    expect_patients(page, *BY_ID)
    page.keyboard.press("Tab")
    expect(page.get_by_role("link", name="Skip to results")).to_be_focused()
    page.keyboard.press("Tab")
    page.keyboard.press("Tab")
    expect(page.get_by_role("link", name="Upload")).to_be_focused()
    page.keyboard.press("Tab")
    expect(page.get_by_label("Search all attributes and report text")).to_be_focused()


def test_paging_is_server_side(ui: Watched, archive: ArchiveProcess) -> None:
    """More studies than a page: the pager walks the API's offset (a page is 25 studies)."""
    from playwright.sync_api import expect

    page = ui.page
    page.goto("/ui/?offset=5&sort=PatientName")
    expect(page.get_by_role("status")).to_have_text(f"6–6 of {len(STUDIES)} studies")
    expect(page.get_by_role("button", name="Next")).to_be_disabled()
    page.get_by_role("button", name="Previous").click()
    expect(page.get_by_role("status")).to_have_text(f"1–{len(STUDIES)} of {len(STUDIES)} studies")
    assert "offset" not in page.url


def test_a_study_shows_its_series_and_the_tags_of_an_instance(ui: Watched) -> None:
    from playwright.sync_api import expect

    page = ui.page
    alpha = BY_ID["UI-A"]
    page.goto("/ui/?PatientID=UI-A")
    expect_patients(page, "UI-A")
    page.get_by_role("link", name="Alpha, Ann").click()
    expect(page.get_by_role("heading", name="Alpha, Ann")).to_be_visible()
    assert urllib.parse.urlsplit(page.url).path == f"/ui/study/{alpha.uid}"
    expect(page.get_by_role("status")).to_have_text("2 series")
    ct = page.locator(".series-card", has_text="CT")
    thumbnail = ct.get_by_role("img")
    expect(thumbnail).to_have_attribute("alt", re.compile("First image of Series 1"))
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=thumbnail.element_handle())
    assert page.locator(".series-card", has_text="SR").get_by_role("img").count() == 0  # not an image: not asked
    ct.get_by_role("button", name="Attributes").click()
    tags = page.get_by_role("region", name="Attributes")
    expect(tags.get_by_role("status")).to_have_text(re.compile(r"^[0-9]+ attributes$"))
    expect(tags.get_by_label("Instance")).to_have_value(re.compile(r"^[0-9.]+$"))
    tags.get_by_label("Filter by keyword, tag or value").fill("0009")
    body = tags.locator("tbody tr")
    expect(body).to_have_count(2)  # the private creator and its element
    assert body.nth(1).locator("td").all_inner_texts() == ["(0009,1010)", "(private)", "LO", "private note UI-A"]
    tags.get_by_label("Filter by keyword, tag or value").fill("PatientName")
    expect(body).to_have_count(1)
    assert body.first.locator("td").all_inner_texts() == ["(0010,0010)", "PatientName", "PN", "Alpha^Ann"]
    tags.get_by_label("Filter by keyword, tag or value").fill("CodeMeaning")  # none in a CT: nothing
    expect(body).to_have_count(0)
    page.go_back()
    expect_patients(page, "UI-A")
    assert urllib.parse.urlsplit(page.url).query == "PatientID=UI-A"


def test_a_study_page_shows_hostile_values_as_text(ui: Watched) -> None:
    from playwright.sync_api import expect

    page = ui.page
    page.goto(f"/ui/study/{BY_ID['UI-X'].uid}")  # a deep link: the page routes it
    expect(page.get_by_role("heading", level=2)).to_have_text("<img src")
    expect(page.locator(".study-facts dd", has_text="onerror")).to_have_text(HOSTILE)
    page.get_by_role("button", name="Attributes").click()
    tags = page.get_by_role("region", name="Attributes")
    tags.get_by_label("Filter by keyword, tag or value").fill("StudyDescription")
    expect(tags.locator("tbody tr td").nth(3)).to_have_text(HOSTILE)
    # the thumbnail is the only image on the page
    expect(page.locator("img")).to_have_count(1)


def test_axe_finds_no_serious_violation(browser: Any, archive: ArchiveProcess) -> None:
    """axe-core is injected into a context that bypasses the page's CSP for that injection only
    (the page itself runs as served)."""
    if not AXE.is_file():
        missing(f"{AXE} is absent: `make ui` installs the UI's npm packages")
    context = browser.new_context(base_url=archive.http, bypass_csp=True)
    try:
        watched = _watch(context)
        page = watched.page
        for url in ("/ui/", "/ui/?Modality=MR", "/ui/?q=no-such-term-at-all", f"/ui/study/{BY_ID['UI-A'].uid}"):
            page.goto(url)
            page.get_by_role("status").first.filter(has_not_text=re.compile("Searching|Loading")).wait_for()
            if "/study/" in url:  # with the tag browser open
                page.locator(".series-card", has_text="CT").get_by_role("button", name="Attributes").click()
                page.get_by_role("region", name="Attributes").get_by_role("status").filter(
                    has_text=re.compile("^[0-9]+ attributes$")).wait_for()
            page.add_script_tag(path=str(AXE))
            result = page.evaluate("axe.run(document, {resultTypes: ['violations']})")
            bad = [(v["id"], v["impact"], [n["target"] for n in v["nodes"]][:3])
                   for v in result["violations"] if v["impact"] in ("serious", "critical")]
            assert bad == [], (url, bad)
        assert watched.dialogs == [] and watched.errors == []
    finally:
        context.close()


def test_content_security_policy_is_strict(archive: ArchiveProcess, browser: Any) -> None:
    with urllib.request.urlopen(f"{archive.http}/ui/") as response:
        csp = response.headers["Content-Security-Policy"]
        html = response.read().decode()
        assert response.headers["Cache-Control"] == "no-cache"
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
    assert directives["default-src"] == "'none'" and directives["script-src"] == "'self'", csp
    assert "unsafe" not in csp, csp
    assert "<script>" not in html and not re.search(r"<script(?![^>]*\bsrc=)", html), "an inline script"
    assets = re.findall(r'(?:src|href)="(/ui/assets/[^"]+)"', html)
    assert any(a.endswith(".js") for a in assets) and any(a.endswith(".css") for a in assets), html
    for asset in assets:
        assert re.search(r"-[A-Za-z0-9_-]{8}\.(js|css|svg)$", asset), asset  # content-hashed
        with urllib.request.urlopen(f"{archive.http}{asset}") as response:
            assert response.headers["Cache-Control"] == "public, max-age=31536000, immutable"
    # the browser enforces it: a script injected into the served page (not bypassed) is refused
    context = browser.new_context(base_url=archive.http)
    try:
        page = context.new_page()
        violations: list[str] = []
        page.on("console", lambda m: violations.append(m.text) if "Content Security Policy" in m.text else None)
        page.goto("/ui/")
        page.get_by_role("status").filter(has_not_text="Searching").wait_for()
        page.evaluate("""() => { const s = document.createElement('script'); s.textContent = 'window.ran = 1';
                                  document.body.appendChild(s); }""")
        assert page.evaluate("window.ran === undefined")
        assert violations, "the inline script was refused without a CSP report"
    finally:
        context.close()
    # the UI's settings are JSON without patient data
    status, config = http_json(f"{archive.http}/ui/config.json")
    assert status == 200 and config == {"oidc": None, "viewer_url": None}
    assert json.dumps(config).isascii()


VIEWER = "http://127.0.0.1:1/viewer?StudyInstanceUIDs={StudyInstanceUID}"


def _one_study(proc: ArchiveProcess, tmp: Path) -> Study:
    study = BY_ID["UI-M"]
    status, _, body = stow(proc.http, _parts(study, tmp))
    assert status == 200, body
    wait_until(lambda: http_json(f"{proc.http}/api/search?limit=1")[1]["total"] == 1, timeout=60)
    return study


def test_a_configured_viewer_gets_a_link_per_study(browser: Any, tmp_path: Path) -> None:
    """ARCHIVE_UI_VIEWER_URL: each row links to the viewer with its Study Instance UID."""
    if not (STATIC / "index.html").is_file():
        missing("the web UI is not built: run `make ui` (Node.js 20 and npm)")
    from playwright.sync_api import expect

    proc = serve(tmp_path, ARCHIVE_UI_VIEWER_URL=VIEWER).start()
    try:
        study = _one_study(proc, tmp_path)
        context = browser.new_context(base_url=proc.http)
        try:
            watched = _watch(context)
            watched.page.goto("/ui/")
            link = watched.page.get_by_role("link", name="Open in viewer")
            expect(link).to_have_attribute("href", VIEWER.replace("{StudyInstanceUID}", study.uid))
            expect(link).to_have_attribute("rel", "noopener noreferrer")
            assert watched.dialogs == [] and watched.errors == []
        finally:
            context.close()
    finally:
        proc.stop()


# With sign-in on (ARCHIVE_OIDC_ISSUER): tests/e2e/test_web_ui_signin.py.
