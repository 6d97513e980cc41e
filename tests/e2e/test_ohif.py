"""A real viewer against the archive: OHIF (the ``@ohif/app`` package's prebuilt ``dist/`` from
npm) opens a study through our DICOMweb and draws an image.

OHIF is served by the test at the root of its own loopback origin, with an ``app-config.js`` of
the test's own naming the archive's ``/dicom-web`` as its one data source; the archive allows that
origin by CORS (``ARCHIVE_CORS_ORIGINS``). Chromium opens ``/viewer?StudyInstanceUIDs=<uid>``; the
test waits until the viewport's canvas holds a non-blank image (its pixels read back), and prints
every request the viewer made to the archive (method, path, Accept, status) into the run's
output, outside pytest's capture (so ``make test`` shows it too), and into ``ohif-requests.txt``
in the test's tmp_path.

OHIF: ``bash scripts/ohif.sh`` (``make ohif``; ``make test`` runs it) fetches the version pinned in
tests/ohif/ohif.json into ~/.cache/dicom-archive/ohif/<version>/dist. Chromium: Debian's
(scripts/system-deps.sh), WebGL2 through SwiftShader (no GPU here).
"""

from __future__ import annotations

import json
import mimetypes
import os
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
from pydicom.dataset import Dataset

from tests.conftest import free_port, missing
from tests.e2e.harness import ROOT, ArchiveProcess, http_json, serve, wait_until
from tests.e2e.test_web_ui import launch_chromium
from tests.factories import make_ct, new_uid, write_part10
from tests.stow_client import stow

PIN = json.loads((ROOT / "tests" / "ohif" / "ohif.json").read_text())
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dicom-archive"
OHIF_DIST = Path(os.environ.get("OHIF_DIST") or CACHE / "ohif" / PIN["version"] / "dist")
# WebGL2 without a GPU: SwiftShader (cornerstone3D renders with WebGL; OHIF's CPU fallback is not
# what a radiologist's browser runs).
WEBGL_ARGS = ["--enable-unsafe-swiftshader", "--use-angle=swiftshader", "--enable-webgl", "--ignore-gpu-blocklist"]
SLICES = 5
SIZE = 128


def app_config(dicomweb: str) -> str:
    """OHIF's window.config: one DICOMweb data source, the archive (PS3.18 QIDO-RS, WADO-RS)."""
    source = {
        "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
        "sourceName": "archive",
        "configuration": {
            "friendlyName": "dicom-archive",
            "name": "archive",
            "qidoRoot": dicomweb,
            "wadoRoot": dicomweb,
            "wadoUriRoot": dicomweb,
            "qidoSupportsIncludeField": True,
            "supportsReject": False,
            "imageRendering": "wadors",
            "thumbnailRendering": "wadors",
            "enableStudyLazyLoad": True,
            "supportsFuzzyMatching": False,
            "supportsWildcard": True,
            "staticWado": False,
            "singlepart": "bulkdata,video,pdf",
            "omitQuotationForMultipartRequest": True,
            "bulkDataURI": {"enabled": True},
        },
    }
    config = {
        "routerBasename": "/",
        "extensions": [],
        "modes": [],
        "showStudyList": True,
        "maxNumberOfWebWorkers": 1,
        "showWarningMessageForCrossOrigin": False,
        "showCPUFallbackMessage": True,
        "showLoadingIndicator": True,
        "strictZSpacingForVolumeViewport": True,
        "defaultDataSourceName": "archive",
        "investigationalUseDialog": {"option": "never"},
        "dataSources": [source],
    }
    return f"window.config = {json.dumps(config, indent=2)};\n"


class _OhifHandler(SimpleHTTPRequestHandler):
    """OHIF's dist/ as a single-page app: the test's app-config.js, index.html for app routes."""

    config = b""
    extensions_map: ClassVar[dict[str, str]] = {**SimpleHTTPRequestHandler.extensions_map, ".wasm": "application/wasm",
                      ".js": "text/javascript", ".mjs": "text/javascript", ".json": "application/json"}

    def do_GET(self) -> None:
        path = urllib.parse.urlsplit(self.path).path
        if path == "/app-config.js":
            self.send_response(200)
            self.send_header("Content-Type", "text/javascript")
            self.send_header("Content-Length", str(len(self.config)))
            self.end_headers()
            self.wfile.write(self.config)
            return
        if path == "/sw.js":  # no service worker between the viewer and the archive
            self.send_error(404)
            return
        if not Path(self.translate_path(path)).exists():
            self.path = "/index.html"  # the viewer's own routes (/viewer, ...), as its _redirects says
        super().do_GET()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@dataclass(frozen=True)
class Ohif:
    origin: str
    server: ThreadingHTTPServer


def _ohif_server(port: int, dicomweb: str) -> ThreadingHTTPServer:
    mimetypes.add_type("application/wasm", ".wasm")
    handler = type("Handler", (_OhifHandler,), {"config": app_config(dicomweb).encode()})
    server = ThreadingHTTPServer(("127.0.0.1", port), partial(handler, directory=str(OHIF_DIST)))
    threading.Thread(target=server.serve_forever, daemon=True, name="ohif-static").start()
    return server


def _phantom(index: int) -> np.ndarray:
    """A CT slice: air around a water disc with a bone ring and a lesion that moves (HU + 1024)."""
    y, x = np.mgrid[:SIZE, :SIZE]
    r = np.hypot(x - SIZE / 2, y - SIZE / 2)
    hu = np.full((SIZE, SIZE), -1000.0)
    hu[r < SIZE * 0.42] = 40.0
    hu[(r >= SIZE * 0.36) & (r < SIZE * 0.42)] = 900.0
    hu[np.hypot(x - SIZE * (0.35 + 0.06 * index), y - SIZE * 0.55) < SIZE * 0.08] = 200.0
    hu += np.random.default_rng(index).normal(0, 8, hu.shape)
    return np.clip(hu + 1024, 0, 4095).astype(np.uint16)


def _study(tmp: Path) -> tuple[str, list[bytes]]:
    study, series, frame_of_reference = new_uid(), new_uid(), new_uid()
    parts = []
    for i in range(SLICES):
        ds: Dataset = make_ct(study_uid=study, series_uid=series, patient_id="OHIF-1", patient_name="Viewer^Real",
                              instance_number=i + 1, size=SIZE)
        ds.ImagePositionPatient = [-SIZE * 0.35, -SIZE * 0.35, -10.0 + 2.5 * i]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [0.7, 0.7]
        ds.SliceThickness = 2.5
        ds.SliceLocation = -10.0 + 2.5 * i
        ds.FrameOfReferenceUID = frame_of_reference
        ds.WindowCenter, ds.WindowWidth = 40, 400
        ds.PixelData = _phantom(i).tobytes()
        parts.append(write_part10(ds, tmp / f"{ds.SOPInstanceUID}.dcm").read_bytes())
    return study, parts


@pytest.fixture(scope="module")
def ohif_dist() -> Path:
    if not (OHIF_DIST / "index.html").is_file():
        missing(f"the OHIF viewer is absent ({OHIF_DIST}): run `make ohif` (bash scripts/ohif.sh)")
    return OHIF_DIST


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, ohif_dist: Path) -> Iterator[tuple[ArchiveProcess, Ohif, str]]:
    tmp = tmp_path_factory.mktemp("ohif")
    ohif_port = free_port()
    origin = f"http://127.0.0.1:{ohif_port}"
    proc = serve(tmp, ARCHIVE_CORS_ORIGINS=origin).start()  # that origin only, not "*"
    server = _ohif_server(ohif_port, f"{proc.http}/dicom-web")
    try:
        study, parts = _study(tmp)
        status, _, body = stow(proc.http, parts)
        assert status == 200, body
        wait_until(lambda: len(http_json(f"{proc.http}/dicom-web/studies/{study}/instances")[1] or []) == SLICES,
                   timeout=60)
        yield proc, Ohif(origin, server), study
        assert proc.stop() == 0, proc.log_tail()
    finally:
        server.shutdown()
        server.server_close()
        proc.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    yield from launch_chromium(*WEBGL_ARGS)


# The drawn viewport: cornerstone3D renders into a 2D canvas per viewport (.cornerstone-canvas).
# Its pixels, read back, summarised: how many differ from the first, and the luminance spread.
CANVAS_STATS = """() => {
  const canvas = document.querySelector('.cornerstone-canvas');
  if (!canvas || !canvas.width || !canvas.height) return null;
  const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
  let sum = 0, sq = 0, n = 0, levels = new Set();
  for (let i = 0; i < data.length; i += 4) {
    const l = 0.299 * data[i] + 0.587 * data[i + 1] + 0.114 * data[i + 2];
    sum += l; sq += l * l; n++; levels.add(data[i]);
  }
  const mean = sum / n;
  // The image is fitted to the viewport and centred: a point inside the water disc (a fifth of
  // the shorter side above the centre, away from the lesion) and the top-left corner (air).
  const at = (x, y) => data[4 * (Math.round(y) * canvas.width + Math.round(x))];
  const side = Math.min(canvas.width, canvas.height);
  return {width: canvas.width, height: canvas.height, mean, std: Math.sqrt(sq / n - mean * mean),
          levels: levels.size, water: at(canvas.width / 2, canvas.height / 2 - 0.2 * side), air: at(2, 2)};
}"""


def test_ohif_opens_a_study_and_draws_an_image(stack: tuple[ArchiveProcess, Ohif, str], browser: Any,
                                                tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    archive, ohif, study = stack
    context = browser.new_context(base_url=ohif.origin, service_workers="block", viewport={"width": 1280, "height": 800})
    requests: list[dict[str, Any]] = []
    failed: list[str] = []
    errors: list[str] = []
    stats: dict[str, Any] | None = None

    def on_finished(request: Any) -> None:
        if not request.url.startswith(archive.http):
            return
        response = request.response()
        url = urllib.parse.urlsplit(request.url)
        requests.append({"method": request.method, "path": url.path + (f"?{url.query}" if url.query else ""),
                         "accept": request.headers.get("accept", ""), "status": response.status if response else None})

    def on_failed(request: Any) -> None:
        if request.url.startswith(archive.http):
            failed.append(f"{request.method} {request.url}: {request.failure}")

    context.on("requestfinished", on_finished)
    context.on("requestfailed", on_failed)
    page = context.new_page()
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("console", lambda message: errors.append(f"console: {message.text}") if message.type == "error" else None)
    try:
        page.goto(f"/viewer?StudyInstanceUIDs={study}")
        stats = wait_until(lambda: _drawn(page), timeout=150, interval=0.25)
        page.locator(".cornerstone-canvas").first.screenshot(path=tmp_path / "ohif-viewport.png")
        webgl = page.evaluate("() => !!document.createElement('canvas').getContext('webgl2')")
    finally:
        report = "\n".join(f"{r['method']:6} {r['status']} {r['path']}  Accept: {r['accept']}" for r in requests)
        (tmp_path / "ohif-requests.txt").write_text(report + "\n")
        with capsys.disabled():  # in the run's output, passed or failed, whatever -r says
            print(f"\nOHIF {PIN['version']} -> archive, {len(requests)} requests:\n{report}")
            if failed or errors:
                print("failed requests:", *failed, "page errors and console errors:", *errors, sep="\n  ")
            print(f"viewport: {stats or 'not drawn'}")
        context.close()
    assert webgl, "no WebGL2 in this chromium (SwiftShader flags)"
    assert stats is not None
    assert stats["std"] > 10 and stats["levels"] > 16, stats  # an image, not a blank or flat canvas
    # ... and it is our phantom through the data's VOI (W 400 / L 40): water 40 HU at mid-grey
    # (127 ± the noise), air black. A viewer that ignored the rescale or the window would miss.
    assert 95 <= stats["water"] <= 160 and stats["air"] <= 10, stats
    assert failed == []
    paths = [r["path"] for r in requests]
    assert any(p.startswith("/dicom-web/studies?") for p in paths)  # QIDO-RS for the study
    assert any(p.endswith("/metadata") for p in paths)  # WADO-RS metadata of its series
    frames = [r for r in requests if "/frames/" in r["path"] or r["path"].endswith("/rendered")]
    assert frames and all(r["status"] == 200 for r in frames), requests
    assert all(r["status"] < 400 for r in requests), requests


def _drawn(page: Any) -> dict[str, Any] | None:
    stats: dict[str, Any] | None = page.evaluate(CANVAS_STATS)
    return stats if stats and stats["std"] > 10 and stats["levels"] > 16 else None
