"""WADO-RS frames, rendered and thumbnails, and WADO-URI, against `dicom-archive serve`.

Images are made here (tests/images.py) or taken from pydicom's bundled test
files, sent with DCMTK storescu, and every expectation is computed from the
files that were sent, never read back from the archive.
"""

from __future__ import annotations

import io
import shutil
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.encaps import generate_frames
from pydicom.pixels import get_encoder, pixel_array
from pydicom.uid import JPEGBaseline8Bit, JPEGLSLossless, RLELossless

from tests.e2e.harness import ArchiveProcess, http_json, serve, wait_until
from tests.e2e.senders import storescu
from tests.factories import new_uid
from tests.images import image_file

pytestmark = pytest.mark.dcmtk

STUDY, CT, COLOR, MULTI, OTHER = new_uid(), new_uid(), new_uid(), new_uid(), new_uid()
RNG = np.random.default_rng(11)
CT_PIXELS = [RNG.integers(-1000, 3000, size=(32, 48), dtype=np.int16) for _ in range(3)]
FRAMES = RNG.integers(0, 4096, size=(5, 20, 24), dtype=np.uint16)
RGB = RNG.integers(0, 256, size=(16, 16, 3), dtype=np.uint8)
PROPOSE = {RLELossless: "-xr", JPEGLSLossless: "-xt", JPEGBaseline8Bit: "-xy"}  # storescu options


@dataclass
class Sent:
    files: dict[str, Path]  # name -> file sent
    uids: dict[str, tuple[str, str]]  # name -> (series UID, SOP Instance UID)


def _make(directory: Path) -> Sent:
    directory.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}

    def add(name: str, series: str, pixels: np.ndarray, photometric: str = "MONOCHROME2", **attrs: object) -> None:
        files[name] = image_file(directory / f"{name}.dcm", pixels, photometric, StudyInstanceUID=STUDY,
                                 SeriesInstanceUID=series, SOPInstanceUID=new_uid(), **attrs)

    for i, pixels in enumerate(CT_PIXELS):
        add(f"ct{i}", CT, pixels, RescaleSlope=1, RescaleIntercept=-1024, WindowCenter=40, WindowWidth=400,
            InstanceNumber=i + 1, SeriesNumber=1)
    add("rgb", COLOR, RGB, "RGB", InstanceNumber=1, SeriesNumber=2)
    add("frames", MULTI, FRAMES, frames=5, bits_stored=12, InstanceNumber=1, SeriesNumber=3)
    add("rle", MULTI, FRAMES[:3], frames=3, bits_stored=12, syntax=RLELossless, InstanceNumber=2, SeriesNumber=3)
    if get_encoder(JPEGLSLossless).is_available:
        add("jls", MULTI, FRAMES[0], bits_stored=12, syntax=JPEGLSLossless, InstanceNumber=3, SeriesNumber=3)
    # JPEG baseline as made by DCMTK (pydicom's bundled test file), in our study
    jpeg = dcmread(get_testdata_file("SC_rgb_jpeg_dcmtk.dcm"))
    jpeg.StudyInstanceUID, jpeg.SeriesInstanceUID, jpeg.SOPInstanceUID = STUDY, OTHER, new_uid()
    jpeg.file_meta.MediaStorageSOPInstanceUID = jpeg.SOPInstanceUID
    jpeg.save_as(directory / "jpeg.dcm")
    files["jpeg"] = directory / "jpeg.dcm"
    # no pixel data: nothing to render
    shutil.copy(get_testdata_file("rtplan.dcm"), directory / "plan.dcm")
    plan = dcmread(directory / "plan.dcm")
    plan.StudyInstanceUID, plan.SeriesInstanceUID, plan.SOPInstanceUID = STUDY, new_uid(), new_uid()
    plan.file_meta.MediaStorageSOPInstanceUID = plan.SOPInstanceUID
    plan.save_as(directory / "plan.dcm")
    files["plan"] = directory / "plan.dcm"
    uids = {}
    for name, path in files.items():
        ds = dcmread(path, stop_before_pixels=True)
        uids[name] = (str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID))
    return Sent(files, uids)


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ArchiveProcess, Sent]]:
    workdir = tmp_path_factory.mktemp("wado-pixels")
    proc = serve(workdir).start()
    try:
        sent = _make(workdir / "in")
        by_syntax: dict[str, list[Path]] = {}
        for path in sent.files.values():
            by_syntax.setdefault(str(dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID), []).append(path)
        for syntax, paths in by_syntax.items():  # storescu proposes one compressed syntax per run
            result = storescu(proc.dicom_port, paths, extra=[PROPOSE.get(syntax, "-x=")])
            assert result.returncode == 0, result.stderr
        wait_until(lambda: len(http_json(f"{proc.http}/dicom-web/studies/{STUDY}/instances")[1] or [])
                   == len(sent.files))
        yield proc, sent
    finally:
        proc.stop()


def get(url: str, accept: str | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def parts(content_type: str, body: bytes) -> list[tuple[str, bytes]]:
    """(Content-Type, payload) of each part of a multipart/related body."""
    boundary = next(p.split("=", 1)[1].strip('"') for p in content_type.split(";") if p.strip().startswith("boundary="))
    found = []
    for chunk in body.split(b"--" + boundary.encode())[1:]:
        if chunk.startswith(b"--"):
            break
        head, _, payload = chunk.partition(b"\r\n\r\n")
        headers = dict(line.split(": ", 1) for line in head.decode().strip().splitlines())
        found.append((headers["Content-Type"], payload[:-2]))  # the CRLF before the next boundary
    return found


def url(proc: ArchiveProcess, sent: Sent, name: str, suffix: str = "") -> str:
    series, sop = sent.uids[name]
    return f"{proc.http}/dicom-web/studies/{STUDY}/series/{series}/instances/{sop}{suffix}"


def image(body: bytes) -> Image.Image:
    return Image.open(io.BytesIO(body))


def window(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """PS3.3 C.11.2.1.2.1 linear window to 0..255."""
    y = ((values - (center - 0.5)) / (width - 1) + 0.5) * 255
    return np.clip(y, 0, 255)


def test_frames_uncompressed_by_default(archive: tuple[ArchiveProcess, Sent]) -> None:
    proc, sent = archive
    status, headers, body = get(url(proc, sent, "frames", "/frames/2,5"))
    assert status == 200, body
    assert headers["Content-Type"].startswith('multipart/related; type="application/octet-stream"')
    got = parts(headers["Content-Type"], body)
    assert [p for _, p in got] == [FRAMES[1].astype("<u2").tobytes(), FRAMES[4].astype("<u2").tobytes()]
    assert all(ct.startswith("application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1") for ct, _ in got)
    # compressed frames are decompressed unless the client accepts them as stored
    status, headers, body = get(url(proc, sent, "rle", "/frames/3"), "multipart/related; type=application/octet-stream")
    assert status == 200 and parts(headers["Content-Type"], body)[0][1] == FRAMES[2].astype("<u2").tobytes()


def test_frames_as_stored(archive: tuple[ArchiveProcess, Sent]) -> None:
    proc, sent = archive
    status, headers, body = get(url(proc, sent, "rle", "/frames/1,3"),
                                'multipart/related; type="application/octet-stream"; transfer-syntax=*')
    assert status == 200, body
    stored = list(generate_frames(dcmread(sent.files["rle"]).PixelData, number_of_frames=3))
    got = parts(headers["Content-Type"], body)
    assert [ct for ct, _ in got] == ["image/dicom-rle; transfer-syntax=1.2.840.10008.1.2.5"] * 2
    assert [p for _, p in got] == [stored[0], stored[2]]
    if "jls" in sent.files:
        status, headers, body = get(url(proc, sent, "jls", "/frames/1"), 'multipart/related; type="image/jls"')
        assert status == 200, body
        assert parts(headers["Content-Type"], body)[0][1] == next(
            generate_frames(dcmread(sent.files["jls"]).PixelData, number_of_frames=1))


def test_frames_errors(archive: tuple[ArchiveProcess, Sent]) -> None:
    proc, sent = archive
    assert get(url(proc, sent, "frames", "/frames/6"))[0] == 404
    assert get(url(proc, sent, "frames", "/frames/0"))[0] == 400
    assert get(url(proc, sent, "frames", "/frames/1,x"))[0] == 400
    assert get(url(proc, sent, "frames", "/frames/1"), 'multipart/related; type="image/jls"')[0] == 406
    series, _ = sent.uids["frames"]
    assert get(f"{proc.http}/dicom-web/studies/{STUDY}/series/{series}/instances/{new_uid()}/frames/1")[0] == 404
    assert get(f"{proc.http}/dicom-web/studies/{STUDY}/series/{series}/instances/1.02/frames/1")[0] == 400
    assert get(url(proc, sent, "plan", "/frames/1"))[0] == 404  # no pixel data


def test_rendered_instance(archive: tuple[ArchiveProcess, Sent]) -> None:
    proc, sent = archive
    expected = window(CT_PIXELS[1].astype(np.float64) - 1024, 40, 400)
    status, headers, body = get(url(proc, sent, "ct1", "/rendered"))
    assert status == 200 and headers["Content-Type"] == "image/jpeg"
    jpeg = image(body)
    assert jpeg.format == "JPEG" and jpeg.size == (48, 32)
    assert np.abs(np.asarray(jpeg, dtype=np.float64) - expected).mean() < 12  # lossy, noisy image
    status, headers, body = get(url(proc, sent, "ct1", "/rendered?window=1000,4001"), "image/png")
    assert status == 200 and headers["Content-Type"] == "image/png"
    exact = np.rint(window(CT_PIXELS[1].astype(np.float64) - 1024, 1000, 4001))
    assert np.array_equal(np.asarray(image(body)), exact.astype(np.uint8))
    status, _, body = get(url(proc, sent, "ct1", "/rendered?viewport=24,24&quality=50"))
    assert status == 200 and image(body).size == (24, 16)
    status, _, body = get(url(proc, sent, "rgb", "/rendered?accept=image/png"))
    assert status == 200 and np.array_equal(np.asarray(image(body)), RGB)
    status, _, body = get(url(proc, sent, "jpeg", "/rendered"), "image/png")
    expected_rgb = pixel_array(sent.files["jpeg"])
    assert status == 200 and np.array_equal(np.asarray(image(body)), expected_rgb)


def test_rendered_frames(archive: tuple[ArchiveProcess, Sent]) -> None:
    proc, sent = archive
    for name in ("frames", "rle"):
        status, _, body = get(url(proc, sent, name, "/frames/3/rendered?window=2048,4096"), "image/png")
        assert status == 200, body
        assert np.array_equal(np.asarray(image(body)), np.rint(window(FRAMES[2].astype(np.float64), 2048, 4096)))
    assert get(url(proc, sent, "frames", "/frames/9/rendered"))[0] == 404
    assert get(url(proc, sent, "frames", "/frames/1,2/rendered"))[0] == 400


def test_rendered_errors(archive: tuple[ArchiveProcess, Sent]) -> None:
    proc, sent = archive
    assert get(url(proc, sent, "plan", "/rendered"))[0] == 406
    assert get(url(proc, sent, "ct0", "/rendered"), "image/gif")[0] == 406
    assert get(url(proc, sent, "ct0", "/rendered?quality=0"))[0] == 400
    assert get(url(proc, sent, "ct0", "/rendered?viewport=0,10"))[0] == 400
    assert get(url(proc, sent, "ct0", "/rendered?window=40"))[0] == 400
    series, _ = sent.uids["ct0"]
    assert get(f"{proc.http}/dicom-web/studies/{new_uid()}/series/{series}/instances/{sent.uids['ct0'][1]}/rendered")[0] == 404


def test_rendered_series_and_study(archive: tuple[ArchiveProcess, Sent]) -> None:
    proc, sent = archive
    status, headers, body = get(f"{proc.http}/dicom-web/studies/{STUDY}/series/{CT}/rendered?window=1000,4001",
                                'multipart/related; type="image/png"')
    assert status == 200 and headers["Content-Type"].startswith('multipart/related; type="image/png"')
    got = parts(headers["Content-Type"], body)
    expected = [np.rint(window(p.astype(np.float64) - 1024, 1000, 4001)).astype(np.uint8) for p in CT_PIXELS]
    assert [ct for ct, _ in got] == ["image/png"] * 3
    assert all(np.array_equal(np.asarray(image(p)), e) for (_, p), e in zip(got, expected, strict=True))
    status, headers, body = get(f"{proc.http}/dicom-web/studies/{STUDY}/rendered")
    renderable = len(sent.files) - 1  # all but the plan
    assert status == 200 and len(parts(headers["Content-Type"], body)) == renderable
    assert get(f"{proc.http}/dicom-web/studies/{new_uid()}/rendered")[0] == 404


def test_thumbnails(archive: tuple[ArchiveProcess, Sent]) -> None:
    proc, sent = archive
    status, headers, body = get(f"{proc.http}/dicom-web/studies/{STUDY}/thumbnail")
    assert status == 200 and headers["Content-Type"] == "image/jpeg"
    assert max(image(body).size) == 128
    # the middle instance of the series: ct1
    status, _, body = get(f"{proc.http}/dicom-web/studies/{STUDY}/series/{CT}/thumbnail?window=1000,4001", "image/png")
    expected = image(get(url(proc, sent, "ct1", "/rendered?window=1000,4001&viewport=128,128"), "image/png")[2])
    assert status == 200 and np.array_equal(np.asarray(image(body)), np.asarray(expected))
    status, _, body = get(url(proc, sent, "rgb", "/thumbnail?viewport=8,8"))
    assert status == 200 and image(body).size == (8, 8)
    assert get(f"{proc.http}/dicom-web/studies/{new_uid()}/thumbnail")[0] == 404
    plan_series = sent.uids["plan"][0]
    assert get(f"{proc.http}/dicom-web/studies/{STUDY}/series/{plan_series}/thumbnail")[0] == 406


def test_wado_uri(archive: tuple[ArchiveProcess, Sent]) -> None:
    proc, sent = archive
    series, sop = sent.uids["ct2"]
    base = f"{proc.http}/wado?requestType=WADO&studyUID={STUDY}&seriesUID={series}&objectUID={sop}"
    status, headers, body = get(base + "&contentType=application/dicom")
    assert status == 200 and headers["Content-Type"] == "application/dicom"
    ds = dcmread(io.BytesIO(body))
    assert ds.SOPInstanceUID == sop and np.array_equal(ds.pixel_array, CT_PIXELS[2])
    status, headers, body = get(base + "&rows=16")
    assert status == 200 and headers["Content-Type"] == "image/jpeg" and image(body).size == (24, 16)
    status, _, body = get(base + "&contentType=image/png&windowCenter=1000&windowWidth=4001&region=0,0,0.5,1")
    exact = np.rint(window(CT_PIXELS[2][:, :24].astype(np.float64) - 1024, 1000, 4001)).astype(np.uint8)
    assert status == 200 and np.array_equal(np.asarray(image(body)), exact)
    # a compressed object: Explicit VR Little Endian by default, as stored on request
    rle_series, rle_sop = sent.uids["rle"]
    rle = f"{proc.http}/dicom-web/wado?requestType=WADO&studyUID={STUDY}&seriesUID={rle_series}&objectUID={rle_sop}" \
          "&contentType=application/dicom"
    status, _, body = get(rle)
    ds = dcmread(io.BytesIO(body))
    assert status == 200 and ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert np.array_equal(ds.pixel_array, FRAMES[:3])
    status, _, body = get(rle + f"&transferSyntax={RLELossless}")
    assert status == 200 and dcmread(io.BytesIO(body)).file_meta.TransferSyntaxUID == RLELossless
    status, _, body = get(rle.replace("application/dicom", "image/png") + "&frameNumber=2&windowCenter=2048&windowWidth=4096")
    assert status == 200 and np.array_equal(np.asarray(image(body)), np.rint(window(FRAMES[1].astype(np.float64), 2048, 4096)))
    # errors
    assert get(base.replace("requestType=WADO", "requestType=X"))[0] == 400
    assert get(base.replace(f"&objectUID={sop}", ""))[0] == 400
    assert get(base.replace(sop, new_uid()))[0] == 404
    assert get(base + "&contentType=image/gif")[0] == 406
    assert get(base + "&windowCenter=40")[0] == 400
    assert get(rle + "&transferSyntax=1.2.840.10008.1.2.4.80")[0] == 406
