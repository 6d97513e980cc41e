"""Stack viewer benchmark: time to the first image and to the whole series, and frames per second
while scrolling and while dragging the window, in headless Chromium (WebGL2 through SwiftShader).

    .venv/bin/python bench/viewer.py [--slices 200] [--size 512] [--repeat 3] [--out results.json]

One ``dicom-archive serve`` (embedded backends) gets a CT series of ``--slices`` slices of
``--size`` x ``--size`` signed 16-bit pixels (a phantom with noise, rescale -1024) over STOW-RS.
Then, ``--repeat`` times in a fresh browser context (nothing cached), the viewer page is opened:
an init script (outside the page: its CSP applies unchanged) records ``performance.now()`` when
the canvas first shows a frame (``data-shown``) and when the progress line says every image is
loaded; both are times from navigation start. Once loaded:

- scrolling: a ``requestAnimationFrame`` loop in the page presses ArrowDown on the canvas once per
  animation frame, through the stack and back up; frames per second = images drawn / seconds;
- window: the mouse (Playwright's real input events) drags over the canvas for ``--drag-moves``
  moves; frames per second = draws the page made / seconds, measured in the page.

Chromium draws at most one frame per display refresh (60 Hz headless), so 60 is the ceiling.
Needs ``make ui`` and /usr/bin/chromium.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.e2e.harness import http_json, serve, wait_until  # noqa: E402
from tests.factories import make_ct, new_uid, write_part10  # noqa: E402
from tests.stow_client import stow  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--enable-unsafe-swiftshader", "--use-angle=swiftshader"]
MILESTONES = """
window.__firstImage = null; window.__allLoaded = null;
new MutationObserver(() => {
  const canvas = document.getElementById('viewer-image');
  if (window.__firstImage === null && canvas && canvas.dataset.shown === '0') window.__firstImage = performance.now();
  const progress = document.getElementById('viewer-progress');
  if (window.__allLoaded === null && progress && progress.textContent.startsWith('All ')) window.__allLoaded = performance.now();
}).observe(document, {subtree: true, childList: true, attributes: true, characterData: true});
"""
# where the time to the first image goes: the page's script, the metadata, the first frame (ms from navigation start)
BREAKDOWN = """(() => {
  const nav = performance.getEntriesByType('navigation')[0];
  const res = performance.getEntriesByType('resource');
  const end = (test) => Math.round(Math.min(...res.filter((e) => test(e.name)).map((e) => e.responseEnd)));
  return {html: Math.round(nav.responseEnd), script: end((n) => n.endsWith('.js')),
          metadata: end((n) => n.endsWith('/metadata')), first_frame: end((n) => n.includes('/frames/'))};
})()"""
# the ceiling on this machine now: animation frames per second of the page doing nothing
IDLE_RAF = """() => new Promise((resolve) => {
  let frames = 0; const t0 = performance.now();
  const tick = (now) => { if (now - t0 < 1000) { frames++; requestAnimationFrame(tick); } else resolve(frames * 1000 / (now - t0)); };
  requestAnimationFrame(tick);
})"""
# the ceiling of software WebGL here now: a bare canvas of the viewer's size, cleared once per animation frame
CLEAR_BASELINE = """async ([w, h]) => {
  const c = document.createElement('canvas'); c.width = w; c.height = h;
  c.style.width = `${w / devicePixelRatio}px`; c.style.height = `${h / devicePixelRatio}px`;
  document.body.append(c);
  const gl = c.getContext('webgl2', {antialias: false, depth: false, alpha: false});
  return await new Promise((resolve) => {
    let n = 0; const t0 = performance.now();
    const tick = () => { gl.clearColor(n % 2, 0, 0, 1); gl.clear(gl.COLOR_BUFFER_BIT); n++;
      if (n < 120) requestAnimationFrame(tick); else resolve(n * 1000 / (performance.now() - t0)); };
    requestAnimationFrame(tick);
  });
}"""
SCROLL = """async (steps) => {
  const canvas = document.getElementById('viewer-image');
  canvas.focus();
  const draws0 = Number(canvas.dataset.draws);
  const n = Number(document.querySelector('.viewer-slider').max);
  return await new Promise((resolve) => {
    let done = 0; const t0 = performance.now();
    const tick = () => {
      const key = Math.floor(done / (n - 1)) % 2 === 0 ? 'ArrowDown' : 'ArrowUp';
      if (done < steps) {
        canvas.dispatchEvent(new KeyboardEvent('keydown', {key, bubbles: true}));
        done++;
        requestAnimationFrame(tick);
      } else {
        requestAnimationFrame(() => resolve({ms: performance.now() - t0, draws: Number(canvas.dataset.draws) - draws0}));
      }
    };
    requestAnimationFrame(tick);
  });
}"""


def phantom(i: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """A body (soft tissue), lungs (air-like) that change with the slice, a spine (bone), noise."""
    y, x = np.mgrid[:size, :size] / size
    body = ((x - 0.5) / 0.42) ** 2 + ((y - 0.5) / 0.32) ** 2 < 1
    lung_r = 0.12 + 0.06 * np.sin(np.pi * i / 200)
    lungs = (np.hypot(x - 0.33, y - 0.47) < lung_r) | (np.hypot(x - 0.67, y - 0.47) < lung_r)
    spine = np.hypot(x - 0.5, y - 0.72) < 0.05
    hu = np.full((size, size), -1000.0)
    hu[body] = 40
    hu[lungs] = -800
    hu[spine] = 700
    hu += rng.normal(0, 15, hu.shape)
    return np.clip(hu + 1024, -2048, 32767).astype(np.int16)


def load(base: str, slices: int, size: int, tmp: Path) -> tuple[str, str, float]:
    study, series = new_uid(), new_uid()
    rng = np.random.default_rng(5)
    started = time.perf_counter()
    parts: list[bytes] = []
    for i in range(slices):
        ds = make_ct(study_uid=study, series_uid=series, patient_id="BENCH-VIEWER", instance_number=i + 1, size=size)
        ds.PixelRepresentation, ds.BitsStored, ds.HighBit = 1, 16, 15
        ds.PixelData = phantom(i, size, rng).tobytes()
        ds.WindowCenter, ds.WindowWidth = 40, 400
        ds.ImageOrientationPatient, ds.ImagePositionPatient = [1, 0, 0, 0, 1, 0], [0, 0, -1.25 * i]
        ds.SeriesDescription = f"BENCH {slices} SLICES"
        parts.append(write_part10(ds, tmp / "part.dcm").read_bytes())
        if len(parts) >= 20 or i == slices - 1:
            status, _, body = stow(base, parts)
            if status != 200:
                raise RuntimeError(f"STOW-RS answered {status}: {str(body)[:300]}")
            parts = []
    wait_until(lambda: len(http_json(f"{base}/dicom-web/studies/{study}/series/{series}/instances", timeout=30)[1] or [])
               == slices, timeout=600, interval=1.0)
    return study, series, time.perf_counter() - started


def drag_fps(page: Any, moves: int) -> dict[str, float]:
    canvas = page.locator("#viewer-image")
    box = canvas.bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(cx, cy)
    page.mouse.down()
    start = page.evaluate("[performance.now(), Number(document.getElementById('viewer-image').dataset.draws)]")
    for k in range(moves):
        dx = 120 * np.sin(k / 15)
        page.mouse.move(cx + dx, cy + dx / 3)
    page.evaluate("new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)))")
    end = page.evaluate("[performance.now(), Number(document.getElementById('viewer-image').dataset.draws)]")
    page.mouse.up()
    seconds = (end[0] - start[0]) / 1000
    return {"fps": round((end[1] - start[1]) / seconds, 1), "seconds": round(seconds, 2),
            "moves_per_s": round(moves / seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slices", type=int, default=200)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--drag-moves", type=int, default=300)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    from playwright.sync_api import expect, sync_playwright

    results: dict[str, Any] = {"slices": args.slices, "size": args.size, "load_before": os.getloadavg()[0], "runs": []}
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        proc = serve(tmp).start()
        try:
            study, series, seconds = load(proc.http, args.slices, args.size, tmp)
            results["store_seconds"] = round(seconds, 1)
            print(f"stored {args.slices} slices of {args.size}x{args.size} in {seconds:.1f} s", flush=True)
            url = f"{proc.http}/ui/study/{study}/series/{series}"
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
                for run in range(args.repeat):
                    context = browser.new_context(viewport={"width": 1280, "height": 900})
                    context.add_init_script(MILESTONES)
                    page = context.new_page()
                    page.goto(url)
                    expect(page.locator("#viewer-progress")).to_have_text(re.compile("^All "), timeout=300_000)
                    first, everything = page.evaluate("[window.__firstImage, window.__allLoaded]")
                    steps = page.evaluate(BREAKDOWN)
                    idle = page.evaluate(IDLE_RAF)
                    scroll = page.evaluate(SCROLL, 2 * (args.slices - 1))
                    drag = drag_fps(page, args.drag_moves)
                    size = page.evaluate("(() => { const c = document.getElementById('viewer-image'); return [c.width, c.height]; })()")
                    blank = context.new_page()
                    baseline = blank.evaluate(CLEAR_BASELINE, size)
                    blank.close()
                    row = {"first_image_ms": round(first), "all_loaded_ms": round(everything),
                           "scroll_fps": round(scroll["draws"] / (scroll["ms"] / 1000), 1),
                           "scroll_images": scroll["draws"], "idle_raf_fps": round(idle, 1),
                           "clear_baseline_fps": round(baseline, 1), "canvas": size, "drag": drag, "load": os.getloadavg()[0], "steps": steps}
                    results["runs"].append(row)
                    print(f"run {run + 1}: first image {row['first_image_ms']} ms, all {args.slices} loaded "
                          f"{row['all_loaded_ms']} ms, idle page {row['idle_raf_fps']} fps, bare canvas {row['clear_baseline_fps']} fps, scrolling {row['scroll_fps']} fps, window drag {drag['fps']} fps "
                          f"(load {row['load']:.1f}); {steps}", flush=True)
                    context.close()
                browser.close()
        finally:
            proc.stop()
    runs = results["runs"]
    for key in ("first_image_ms", "all_loaded_ms", "scroll_fps", "clear_baseline_fps", "idle_raf_fps"):
        results[f"median_{key}"] = statistics.median(r[key] for r in runs)
    results["median_drag_fps"] = statistics.median(r["drag"]["fps"] for r in runs)
    print(json.dumps({k: v for k, v in results.items() if k.startswith("median")}))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
