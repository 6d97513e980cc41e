"""The stack viewer in Chromium (Playwright) against its own ``dicom-archive serve``: WebGL2 through
SwiftShader (headless Chromium has no GPU), frames over WADO-RS frames, pixels compared.

One study of generated series: a CT stack (signed 12-bit pixels, rescale -1024, window from the
data, sorted by position, not by Instance Number), an MR (unsigned, no window: full range), a
multi-frame, the same multi-frame RLE-compressed, the same 8-bit image as MONOCHROME1 and
MONOCHROME2, RGB interleaved and by plane, a JPEG baseline (DCMTK's, YBR_FULL_422, decoded by the
server) and an SR (no View link). What a user sees: a non-blank image, scrolling (wheel, keys,
slider, cine) changes it, a drag changes the window, a preset changes it, zoom changes it,
MONOCHROME1 is the inverse of MONOCHROME2, RGB shows colour, the RLE frames look exactly like
the uncompressed ones; axe-core finds no serious violation.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import RLELossless

from archive.query.ui.routes import STATIC
from tests.conftest import missing
from tests.e2e.harness import ArchiveProcess, http_json, serve, wait_until
from tests.e2e.test_web_ui import AXE, CHROMIUM, CHROMIUM_ARGS, Watched, _watch
from tests.factories import make_ct, new_uid, write_part10
from tests.images import image_file
from tests.sopclasses import make_sr
from tests.stow_client import stow

# WebGL2 in headless Chromium without a GPU: SwiftShader, on the CPU (never --disable-gpu here)
VIEWER_ARGS = [a for a in CHROMIUM_ARGS if a != "--disable-gpu"] + ["--enable-unsafe-swiftshader", "--use-angle=swiftshader"]
STUDY = new_uid()
PATIENT = "VIEWER-1"
CT_SLICES = 5
SIZE = 64


@dataclass(frozen=True)
class Sent:
    series: dict[str, str]  # name -> Series Instance UID


def _ct_slice(i: int) -> np.ndarray:
    """Signed stored values: air -1024 HU (stored 0), a disc of 40 HU growing with the slice, a bone
    ring (1000 HU), a corner of stored -1000 (-2024 HU: a sign the shader must extend from 12 bits)."""
    y, x = np.mgrid[:SIZE, :SIZE]
    r = np.hypot(x - SIZE / 2, y - SIZE / 2)
    pixels = np.zeros((SIZE, SIZE), np.int16)
    pixels[r < 8 + 4 * i] = 1064
    pixels[(r >= 26) & (r < 29)] = 2024
    pixels[:6, :6] = -1000
    return pixels


def _gradient(frames: int, size: int = 32) -> np.ndarray:
    y, x = np.mgrid[:size, :size]
    return np.stack([((x + y * (f + 1)) * 37 % 4096).astype(np.uint16) for f in range(frames)])


ENHANCED = _gradient(2)


def _data(tmp: Path) -> tuple[list[bytes], Sent]:
    files: list[Path] = []
    series: dict[str, str] = {}

    def add(name: str, path: Path) -> None:
        files.append(path)
        series[name] = str(dcmread(path, stop_before_pixels=True).SeriesInstanceUID)

    def image(name: str, pixels: np.ndarray, photometric: str = "MONOCHROME2", number: int = 1, **attrs: Any) -> None:
        uid = series.get(name) or new_uid()
        series[name] = uid
        path = image_file(tmp / f"{name}-{number}.dcm", pixels, photometric, StudyInstanceUID=STUDY,
                          SeriesInstanceUID=uid, PatientID=PATIENT, SeriesDescription=name.upper(),
                          InstanceNumber=number, **attrs)
        files.append(path)

    ct_series = new_uid()
    for i in range(CT_SLICES):
        ds = make_ct(study_uid=STUDY, series_uid=ct_series, patient_id=PATIENT, size=SIZE,
                     instance_number=CT_SLICES - i)  # numbered against the position: the order is by position
        ds.PixelRepresentation = 1
        ds.PixelData = _ct_slice(i).tobytes()
        ds.WindowCenter, ds.WindowWidth, ds.WindowCenterWidthExplanation = 40, 400, "SOFT"
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [0, 0, 10 * i]
        ds.SeriesDescription = "CT STACK"
        add("ct", write_part10(ds, tmp / f"ct{i}.dcm"))
    for i in range(2):
        ds = make_ct(study_uid=STUDY, patient_id=PATIENT, modality="MR", size=SIZE, seed=i, instance_number=i + 1)
        ds.SeriesInstanceUID = series.get("mr") or new_uid()
        ds.SeriesDescription, ds.RescaleIntercept = "MR NOISE", 0
        add("mr", write_part10(ds, tmp / f"mr{i}.dcm"))
    frames = _gradient(4)
    image("multiframe", frames, frames=4, bits_stored=12)
    image("rle", frames, frames=4, bits_stored=12, syntax=RLELossless)
    # an enhanced multi-frame: the rescale shared, the window per frame (functional groups, PS3.3 C.7.6.16)
    rescale = Dataset()
    rescale.RescaleSlope, rescale.RescaleIntercept, rescale.RescaleType = 2, -1000, "US"
    shared = Dataset()
    shared.PixelValueTransformationSequence = [rescale]
    per_frame = []
    for f in range(2):
        voi, item = Dataset(), Dataset()
        voi.WindowCenter, voi.WindowWidth, voi.WindowCenterWidthExplanation = 500 + f, 1000 + f, f"FRAME {f + 1}"
        item.FrameVOILUTSequence = [voi]
        per_frame.append(item)
    image("enhanced", ENHANCED, frames=2, bits_stored=12, SharedFunctionalGroupsSequence=[shared],
          PerFrameFunctionalGroupsSequence=per_frame)
    y, x = np.mgrid[:SIZE, :SIZE]
    gray = ((x * 4) % 256).astype(np.uint8)
    window: dict[str, Any] = {"WindowCenter": 127.5, "WindowWidth": 256}
    image("mono1", gray, "MONOCHROME1", **window)
    image("mono2", gray, "MONOCHROME2", **window)
    rgb = np.zeros((SIZE, SIZE, 3), np.uint8)
    rgb[:, : SIZE // 2, 0] = 230  # left red
    rgb[:, SIZE // 2 :, 2] = 230  # right blue
    rgb[SIZE // 2 :, :, 1] = 120
    image("rgb", rgb, "RGB")
    planar = np.ascontiguousarray(rgb.transpose(2, 0, 1)).reshape(-1).reshape(rgb.shape)  # bytes by plane
    image("planar", planar, "RGB", PlanarConfiguration=1)
    # what the pixel pipeline does not take as stored: the server renders it (frames/{n}/rendered)
    indices = np.where(x < SIZE // 2, 10, 200).astype(np.uint8)  # left: entry 10, right: entry 200
    palette: dict[str, Any] = {}
    for colour, table in (("Red", np.where(np.arange(256) < 128, 230, 0)), ("Green", np.zeros(256)),
                          ("Blue", np.where(np.arange(256) < 128, 0, 230))):
        palette[f"{colour}PaletteColorLookupTableDescriptor"] = [256, 0, 16]
        palette[f"{colour}PaletteColorLookupTableData"] = (table * 257).astype("<u2").tobytes()
    image("palette", indices, "PALETTE COLOR", **palette)
    wide = (x * 100_000).astype(np.uint32)  # 32-bit values: a dark left, a bright right
    image("wide", wide, "MONOCHROME2", WindowCenter=SIZE * 50_000, WindowWidth=SIZE * 100_000)
    jpeg = dcmread(str(get_testdata_file("SC_rgb_jpeg_dcmtk.dcm")))
    jpeg.StudyInstanceUID, jpeg.SeriesInstanceUID, jpeg.SOPInstanceUID = STUDY, new_uid(), new_uid()
    jpeg.PatientID, jpeg.SeriesDescription = PATIENT, "JPEG"
    jpeg.file_meta.MediaStorageSOPInstanceUID = jpeg.SOPInstanceUID
    jpeg.save_as(tmp / "jpeg.dcm")
    add("jpeg", tmp / "jpeg.dcm")
    sr = make_sr(STUDY, PATIENT)
    add("sr", write_part10(sr, tmp / "sr.dcm"))
    return [p.read_bytes() for p in files], Sent(series)


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ArchiveProcess, Sent]]:
    if not (STATIC / "index.html").is_file():
        missing("the web UI is not built: run `make ui` (Node.js 20 and npm)")
    tmp = tmp_path_factory.mktemp("web-ui-viewer")
    proc = serve(tmp).start()
    try:
        parts, sent = _data(tmp)
        status, _, body = stow(proc.http, parts)
        assert status == 200, body
        wait_until(lambda: len(http_json(f"{proc.http}/dicom-web/studies/{STUDY}/instances")[1] or []) == len(parts),
                   timeout=60)
        yield proc, sent
        assert proc.stop() == 0, proc.log_tail()
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not os.access(CHROMIUM, os.X_OK):
        missing(f"{CHROMIUM} is absent: apt-get install chromium (scripts/system-deps.sh)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing("the playwright package is absent: pip install -e '.[test]'")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=VIEWER_ARGS)
        try:
            page = chromium.new_page()
            if not page.evaluate("!!document.createElement('canvas').getContext('webgl2')"):
                missing("this Chromium offers no WebGL2, even through SwiftShader")
            page.close()
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def ui(browser: Any, archive: tuple[ArchiveProcess, Sent]) -> Iterator[Watched]:
    context = browser.new_context(base_url=archive[0].http, locale="en-GB", viewport={"width": 1280, "height": 800})
    watched = _watch(context)
    try:
        yield watched
        assert watched.dialogs == []
        assert watched.errors == [], watched.errors  # failed requests, script errors, CSP violations
    finally:
        context.close()


def open_viewer(page: Any, sent: Sent, name: str, images: int) -> Any:
    """The viewer of series ``name`` with every image loaded and the first drawn; its canvas."""
    from playwright.sync_api import expect

    page.goto(f"/ui/study/{STUDY}/series/{sent.series[name]}")
    expect(page.locator("#viewer-progress")).to_have_text(f"All {images} image{'s' if images > 1 else ''} loaded",
                                                          timeout=30_000)
    canvas = page.locator("#viewer-image")
    expect(canvas).to_have_attribute("data-shown", "0")
    return canvas


def at_rest(canvas: Any) -> None:
    """The last draw was the one at rest (bilinear; a change draws nearest first)."""
    from playwright.sync_api import expect

    expect(canvas).to_have_attribute("data-smooth", "1")


def pixels(canvas: Any) -> np.ndarray:
    """The middle of the canvas as the screen shows it (RGB), away from the overlay in the corners."""
    at_rest(canvas)
    shot = np.asarray(Image.open(io.BytesIO(canvas.screenshot())).convert("RGB")).astype(np.int16)
    h, w = shot.shape[:2]
    side = min(h, w) // 3
    return shot[h // 2 - side : h // 2 + side, w // 2 - side : w // 2 + side]


def corner(canvas: Any) -> float:
    """The brightness of the image's top left corner (3 of 64 pixels in), the image fitting the canvas."""
    at_rest(canvas)
    shot = np.asarray(Image.open(io.BytesIO(canvas.screenshot())).convert("L")).astype(np.int16)
    h, w = shot.shape
    side = min(h, w)
    x0, y0 = (w - side) // 2, (h - side) // 2
    at = side * 3 // SIZE
    return float(shot[y0 + at, x0 + at])


def differs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).mean())


def drawn(page: Any, index: int) -> None:
    from playwright.sync_api import expect

    expect(page.locator("#viewer-image")).to_have_attribute("data-shown", str(index))


def test_the_study_page_offers_view_for_image_series_only(ui: Watched, archive: tuple[ArchiveProcess, Sent]) -> None:
    from playwright.sync_api import expect

    page = ui.page
    page.goto(f"/ui/study/{STUDY}")
    expect(page.get_by_role("status").first).to_have_text("13 series")
    views = page.get_by_role("link", name=re.compile("^View "))
    expect(views).to_have_count(12)  # every series but the SR
    page.get_by_role("link", name="View Series 1: CT STACK").click()
    expect(page).to_have_url(re.compile(rf"/ui/study/{STUDY}/series/{archive[1].series['ct']}$"))
    expect(page.locator("#viewer-progress")).to_have_text(f"All {CT_SLICES} images loaded")
    page.get_by_role("link", name="← Back to the study").click()
    expect(page).to_have_url(re.compile(rf"/ui/study/{STUDY}$"))
    expect(page.get_by_role("heading", name="Series", exact=True)).to_be_visible()


def test_a_ct_stack_scrolls_windows_and_zooms(ui: Watched, archive: tuple[ArchiveProcess, Sent]) -> None:
    from playwright.sync_api import expect

    page = ui.page
    canvas = open_viewer(page, archive[1], "ct", CT_SLICES)
    overlay = page.locator(".viewport")
    # sorted by position: the first image is the lowest slice, whose Instance Number is the highest
    expect(overlay).to_contain_text(f"Image 1/{CT_SLICES}")
    expect(overlay).to_contain_text(f"Instance {CT_SLICES}")
    expect(page.locator(".overlay-window")).to_have_text("W 400 L 40")  # the data's window
    first = pixels(canvas)
    assert first.std() > 20, "the image is blank"

    canvas.hover()
    page.mouse.wheel(0, 120)  # the wheel scrolls
    drawn(page, 1)
    second = pixels(canvas)
    assert differs(first, second) > 1
    canvas.press("End")
    drawn(page, CT_SLICES - 1)
    expect(overlay).to_contain_text(f"Image {CT_SLICES}/{CT_SLICES}")
    canvas.press("Home")
    drawn(page, 0)
    assert differs(first, pixels(canvas)) < 1  # the same image again
    page.get_by_label("Image", exact=True).fill("3")  # the slider
    drawn(page, 2)

    # a drag changes the window on the same image
    before = pixels(canvas)
    box = canvas.bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(cx, cy)
    page.mouse.down()
    page.mouse.move(cx + 150, cy + 60, steps=5)
    page.mouse.up()
    expect(page.locator(".overlay-window")).not_to_have_text("W 400 L 40")
    assert differs(before, pixels(canvas)) > 1
    expect(page.get_by_label("Window", exact=True)).to_have_value("")  # "Custom"

    # a CT preset
    before = pixels(canvas)
    page.get_by_label("Window", exact=True).select_option("Lung")
    expect(page.locator(".overlay-window")).to_have_text("W 1500 L -600")
    assert differs(before, pixels(canvas)) > 1
    # the corner's stored -1000 in 12 bits is -2024 HU, black in any window (not 3096 - 1024, white)
    page.get_by_label("Window", exact=True).select_option("Full range")
    expect(page.locator(".overlay-window")).to_have_text("W 3024 L -512")  # -2024 to 1000 HU
    page.get_by_label("Window", exact=True).select_option("Bone")
    expect(page.locator(".overlay-window")).to_have_text("W 1800 L 400")
    assert corner(canvas) < 10

    # zoom, then reset
    before, zoom = pixels(canvas), page.locator(".overlay-zoom").inner_text()
    page.get_by_role("button", name="Zoom in").click()
    expect(page.locator(".overlay-zoom")).not_to_have_text(zoom)
    zoomed = pixels(canvas)
    assert differs(before, zoomed) > 1
    page.get_by_role("button", name="Reset").click()
    expect(page.locator(".overlay-window")).to_have_text("W 400 L 40")


def test_a_series_larger_than_the_gpu_budget_keeps_the_frames_around_the_one_shown(
        ui: Watched, archive: tuple[ArchiveProcess, Sent]) -> None:
    from playwright.sync_api import expect

    page = ui.page
    held = 3  # of the CT_SLICES 64x64 16-bit frames (8 KiB each): the budget in MiB, as a user may set it
    page.add_init_script(f"localStorage.setItem('archive.viewer.gpuMegabytes', '{(held * 8192 + 100) / 2**20}')")
    frame_requests: list[str] = []
    page.on("request", lambda r: frame_requests.append(r.url) if "/frames/" in r.url else None)
    page.goto(f"/ui/study/{STUDY}/series/{archive[1].series['ct']}")
    progress = page.locator("#viewer-progress")
    holding = f"Loaded {held} of the {held} images around this one (of {CT_SLICES}; the GPU memory holds {held})"
    expect(progress).to_have_text(holding)
    canvas = page.locator("#viewer-image")
    drawn(page, 0)
    first = pixels(canvas)
    assert len(frame_requests) == held  # nothing beyond the window
    canvas.press("End")
    drawn(page, CT_SLICES - 1)
    expect(progress).to_have_text(holding)  # the first ones dropped, the last ones loaded
    canvas.press("Home")
    drawn(page, 0)
    expect(progress).to_have_text(holding)
    assert differs(first, pixels(canvas)) < 1  # loaded again, the same image
    assert len(frame_requests) >= CT_SLICES + 2, frame_requests  # frames 1 and 2 asked twice


def test_the_window_comes_from_the_data_or_the_full_range(ui: Watched, archive: tuple[ArchiveProcess, Sent]) -> None:
    from playwright.sync_api import expect

    page = ui.page
    canvas = open_viewer(page, archive[1], "mr", 2)
    expect(page.get_by_label("Window", exact=True)).to_have_value("Full range")
    assert "Lung" not in page.get_by_label("Window", exact=True).inner_text()  # CT presets for CT only
    first = pixels(canvas)
    assert first.std() > 20
    canvas.press("ArrowDown")
    drawn(page, 1)
    assert differs(first, pixels(canvas)) > 5


def test_multi_frame_scrolls_and_plays_and_rle_looks_the_same(ui: Watched, archive: tuple[ArchiveProcess, Sent]) -> None:
    from playwright.sync_api import expect

    page = ui.page
    canvas = open_viewer(page, archive[1], "multiframe", 4)
    overlay = page.locator(".viewport")
    expect(overlay).to_contain_text("frame 1/4")
    shots = [pixels(canvas)]
    for i in range(1, 4):
        canvas.press("ArrowDown")
        drawn(page, i)
        expect(overlay).to_contain_text(f"frame {i + 1}/4")
        shots.append(pixels(canvas))
    assert all(s.std() > 10 for s in shots)
    assert all(differs(a, b) > 1 for a, b in zip(shots, shots[1:]))
    page.get_by_label("Frames per second").fill("30")
    page.get_by_role("button", name="Play").click()
    drawn(page, 0)  # wrapped around
    drawn(page, 2)
    page.get_by_role("button", name="Pause").click()

    canvas = open_viewer(page, archive[1], "rle", 4)  # decoded by the server: the same values
    for i in range(4):
        if i:
            canvas.press("ArrowDown")
            drawn(page, i)
        assert differs(shots[i], pixels(canvas)) < 0.5


def test_monochrome1_is_the_inverse_of_monochrome2(ui: Watched, archive: tuple[ArchiveProcess, Sent]) -> None:
    page = ui.page
    two = pixels(open_viewer(page, archive[1], "mono2", 1))
    one = pixels(open_viewer(page, archive[1], "mono1", 1))
    assert two.std() > 30
    assert differs(one, 255 - two) < 3
    assert differs(one, two) > 60


@pytest.mark.parametrize("name", ["rgb", "planar"])
def test_rgb_shows_colour(ui: Watched, archive: tuple[ArchiveProcess, Sent], name: str) -> None:
    shot = pixels(open_viewer(ui.page, archive[1], name, 1))
    h, w = shot.shape[:2]
    top_left, top_right = shot[h // 8, w // 8], shot[h // 8, w - w // 8]
    bottom_left = shot[h - h // 8, w // 8]
    assert top_left[0] > 200 and top_left[1] < 30 and top_left[2] < 30, top_left  # red
    assert top_right[2] > 200 and top_right[0] < 30 and top_right[1] < 30, top_right  # blue
    assert bottom_left[0] > 200 and 100 < bottom_left[1] < 140, bottom_left  # red and green


def test_palette_colour_and_32_bit_pixels_are_drawn_from_the_servers_rendering(
        ui: Watched, archive: tuple[ArchiveProcess, Sent]) -> None:
    from playwright.sync_api import expect

    page = ui.page
    shot = pixels(open_viewer(page, archive[1], "palette", 1))
    h, w = shot.shape[:2]
    left, right = shot[h // 2, w // 8], shot[h // 2, w - w // 8]
    assert left[0] > 200 and left[1] < 30 and left[2] < 30, left  # palette entry 10: red
    assert right[2] > 200 and right[0] < 30 and right[1] < 30, right  # palette entry 200: blue
    expect(page.locator(".overlay-rendered")).to_have_text("Rendered by the server")
    shot = pixels(open_viewer(page, archive[1], "wide", 1)).mean(axis=2)
    h, w = shot.shape
    assert shot[h // 2, w - w // 8] - shot[h // 2, w // 8] > 120, shot[h // 2]  # the window from the data
    expect(page.locator(".overlay-rendered")).to_be_visible()
    mono = open_viewer(page, archive[1], "mono2", 1)
    assert mono is not None
    expect(page.locator(".overlay-rendered")).to_have_count(0)  # what the pipeline draws itself


def test_a_jpeg_is_decoded_by_the_server_and_shown_in_colour(ui: Watched, archive: tuple[ArchiveProcess, Sent]) -> None:
    shot = pixels(open_viewer(ui.page, archive[1], "jpeg", 1))
    spread = shot.max(axis=2) - shot.min(axis=2)  # how far from grey each pixel is
    assert shot.std() > 20 and (spread > 80).mean() > 0.05


def test_axe_finds_no_serious_violation_in_the_viewer(browser: Any, archive: tuple[ArchiveProcess, Sent]) -> None:
    if not AXE.is_file():
        missing(f"{AXE} is absent: `make ui` installs the UI's npm packages")
    context = browser.new_context(base_url=archive[0].http, bypass_csp=True)  # for the injection only
    try:
        watched = _watch(context)
        page = watched.page
        open_viewer(page, archive[1], "ct", CT_SLICES)
        page.add_script_tag(path=str(AXE))
        result = page.evaluate("axe.run(document, {resultTypes: ['violations']})")
        bad = [(v["id"], v["impact"], [n["target"] for n in v["nodes"]][:3])
               for v in result["violations"] if v["impact"] in ("serious", "critical")]
        assert bad == []
        assert watched.dialogs == [] and watched.errors == []
    finally:
        context.close()


@pytest.fixture
def signed_archive(tmp_path: Path) -> Iterator[tuple[ArchiveProcess, str]]:
    """The sign-in tests' archive (port 8080, the real Keycloak) with their CT study."""
    from tests.e2e.test_web_ui_signin import _start, _store

    proc, issuer = _start(tmp_path)
    try:
        _store(proc, issuer, tmp_path)
        yield proc, issuer
        assert proc.stop() == 0, proc.log_tail()
    finally:
        proc.stop()


def test_the_viewer_works_signed_in(browser: Any, signed_archive: tuple[ArchiveProcess, str]) -> None:
    """Every metadata and frame request carries the bearer token (authorizedFetch); the image draws."""
    from playwright.sync_api import expect

    from tests.e2e.test_web_ui_signin import STUDY as SIGNIN_STUDY, _record, _sign_in

    proc, issuer = signed_archive
    context = browser.new_context(base_url=proc.http, locale="en-GB", viewport={"width": 1280, "height": 800})
    try:
        watched = _watch(context)
        page = watched.page
        recorded = _record(page, proc.http)
        page.goto(f"/ui/study/{SIGNIN_STUDY.uid}")
        _sign_in(page, issuer, "reader")
        page.wait_for_url(f"{proc.http}/ui/study/{SIGNIN_STUDY.uid}")
        page.get_by_role("link", name=re.compile(r"^View Series 1")).click()
        expect(page.locator("#viewer-progress")).to_have_text("All 3 images loaded", timeout=30_000)
        canvas = page.locator("#viewer-image")
        expect(canvas).to_have_attribute("data-shown", "0")
        assert pixels(canvas).std() > 10
        frames = [p for p in recorded.bearer if "/frames/" in p]
        assert len(frames) == 3 and any(p.endswith("/metadata") for p in recorded.bearer), recorded.bearer
        assert all(h.startswith("Bearer eyJ") for h in recorded.bearer.values()), recorded.bearer
        assert watched.dialogs == [] and watched.errors == [], watched.errors
    finally:
        context.close()


def test_an_enhanced_multi_frame_takes_its_rescale_and_window_from_the_functional_groups(
        ui: Watched, archive: tuple[ArchiveProcess, Sent]) -> None:
    from playwright.sync_api import expect

    page = ui.page
    open_viewer(page, archive[1], "enhanced", 2)
    window = page.get_by_label("Window", exact=True)
    expect(window).to_have_value("FRAME 1")
    expect(page.locator(".overlay-window")).to_have_text("W 1000 L 500")
    window.select_option("Full range")  # the stored range through the shared rescale: 2 * value - 1000
    lo, hi = 2 * int(ENHANCED[0].min()) - 1000, 2 * int(ENHANCED[0].max()) - 1000
    expect(page.locator(".overlay-window")).to_have_text(f"W {hi - lo} L {(hi + lo) // 2}")
    page.locator("#viewer-image").press("ArrowDown")
    drawn(page, 1)
    assert "FRAME 2 (501/1001)" in window.inner_text()  # the second frame's own window among the presets
