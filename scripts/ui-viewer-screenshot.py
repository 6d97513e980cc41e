"""The stack viewer's screenshot for the README (docs/ui-viewer.png): bench/viewer.py's CT phantom.

    .venv/bin/python scripts/ui-viewer-screenshot.py   # needs make ui, /usr/bin/chromium
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.viewer import ARGS, CHROMIUM, load  # noqa: E402
from tests.e2e.harness import serve  # noqa: E402


def main() -> None:
    from playwright.sync_api import expect, sync_playwright

    with tempfile.TemporaryDirectory() as tmpdir:
        proc = serve(Path(tmpdir)).start()
        try:
            study, series, _ = load(proc.http, 40, 512, Path(tmpdir))
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
                page = browser.new_page(base_url=proc.http, viewport={"width": 1100, "height": 820})
                page.goto(f"/ui/study/{study}/series/{series}")
                expect(page.locator("#viewer-progress")).to_have_text("All 40 images loaded", timeout=120_000)
                canvas = page.locator("#viewer-image")
                canvas.press("End")
                canvas.press("PageUp")
                expect(canvas).to_have_attribute("data-smooth", "1")
                page.screenshot(path=str(ROOT / "docs" / "ui-viewer.png"))
                browser.close()
        finally:
            proc.stop()
    print("docs/ui-viewer.png")


if __name__ == "__main__":
    main()
