"""Upload throughput: a folder of N instances uploaded through the web UI's upload page (headless
Chromium, STOW-RS with a bounded number of requests in flight) against DCMTK storescu sending the
same files, each to a fresh `dicom-archive serve` (embedded, fsync on) on loopback.

    .venv/bin/python bench/upload.py [--count 500] [--repeat 2] [--size 512] [--out results.json]

Times: from handing the folder to the page (or starting storescu) until the page's summary says
every file is done (storescu: until it exits), and until QIDO-RS finds every instance (indexed).
Needs ``make ui`` and /usr/bin/chromium.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _receivers import Serve  # noqa: E402
from _util import SliceFactory, install_signal_handlers, kill_all  # noqa: E402
from ingest import storescu  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]


def log(msg: str) -> None:
    print(f"[upload {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _indexed(serve: Serve, batch: Any, started: float) -> float:
    deadline = time.monotonic() + 600
    while serve.stored(batch) < len(batch.files):
        if time.monotonic() > deadline:
            raise TimeoutError("not indexed")
        time.sleep(0.05)
    return time.perf_counter() - started


def with_storescu(work: Path, batch: Any, assocs: int) -> dict[str, float]:
    serve = Serve(work)
    serve.start()
    try:
        started = time.perf_counter()
        sent = storescu(serve, batch.files, assocs, timeout=600)
        return {"sent_s": sent, "indexed_s": _indexed(serve, batch, started)}
    finally:
        serve.stop()


def with_browser(work: Path, batch: Any, playwright: Any) -> dict[str, float]:
    serve = Serve(work)
    serve.start()
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
    try:
        page = browser.new_page(base_url=f"http://127.0.0.1:{serve.http_port}")
        page.goto("/ui/upload")
        page.wait_for_selector("#upload-folder", state="attached")
        count = len(batch.files)
        started = time.perf_counter()
        page.set_input_files("#upload-folder", batch.directory)
        page.wait_for_function(
            "n => (document.querySelector('#upload-summary')?.textContent || '').startsWith(`${n} of ${n} files done`)",
            arg=count, timeout=600_000, polling=50)
        sent = time.perf_counter() - started
        summary = page.locator("#upload-summary").inner_text()
        if f"{count} stored" not in summary:
            raise RuntimeError(f"the page says: {summary}")
        return {"sent_s": sent, "indexed_s": _indexed(serve, batch, started)}
    finally:
        browser.close()
        serve.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--size", type=int, default=512, help="rows and columns of each CT slice")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    install_signal_handlers()
    from playwright.sync_api import sync_playwright

    work = Path(tempfile.mkdtemp(prefix="bench-upload-"))
    rows: list[dict[str, Any]] = []
    try:
        factory = SliceFactory(work, size=args.size)
        with sync_playwright() as playwright:
            for r in range(args.repeat):
                for scenario in ("browser", "storescu-1", "storescu-4"):
                    batch = factory.batch(work / f"folder-{scenario}-{r}", args.count, studies=4)
                    log(f"run {r + 1}/{args.repeat}: {scenario}")
                    if scenario == "browser":
                        row = with_browser(work / f"{scenario}-{r}", batch, playwright)
                    else:
                        row = with_storescu(work / f"{scenario}-{r}", batch, int(scenario[-1]))
                    row = {"scenario": scenario, **row, "per_s": args.count / row["sent_s"]}
                    rows.append(row)
                    log(json.dumps(row))
                    batch.remove()
    finally:
        kill_all()
        shutil.rmtree(work, ignore_errors=True)
    summary = {name: {k: statistics.median(x[k] for x in rows if x["scenario"] == name)
                      for k in ("sent_s", "indexed_s", "per_s")} for name in ("browser", "storescu-1", "storescu-4")}
    out = {"count": args.count, "size": args.size, "runs": rows, "summary": summary}
    print(json.dumps(out, indent=2))
    if args.out:
        args.out.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
