"""Pixels to a displayable image: the rendering pipeline of WADO-RS and WADO-URI.

PS3.18 8.3.5.1 (rendered media types and query parameters), following the
grayscale pipeline of PS3.3 C.11 and PS3.4 N.2: stored values -> Modality LUT
(rescale, C.11.1) -> VOI LUT or window (C.11.2) -> Presentation LUT
(MONOCHROME1 inverts, C.7.6.3.1.2) -> 8-bit display values. Colour images are
converted to RGB (YBR by pydicom's decoders, PALETTE COLOR through its lookup
tables, C.7.6.3.1.5/6).

Everything here is synchronous CPU work on a local (spooled) file: callers run
it in an executor, never on the event loop. One frame is decoded at a time
(``pydicom.pixels.pixel_array(path, index=n)``), so a multi-GB multi-frame
object is never held whole in memory.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.pixels import apply_color_lut, apply_modality_lut, pixel_array

from archive.core.errors import ArchiveError
from archive.core.query import InvalidQuery
from archive.core.decode_limits import MAX_OUTPUT_SIDE, TAGS, TooLargeToDecode, check_frame

JPEG = "image/jpeg"
PNG = "image/png"
MEDIA_TYPES = (JPEG, PNG)
DEFAULT_QUALITY = 90  # JPEG quality when the request gives none (PS3.18 8.3.5.1.2: 1-100)
THUMBNAIL_SIZE = 128  # pixels, the longer side of a thumbnail when no viewport is given

# Besides group 0028 (always read with the frame), what rendering looks at.
_FUNCTIONAL_GROUPS: list[int] = [0x52009229, 0x52009230]  # shared, per-frame
_FUNCTIONS = ("LINEAR", "LINEAR_EXACT", "SIGMOID")  # PS3.3 C.11.2.1.3


class RenderError(ArchiveError):
    """The instance cannot be rendered (no pixel data, unsupported encoding)."""


class FrameNotFound(ArchiveError):
    """The frame number is beyond the instance's Number of Frames."""

    def __init__(self, frame: int, frames: int) -> None:
        super().__init__(f"frame {frame} does not exist (the instance has {frames})")
        self.frame = frame
        self.frames = frames


@dataclass(frozen=True)
class Window:
    """A VOI window (PS3.3 C.11.2.1.2): center, width and VOI LUT Function."""

    center: float
    width: float
    function: str = "LINEAR"


@dataclass(frozen=True)
class Viewport:
    """PS3.18 8.3.5.1.3: the output size, optionally a source region (sx, sy, sw, sh).

    A negative sw or sh flips the region horizontally or vertically.
    """

    width: int
    height: int
    region: tuple[int, int, int, int] | None = None


@dataclass(frozen=True)
class RenderOptions:
    media_type: str = JPEG
    quality: int = DEFAULT_QUALITY
    window: Window | None = None
    viewport: Viewport | None = None
    crop: tuple[float, float, float, float] | None = None  # x1, y1, x2, y2 as fractions (WADO-URI region)


def number_of_frames(ds: Dataset) -> int:
    try:
        return max(int(ds.get("NumberOfFrames") or 1), 1)
    except (TypeError, ValueError):
        return 1


def read_frame(path: Path, index: int) -> tuple[np.ndarray, Dataset]:
    """Decode frame ``index`` (0-based) of a Part 10 file; its array and the Image Pixel attributes.

    Colour frames come back as RGB (pydicom converts YBR_FULL, YBR_FULL_422,
    YBR_RCT and YBR_ICT). Raises :class:`FrameNotFound` or :class:`RenderError`.
    """
    header = dcmread(path, stop_before_pixels=True, specific_tags=TAGS)
    frames = number_of_frames(header)
    if index >= frames:
        raise FrameNotFound(index + 1, frames)
    try:
        check_frame(header)  # before a decoder allocates what the header declares
    except TooLargeToDecode as exc:
        raise RenderError(str(exc)) from None
    meta = Dataset()
    try:
        arr = pixel_array(path, index=index, ds_out=meta, specific_tags=_FUNCTIONAL_GROUPS)
    except (AttributeError, KeyError) as exc:  # no Pixel Data, or Image Pixel attributes missing
        raise RenderError(f"no renderable pixel data: {exc}") from None
    except (ValueError, NotImplementedError, RuntimeError) as exc:  # no decoder plugin could do it
        raise RenderError(f"cannot decode the pixel data: {exc}") from None
    return arr, meta


def _frame_item(meta: Dataset, sequence: str, index: int, keyword: str) -> Dataset | None:
    """An item of a functional group macro (PS3.3 C.7.6.16): per-frame first, then shared."""
    per_frame = meta.get("PerFrameFunctionalGroupsSequence")
    groups = []
    if per_frame is not None and index < len(per_frame):
        groups.append(per_frame[index])
    groups += list(meta.get("SharedFunctionalGroupsSequence") or [])[:1]
    for group in groups:
        items = group.get(sequence)
        if items and keyword in items[0]:
            return items[0]
    return None


def modality_values(arr: np.ndarray, meta: Dataset, index: int = 0) -> np.ndarray:
    """Stored values -> modality values (PS3.3 C.11.1): Modality LUT or rescale slope/intercept."""
    if "ModalityLUTSequence" in meta:
        return apply_modality_lut(arr, meta).astype(np.float64)
    slope, intercept = meta.get("RescaleSlope"), meta.get("RescaleIntercept")
    item = _frame_item(meta, "PixelValueTransformationSequence", index, "RescaleSlope")
    if slope is None and item is not None:  # enhanced multi-frame objects
        slope, intercept = item.get("RescaleSlope"), item.get("RescaleIntercept")
    values = arr.astype(np.float64)
    if slope is not None and float(slope) != 1.0:
        values *= float(slope)
    if intercept is not None and float(intercept) != 0.0:
        values += float(intercept)
    return values


def apply_window(values: np.ndarray, window: Window) -> np.ndarray:
    """Modality values -> 0..255 through a window (PS3.3 C.11.2.1.2.1, C.11.2.1.3.1)."""
    c, w = window.center, window.width
    if window.function == "SIGMOID":
        return 255.0 / (1.0 + np.exp(-4.0 * (values - c) / w))
    if window.function == "LINEAR_EXACT":
        out = ((values - c) / w + 0.5) * 255.0
    else:  # LINEAR
        out = ((values - (c - 0.5)) / max(w - 1.0, 1e-9) + 0.5) * 255.0
    return np.clip(out, 0.0, 255.0)


def _first(value: Any) -> float:
    """The first value of a possibly multi-valued DS/IS attribute."""
    if isinstance(value, (list, tuple)) or hasattr(value, "__getitem__") and not isinstance(value, str):
        return float(value[0])
    return float(value)


def stored_window(meta: Dataset, index: int = 0) -> Window | None:
    """The first window preset of the instance (or of the frame, for enhanced objects)."""
    source: Dataset | None = meta if "WindowCenter" in meta and "WindowWidth" in meta else None
    if source is None:
        source = _frame_item(meta, "FrameVOILUTSequence", index, "WindowCenter")
    if source is None or "WindowWidth" not in source:
        return None
    function = str(source.get("VOILUTFunction") or "LINEAR").upper()
    try:
        window = Window(_first(source.WindowCenter), _first(source.WindowWidth),
                        function if function in _FUNCTIONS else "LINEAR")
    except (TypeError, ValueError, IndexError):
        return None
    return window if window.width > 0 else None


def _voi_lut(values: np.ndarray, item: Dataset, signed: bool) -> np.ndarray:
    """Modality values through a VOI LUT (PS3.3 C.11.2.1.1), scaled from its output range to 0..255."""
    entries, first, bits = (int(v) for v in item.LUTDescriptor)
    entries = entries or 65536  # C.11.2.1.1: 0 means 2^16
    if signed and first >= 2**15:  # the first mapped value is SS for signed pixels
        first -= 2**16
    data = item.LUTData
    if isinstance(data, bytes):  # OW: 16-bit words, little endian (we store LE syntaxes)
        lut = np.frombuffer(data, dtype="<u2")[:entries].astype(np.float64)
    else:
        lut = np.asarray(data if isinstance(data, (list, tuple)) else [data], dtype=np.float64)[:entries]
    indices = np.clip(np.rint(values) - first, 0, lut.size - 1).astype(np.int64)
    return np.clip(lut[indices] * (255.0 / float(2**bits - 1)), 0.0, 255.0)


def grayscale(arr: np.ndarray, meta: Dataset, window: Window | None = None, index: int = 0) -> np.ndarray:
    """A monochrome frame -> 8-bit display values (PS3.4 N.2.1)."""
    values = modality_values(arr, meta, index)
    chosen = window or (None if "VOILUTSequence" in meta else stored_window(meta, index))
    if chosen is not None:
        out = apply_window(values, chosen)
    elif "VOILUTSequence" in meta:
        out = _voi_lut(values, meta.VOILUTSequence[0], meta.get("PixelRepresentation") == 1)  # the first VOI LUT by default
    else:  # no VOI: the frame's own range
        low, high = float(values.min()), float(values.max())
        out = (values - low) * (255.0 / (high - low)) if high > low else np.zeros_like(values)
    if str(meta.get("PhotometricInterpretation", "")).strip() == "MONOCHROME1":
        out = 255.0 - out  # C.7.6.3.1.2: minimum is white
    return np.rint(out).astype(np.uint8)


def color(arr: np.ndarray, meta: Dataset) -> np.ndarray:
    """A colour frame -> 8-bit RGB (palette lookup, or scale of >8-bit samples)."""
    photometric = str(meta.get("PhotometricInterpretation", "")).strip()
    bits = int(meta.get("BitsStored") or 8)
    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(arr, meta)
        descriptor = meta.get("RedPaletteColorLookupTableDescriptor") or [0, 0, 16]
        bits = int(descriptor[2]) if int(descriptor[2]) in (8, 16) else 16
        arr = rgb
    if bits <= 8 and arr.dtype == np.uint8:
        return arr
    scaled = arr.astype(np.float64) * (255.0 / float(2**bits - 1))
    return np.rint(np.clip(scaled, 0.0, 255.0)).astype(np.uint8)


def display(arr: np.ndarray, meta: Dataset, window: Window | None = None, index: int = 0) -> np.ndarray:
    """A decoded frame -> uint8 array (H, W) grayscale or (H, W, 3) RGB."""
    photometric = str(meta.get("PhotometricInterpretation", "")).strip()
    if arr.ndim == 3 or photometric == "PALETTE COLOR":
        return color(arr, meta)
    if arr.ndim != 2:
        raise RenderError(f"unexpected pixel array shape {arr.shape}")
    return grayscale(arr, meta, window, index)


def apply_viewport(image: Image.Image, viewport: Viewport | None) -> Image.Image:
    """Crop/flip to the source region, then scale to fit (vw, vh) keeping the aspect ratio."""
    if viewport is None:
        return image
    if viewport.region is not None:
        sx, sy, sw, sh = viewport.region
        left, right = sorted((sx, sx + sw))
        top, bottom = sorted((sy, sy + sh))
        box = (max(left, 0), max(top, 0), min(right, image.width), min(bottom, image.height))
        if box[2] <= box[0] or box[3] <= box[1]:
            raise InvalidQuery("viewport: the source region lies outside the image")
        image = image.crop(box)
        if sw < 0:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if sh < 0:
            image = image.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    scale = min(viewport.width / image.width, viewport.height / image.height,
                MAX_OUTPUT_SIDE / image.width, MAX_OUTPUT_SIDE / image.height)  # a huge ask is fitted
    size = (max(round(image.width * scale), 1), max(round(image.height * scale), 1))
    if size == image.size:
        return image
    return image.resize(size, Image.Resampling.LANCZOS if scale < 1 else Image.Resampling.BICUBIC)


def encode(image: Image.Image, media_type: str, quality: int = DEFAULT_QUALITY) -> bytes:
    out = io.BytesIO()
    if media_type == PNG:
        image.save(out, format="PNG")
    elif media_type == JPEG:
        image.save(out, format="JPEG", quality=quality)
    else:
        raise RenderError(f"cannot render {media_type}")
    return out.getvalue()


def render_frame(path: Path, frame: int, options: RenderOptions) -> bytes:
    """Frame ``frame`` (1-based) of a Part 10 file, rendered and encoded."""
    arr, meta = read_frame(path, frame - 1)
    pixels = display(arr, meta, options.window, frame - 1)
    image = Image.fromarray(pixels)
    if options.crop is not None:
        x1, y1, x2, y2 = options.crop
        box = (int(x1 * image.width), int(y1 * image.height), int(x2 * image.width), int(y2 * image.height))
        image = image.crop((box[0], box[1], max(box[2], box[0] + 1), max(box[3], box[1] + 1)))
    image = apply_viewport(image, options.viewport)
    return encode(image, options.media_type, options.quality)


def thumbnail_options(options: RenderOptions) -> RenderOptions:
    """A thumbnail is a rendering that fits THUMBNAIL_SIZE unless a viewport is given."""
    if options.viewport is not None:
        return options
    return replace(options, viewport=Viewport(THUMBNAIL_SIZE, THUMBNAIL_SIZE))
