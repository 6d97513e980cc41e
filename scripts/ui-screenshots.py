"""Screenshots of the web UI's pages for the README (docs/ui-*.png), from the browser tests' data.

    .venv/bin/python scripts/ui-screenshots.py      # needs make ui and /usr/bin/chromium

Starts an embedded ``serve`` in a temporary directory, stores the studies of
tests/e2e/test_web_ui.py (not the Japanese one: Debian's Chromium here has no CJK font, and a row
of boxes would say the page cannot show the name, which it can), and saves the search page, a
facet pressed, a study page with the tag browser open, and the upload page after a folder upload
(stored, a duplicate, a rejected file; the folder of tests/e2e/test_web_ui_upload.py), at a
laptop's 1280x800.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.e2e.harness import http_json, serve, wait_until  # noqa: E402
from tests.e2e.test_web_ui import CHROMIUM, CHROMIUM_ARGS, STUDIES, _parts  # noqa: E402
from tests.e2e.test_web_ui_upload import _folder  # noqa: E402
from tests.stow_client import stow  # noqa: E402


def main() -> None:
    from playwright.sync_api import sync_playwright

    studies = [s for s in STUDIES if s.patient_id != "UI-J"]
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        proc = serve(tmp).start()
        try:
            for study in studies:
                assert stow(proc.http, _parts(study, tmp))[0] == 200
            wait_until(lambda: http_json(f"{proc.http}/api/search?limit=1")[1]["total"] == len(studies), timeout=60)
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                page = browser.new_page(base_url=proc.http, viewport={"width": 1280, "height": 800})
                page.goto("/ui/?sort=PatientName")
                page.locator("table.studies tbody tr").first.wait_for()
                page.screenshot(path=str(ROOT / "docs" / "ui-search.png"), full_page=True)
                page.goto("/ui/?q=chest&Modality=CT")
                page.locator("table.studies tbody tr").first.wait_for()
                page.screenshot(path=str(ROOT / "docs" / "ui-search-facet.png"), full_page=True)
                alpha = next(s for s in studies if s.patient_id == "UI-A")
                _objects(page, proc.http, alpha.uid, tmp)  # the study then lists them too
                page.goto(f"/ui/study/{alpha.uid}")
                card = page.locator(".series-card", has_text="CT")
                card.get_by_role("img").wait_for()
                page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=card.get_by_role("img").element_handle())
                card.get_by_role("button", name="Attributes").click()
                page.locator(".tag-table tbody tr").first.wait_for()
                page.get_by_label("Filter by keyword, tag or value").fill("Patient")
                page.screenshot(path=str(ROOT / "docs" / "ui-study.png"), full_page=True)
                _folder(tmp / "upload")
                page.goto("/ui/upload")
                page.set_input_files("#upload-folder", tmp / "upload")
                page.locator("#upload-summary", has_text="7 of 7 files done").wait_for(timeout=60_000)
                page.screenshot(path=str(ROOT / "docs" / "ui-upload.png"), full_page=True)
                browser.close()
        finally:
            proc.stop()
    print("docs/ui-search.png, docs/ui-search-facet.png, docs/ui-study.png, docs/ui-upload.png")


def _objects(page: Any, http: str, study: str, tmp: Path) -> None:
    """A PDF and a measurement report added to the study, each shown: docs/ui-pdf.png, docs/ui-sr.png."""
    from tests.factories import write_part10
    from tests.sopclasses import make_measurement_sr, make_pdf_document, tiny_pdf

    pdf = make_pdf_document(study, "UI-A", tiny_pdf("Referral: CT thorax, follow-up of a nodule", "Page two"))
    sr = make_measurement_sr(study, "UI-A", "Solid nodule, unchanged since the previous study")
    for ds in (pdf, sr):  # the study's attributes, as tests/e2e/test_web_ui.py stores them
        ds.PatientName, ds.SeriesNumber = "Alpha^Ann", 7 if ds is pdf else 8
        ds.StudyDate, ds.AccessionNumber, ds.StudyDescription = "20190704", "ACC-UI-A", "CT THORAX"
        ds.PatientBirthDate, ds.PatientSex, ds.InstitutionName = "19700101", "F", "General Hospital"
    assert stow(http, [write_part10(ds, tmp / f"{ds.SOPInstanceUID}.dcm").read_bytes() for ds in (pdf, sr)])[0] == 200
    wait_until(lambda: len(http_json(f"{http}/dicom-web/studies/{study}/series")[1] or []) == 4, timeout=60)
    url = "/ui/study/{0.StudyInstanceUID}/series/{0.SeriesInstanceUID}/instance/{0.SOPInstanceUID}"
    for name, ds, ready in (("ui-pdf.png", pdf, "Page 1 of 2"), ("ui-sr.png", sr, "Measurement Group")):
        page.goto(url.format(ds))
        page.get_by_text(ready).first.wait_for()
        page.screenshot(path=str(ROOT / "docs" / name), full_page=True)
    print("docs/ui-pdf.png, docs/ui-sr.png")


if __name__ == "__main__":
    main()
