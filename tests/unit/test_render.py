"""The rendering pipeline, checked against values computed here with numpy from the standard's formulas."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import generate_frames
from pydicom.pixels import get_encoder
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, RLELossless, ExplicitVRLittleEndian, generate_uid

from archive.core.query import InvalidQuery
from archive.query.dicomweb.media import render
from archive.query.dicomweb.media.frames import FrameReader, negotiate, parse_frame_numbers
from archive.query.dicomweb.media.render import FrameNotFound, RenderError, RenderOptions, Viewport, Window
from archive.query.dicomweb.negotiation import NotAcceptable
from archive.query.dicomweb.pixels import parse_quality, parse_viewport, parse_window, render_media_type
from tests.images import image_file


def decoded(body: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(body)))


def png(path: Path, frame: int = 1, **options: object) -> np.ndarray:
    return decoded(render.render_frame(path, frame, RenderOptions(render.PNG, **options)))  # type: ignore[arg-type]


def linear(x: np.ndarray, c: float, w: float) -> np.ndarray:
    """PS3.3 C.11.2.1.2.1, written out for the test."""
    y = np.where(x <= c - 0.5 - (w - 1) / 2, 0.0,
                 np.where(x > c - 0.5 + (w - 1) / 2, 255.0, ((x - (c - 0.5)) / (w - 1) + 0.5) * 255.0))
    return np.rint(y).astype(np.uint8)


RNG = np.random.default_rng(7)
SIGNED = RNG.integers(-2000, 3000, size=(24, 40), dtype=np.int16)


def test_rescale_then_window_preset(tmp_path: Path) -> None:
    path = image_file(tmp_path / "a.dcm", SIGNED, RescaleSlope=2, RescaleIntercept=-100,
                      WindowCenter=[50, 400], WindowWidth=[501, 2000])
    modality = SIGNED.astype(np.float64) * 2 - 100
    assert np.array_equal(png(path), linear(modality, 50, 501))  # the first preset


def test_window_parameter_overrides_presets(tmp_path: Path) -> None:
    path = image_file(tmp_path / "a.dcm", SIGNED, RescaleSlope=1, RescaleIntercept=0, WindowCenter=50, WindowWidth=500)
    x = SIGNED.astype(np.float64)
    assert np.array_equal(png(path, window=Window(1000, 3001)), linear(x, 1000, 3001))
    exact = np.rint(np.clip(((x - 200) / 800 + 0.5) * 255, 0, 255)).astype(np.uint8)
    assert np.array_equal(png(path, window=Window(200, 800, "LINEAR_EXACT")), exact)
    sigmoid = np.rint(255 / (1 + np.exp(-4 * (x - 200) / 800))).astype(np.uint8)
    assert np.abs(png(path, window=Window(200, 800, "SIGMOID")).astype(int) - sigmoid).max() <= 1


def test_monochrome1_is_inverted(tmp_path: Path) -> None:
    pixels = RNG.integers(0, 4096, size=(16, 16), dtype=np.uint16)
    path = image_file(tmp_path / "m1.dcm", pixels, "MONOCHROME1", bits_stored=12, WindowCenter=2048, WindowWidth=4096)
    assert np.array_equal(png(path), 255 - linear(pixels.astype(np.float64), 2048, 4096))


def test_without_voi_the_frame_range_is_stretched(tmp_path: Path) -> None:
    pixels = np.arange(100, 356, dtype=np.uint16).reshape(16, 16)
    out = png(image_file(tmp_path / "a.dcm", pixels, bits_stored=12))
    expected = np.rint((pixels - 100.0) * 255.0 / 255.0).astype(np.uint8)
    assert np.array_equal(out, expected)


def test_voi_lut_sequence(tmp_path: Path) -> None:
    pixels = RNG.integers(0, 300, size=(12, 12), dtype=np.uint16)
    item = Dataset()
    item.LUTDescriptor = [200, 50, 8]  # 200 entries from value 50, 8-bit output
    lut = (np.arange(200) * 255 // 199).astype(np.uint16)
    item.LUTData = lut.astype("<u2").tobytes()
    path = image_file(tmp_path / "voi.dcm", pixels, VOILUTSequence=[item])
    expected = lut[np.clip(pixels.astype(int) - 50, 0, 199)].astype(np.uint8)
    assert np.array_equal(png(path), expected)


def test_rgb_and_ybr_full(tmp_path: Path) -> None:
    rgb = RNG.integers(0, 256, size=(10, 14, 3), dtype=np.uint8)
    assert np.array_equal(png(image_file(tmp_path / "rgb.dcm", rgb, "RGB")), rgb)
    # PS3.3 C.7.6.3.1.2: YBR_FULL from RGB, then rendered back to RGB
    r, g, b = (rgb[..., i].astype(np.float64) for i in range(3))
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cb = -0.168736 * r - 0.331264 * g + 0.5 * b + 128
    cr = 0.5 * r - 0.418688 * g - 0.081312 * b + 128
    ybr = np.clip(np.rint(np.stack([y, cb, cr], axis=-1)), 0, 255).astype(np.uint8)
    out = png(image_file(tmp_path / "ybr.dcm", ybr, "YBR_FULL"))
    assert np.abs(out.astype(int) - rgb.astype(int)).max() <= 2


def test_palette_color(tmp_path: Path) -> None:
    indices = RNG.integers(0, 256, size=(8, 8), dtype=np.uint8)
    red, green, blue = (np.arange(256) * 257, (255 - np.arange(256)) * 257, np.full(256, 128 * 257))
    attrs = {}
    for name, table in (("Red", red), ("Green", green), ("Blue", blue)):
        attrs[f"{name}PaletteColorLookupTableDescriptor"] = [256, 0, 16]
        attrs[f"{name}PaletteColorLookupTableData"] = table.astype("<u2").tobytes()
    out = png(image_file(tmp_path / "pal.dcm", indices, "PALETTE COLOR", **attrs))
    expected = np.stack([t[indices] / 65535 * 255 for t in (red, green, blue)], axis=-1)
    assert np.array_equal(out, np.rint(expected).astype(np.uint8))


FRAMES = np.stack([np.full((6, 8), 100 * (i + 1), dtype=np.uint16) for i in range(5)])


def test_frame_selection(tmp_path: Path) -> None:
    path = image_file(tmp_path / "mf.dcm", FRAMES, frames=5, WindowCenter=300, WindowWidth=501)
    for frame in (1, 3, 5):
        assert np.all(png(path, frame) == linear(np.array([100.0 * frame]), 300, 501)[0])
    with pytest.raises(FrameNotFound):
        png(path, 6)


@pytest.mark.parametrize("syntax", [RLELossless, JPEGLSLossless, JPEG2000Lossless])
def test_compressed_frames_render_like_native(tmp_path: Path, syntax: str) -> None:
    if not get_encoder(syntax).is_available:
        pytest.skip(f"no encoder for {syntax}")
    pixels = RNG.integers(0, 4096, size=(3, 64, 80), dtype=np.uint16)  # openjpeg wants 2^5 px or more
    native = image_file(tmp_path / "n.dcm", pixels, frames=3, bits_stored=12)
    packed = image_file(tmp_path / "c.dcm", pixels, frames=3, bits_stored=12, syntax=syntax)
    assert np.array_equal(png(packed, 2), png(native, 2))
    # frames: as stored and decompressed
    with FrameReader(packed) as reader:
        as_stored = reader.frame(2, negotiate('multipart/related; type="application/octet-stream"; transfer-syntax=*',
                                              syntax))
        raw = reader.frame(2, negotiate("", syntax))
    from pydicom import dcmread
    assert as_stored == list(generate_frames(dcmread(packed).PixelData, number_of_frames=3))[1]
    assert raw == pixels[1].astype("<u2").tobytes()


def test_native_frames_by_offset(tmp_path: Path) -> None:
    path = image_file(tmp_path / "mf.dcm", FRAMES, frames=5)
    with FrameReader(path) as reader:
        fmt = negotiate("multipart/related; type=application/octet-stream", ExplicitVRLittleEndian)
        assert reader.frame(4, fmt) == FRAMES[3].astype("<u2").tobytes()
        with pytest.raises(FrameNotFound):
            reader.frame(6, fmt)


@pytest.mark.parametrize(("accept", "stored", "expected"), [
    ("", ExplicitVRLittleEndian, ("application/octet-stream", ExplicitVRLittleEndian)),
    ("*/*", RLELossless, ("application/octet-stream", ExplicitVRLittleEndian)),
    ('multipart/related; type="*/*"', ExplicitVRLittleEndian, ("application/octet-stream", ExplicitVRLittleEndian)),
    ('multipart/related; type="image/jls"', JPEGLSLossless, ("image/jls", JPEGLSLossless)),
    ('multipart/related; type="image/jls"; transfer-syntax=1.2.840.10008.1.2.4.81, '
     'multipart/related; type="application/octet-stream"; q=0.5', JPEGLSLossless,
     ("application/octet-stream", ExplicitVRLittleEndian)),
    ('multipart/related; type="application/octet-stream"; transfer-syntax=*', JPEG2000Lossless,
     ("image/jp2", JPEG2000Lossless)),
    ("multipart/related; type=application/octet-stream; transfer-syntax=*", ExplicitVRLittleEndian,
     ("application/octet-stream", ExplicitVRLittleEndian)),
    ('multipart/related; type="image/jls"', ExplicitVRLittleEndian, None),
    ('multipart/related; type="image/jp2"', "1.2.840.10008.1.2.4.91", None),  # not jp2's default
    ("application/dicom", ExplicitVRLittleEndian, None),
])
def test_negotiate(accept: str, stored: str, expected: tuple[str, str] | None) -> None:
    if expected is None:
        with pytest.raises(NotAcceptable):
            negotiate(accept, stored)
    else:
        fmt = negotiate(accept, stored)
        assert (fmt.media_type, fmt.transfer_syntax) == expected


def test_viewport_keeps_aspect_ratio_and_crops(tmp_path: Path) -> None:
    pixels = np.zeros((20, 40), dtype=np.uint8)
    pixels[:, 20:] = 255
    path = image_file(tmp_path / "v.dcm", pixels)
    assert png(path, viewport=Viewport(100, 100)).shape == (50, 100)
    assert png(path, viewport=Viewport(10, 30)).shape == (5, 10)
    # the right half only, flipped horizontally: a white region
    region = png(path, viewport=Viewport(20, 20, (20, 0, 20, 20)))
    assert region.shape == (20, 20) and region.min() == 255
    with pytest.raises(InvalidQuery):  # sx=0, sw<0: the region lies left of the image
        png(path, viewport=Viewport(40, 20, (0, 0, -40, 20)))
    mirror = png(path, viewport=Viewport(40, 20, (40, 0, -40, 20)))
    assert mirror[:, :15].min() == 255 and mirror[:, 25:].max() == 0
    thumb = render.render_frame(path, 1, render.thumbnail_options(RenderOptions()))
    assert Image.open(io.BytesIO(thumb)).size == (128, 64)


def test_jpeg_quality_and_errors(tmp_path: Path) -> None:
    path = image_file(tmp_path / "q.dcm", RNG.integers(0, 256, size=(64, 64), dtype=np.uint8))
    low = render.render_frame(path, 1, RenderOptions(render.JPEG, quality=10))
    high = render.render_frame(path, 1, RenderOptions(render.JPEG, quality=95))
    assert Image.open(io.BytesIO(low)).format == "JPEG" and len(low) < len(high)
    no_pixels = tmp_path / "sr.dcm"
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.88.11", generate_uid()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.save_as(no_pixels, enforce_file_format=True)
    with pytest.raises(RenderError):
        render.render_frame(no_pixels, 1, RenderOptions())


def test_request_parameters() -> None:
    assert parse_viewport("64,32") == Viewport(64, 32)
    assert parse_viewport("64,32,1,2,-3,4") == Viewport(64, 32, (1, 2, -3, 4))
    assert parse_window("40", "400", "linear-exact") == Window(40, 400, "LINEAR_EXACT")
    assert parse_quality("75") == 75
    assert parse_frame_numbers("1,3, 5") == [1, 3, 5]
    assert render_media_type("image/png") == render.PNG
    assert render_media_type("image/webp;q=1, image/png;q=0.5, image/jpeg;q=0.4") == render.PNG
    assert render_media_type("") == render.JPEG
    for bad in (lambda: parse_viewport("0,10"), lambda: parse_viewport("1,2,3"), lambda: parse_window("a", "1"),
                lambda: parse_window("1", "0"), lambda: parse_window("1", "10", "cubic"), lambda: parse_quality("101"),
                lambda: parse_frame_numbers("0"), lambda: parse_frame_numbers("1,x"),
                lambda: parse_frame_numbers("²"), lambda: parse_frame_numbers("١"),  # str.isdigit() takes these
                lambda: parse_quality("²"), lambda: parse_window("nan", "400"), lambda: parse_window("40", "1e999"),
                lambda: parse_window(" 40", "400"), lambda: parse_viewport("1_0,5"), lambda: parse_viewport("٦٤,32")):
        with pytest.raises(InvalidQuery):
            bad()
    with pytest.raises(NotAcceptable):
        render_media_type("image/gif")


def test_enhanced_multiframe_functional_groups(tmp_path: Path) -> None:
    """Rescale and window per frame from the functional groups (PS3.3 C.7.6.16.2.9, C.7.6.16.2.10)."""
    per_frame = []
    for i in range(3):
        rescale, voi, group = Dataset(), Dataset(), Dataset()
        rescale.RescaleSlope, rescale.RescaleIntercept, rescale.RescaleType = 1, -1000 * i, "US"
        voi.WindowCenter, voi.WindowWidth = 100 * (i + 1), 201
        group.PixelValueTransformationSequence, group.FrameVOILUTSequence = [rescale], [voi]
        per_frame.append(group)
    pixels = RNG.integers(0, 4096, size=(3, 8, 8), dtype=np.uint16)
    path = image_file(tmp_path / "enh.dcm", pixels, frames=3, bits_stored=12, PerFrameFunctionalGroupsSequence=per_frame)
    for i in range(3):
        expected = linear(pixels[i].astype(np.float64) - 1000 * i, 100 * (i + 1), 201)
        assert np.array_equal(png(path, i + 1), expected)
