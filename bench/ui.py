"""Web UI benchmark: time to the first rendered row of the study list, in headless Chromium.

    .venv/bin/python bench/ui.py [--studies 3000] [--instances 3] [--repeat 7] [--out results.json]
    .venv/bin/python bench/ui.py --synthetic 1000000 [--family sqlite|postgres] [--repeat 7]

One ``dicom-archive serve`` (embedded backends: SQLite catalog, FTS5 search) gets ``--studies``
studies of ``--instances`` small CT instances each over STOW-RS (100 instances a request), with
names, dates, modalities and institutions varied so that each query below matches a realistic
share. Then, per query, Chromium (Debian's, driven by Playwright) opens the page ``--repeat``
times in a fresh context (cold: nothing cached) and as many times in one context (warm: the
hashed assets cached); an init script (outside the page, so the page's CSP applies unchanged)
records ``performance.now()`` when the first row of the list enters the DOM: the time from
navigation start to the first row a user sees. The search API's share is its Resource Timing
(request start to response end) in the same load. Needs ``make ui`` and /usr/bin/chromium.

``--synthetic N`` measures a large archive instead: the query benchmark's synthetic hospital
(bench/_querydata.py, ~65 instances a study) bulk loaded straight into the catalog and search index
of ``--family`` (SQLite + FTS5, or PostgreSQL + OpenSearch on the services of
``scripts/services.sh``), served by a ``dicom-archive query`` process (the role that serves /ui/).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from tests.e2e.harness import http_json, serve, wait_until  # noqa: E402
from tests.factories import make_ct, new_uid, write_part10  # noqa: E402
from tests.stow_client import stow  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]
FAMILIES = ["Smith", "Müller", "Garcia", "Nguyen", "Papadopoulos", "山田", "Kowalski", "Okafor", "Rossi", "Jensen"]
MODALITIES = ["CT", "MR", "CR", "US", "MG"]
INSTITUTIONS = ["General Hospital", "Saint Mary Clinic", "Harbour Imaging", "Klinikum Süd"]
FIRST_ROW = """
window.__firstRow = null;
new MutationObserver((_, observer) => {
  if (document.querySelector('table.studies tbody tr')) { window.__firstRow = performance.now(); observer.disconnect(); }
}).observe(document, {subtree: true, childList: true});
"""
QUERIES = {
    "everything, newest first": "/ui/",
    "patient name prefix": "/ui/?PatientName=m%C3%BCller",
    "free text": "/ui/?q=garcia",
    "facet Modality=MR": "/ui/?Modality=MR",
    "sorted by name, a middle page": "/ui/?sort=PatientName&offset={middle}",
}


def load(base: str, studies: int, per_study: int, tmp: Path) -> float:
    rng = random.Random(7)
    parts: list[bytes] = []
    started = time.perf_counter()
    for n in range(studies):
        study, series = new_uid(), new_uid()
        family = FAMILIES[n % len(FAMILIES)]
        date = f"{2010 + n % 15}{1 + n % 12:02d}{1 + n % 28:02d}"
        modality = MODALITIES[rng.randrange(len(MODALITIES))]
        for i in range(per_study):
            ds = make_ct(study_uid=study, series_uid=series, patient_id=f"B-{n:06d}", patient_name=f"{family}^P{n:05d}",
                         study_date=date, modality=modality, instance_number=i + 1, size=8, seed=i,
                         charset="ISO_IR 192", accession=f"A{n:07d}")
            ds.InstitutionName = INSTITUTIONS[n % len(INSTITUTIONS)]
            ds.StudyDescription = f"{modality} study {n}"
            path = write_part10(ds, tmp / "part.dcm")
            parts.append(path.read_bytes())
        if len(parts) >= 100 or n == studies - 1:
            status, _, body = stow(base, parts)
            if status != 200:
                raise RuntimeError(f"STOW-RS answered {status}: {str(body)[:300]}")
            parts = []
    wait_until(lambda: http_json(f"{base}/api/search?limit=1", timeout=30)[1]["total"] == studies, timeout=600,
               interval=1.0)
    return time.perf_counter() - started


def measure(page: Any, url: str) -> tuple[float, float, int]:
    page.goto(url)
    page.wait_for_selector("table.studies tbody tr", timeout=30_000)
    first_row = page.evaluate("() => window.__firstRow")
    api = page.evaluate("""performance.getEntriesByType('resource').filter(e => e.name.includes('/api/search'))
                           .map(e => e.responseEnd - e.requestStart).pop()""")
    status = page.get_by_role("status").inner_text()  # "26–50 of 3000 studies"
    return float(first_row), float(api), int(status.split(" of ")[1].split()[0])


def summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {"median_ms": round(statistics.median(ordered), 1), "min_ms": round(ordered[0], 1),
            "max_ms": round(ordered[-1], 1)}


def browse(base: str, studies: int, repeat: int) -> dict[str, Any]:
    """Each query of QUERIES ``repeat`` times cold and warm: first rendered row and search API time."""
    from playwright.sync_api import sync_playwright

    out: dict[str, Any] = {}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        warm = browser.new_context(base_url=base)
        warm.add_init_script(FIRST_ROW)
        warm_page = warm.new_page()
        middle = (studies // 2) // 25 * 25
        for name, template in QUERIES.items():
            url = template.format(middle=middle)
            total = 0
            cold_rows, cold_api, warm_rows, warm_api = [], [], [], []
            for _ in range(repeat):
                context = browser.new_context(base_url=base)
                context.add_init_script(FIRST_ROW)
                row, api, total = measure(context.new_page(), url)
                context.close()
                cold_rows.append(row)
                cold_api.append(api)
                row, api, total = measure(warm_page, url)
                warm_rows.append(row)
                warm_api.append(api)
            out[name] = {"url": url, "matches": total, "cold": summary(cold_rows), "warm": summary(warm_rows),
                         "api_cold": summary(cold_api), "api_warm": summary(warm_api)}
            print(f"{name:30s} {total:6d} matches  first row cold {summary(cold_rows)['median_ms']:7.1f} ms, "
                  f"warm {summary(warm_rows)['median_ms']:7.1f} ms  (search API "
                  f"{summary(warm_api)['median_ms']:.1f} ms)", flush=True)
        browser.close()
    return out


def stowed(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {"studies": args.studies, "instances": args.studies * args.instances,
                               "backends": "embedded serve (SQLite + FTS5), loaded over STOW-RS"}
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        proc = serve(tmp).start()
        try:
            results["load_seconds"] = round(load(proc.http, args.studies, args.instances, tmp), 1)
            print(f"loaded {args.studies} studies, {results['instances']} instances in {results['load_seconds']} s",
                  flush=True)
            results["queries"] = browse(proc.http, args.studies, args.repeat)
        finally:
            proc.stop()
    return results


def synthetic(args: argparse.Namespace) -> dict[str, Any]:
    import asyncio

    from _querydata import Hospital
    from _queryload import FAMILIES, QueryService

    with tempfile.TemporaryDirectory() as tmpdir:
        family = FAMILIES[args.family](Path(tmpdir) / args.family)
        hospital = Hospital(seed=1437)

        async def fill() -> float:
            started = time.perf_counter()
            try:
                await family.setup()
                await family.bulk_mode(True)
                loaded = 0
                while loaded < args.synthetic:
                    chunk = hospital.take(min(50_000, args.synthetic - loaded))
                    await family.load(chunk)
                    loaded += len(chunk)
                    print(f"loaded {loaded}/{args.synthetic} instances", flush=True)
                await family.bulk_mode(False)
                await family.analyze()
            finally:
                await family.close()
            return time.perf_counter() - started

        service: QueryService | None = None
        try:
            seconds = asyncio.run(fill())
            studies = hospital.samples.studies
            results: dict[str, Any] = {"studies": studies, "instances": args.synthetic, "load_seconds": round(seconds, 1),
                                       "backends": f"{family.label}, synthetic rows, `dicom-archive query`"}
            print(f"{studies} studies, {args.synthetic} instances loaded in {seconds:.0f} s", flush=True)
            service = QueryService(family)
            service.start()
            results["queries"] = browse(service.base, studies, args.repeat)
        finally:
            if service is not None:
                service.stop()
            family.teardown()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--studies", type=int, default=3000)
    parser.add_argument("--instances", type=int, default=3)
    parser.add_argument("--synthetic", type=int, metavar="N", help="N synthetic instances loaded into the backends")
    parser.add_argument("--family", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    results = synthetic(args) if args.synthetic else stowed(args)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
