"""Frame pixel data for WADO-RS ``.../frames/{n}`` (PS3.18 8.7.3.5 and 10.4.1.1.5).

A frame goes out either as stored (the compressed bitstream of a frame of an
encapsulated transfer syntax, PS3.5 A.4) or uncompressed (``application/octet-stream``,
the frame's bytes as Explicit VR Little Endian would hold them). Which one is
negotiated from the Accept header (PS3.18 8.7.3.5.2, Table 8.7.3-5; parsed by
:func:`archive.query.dicomweb.negotiation.parse_accept`). Reading is
synchronous file work on a spooled copy: callers run it in an executor. Only the
frames asked for are read: native frames by offset, compressed ones through the
Basic/Extended Offset Table (``pydicom.encaps.get_frame``).
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from pydicom import dcmread
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.encaps import get_frame
from pydicom.pixels import pack_bits, pixel_array
from pydicom.pixels.utils import get_expected_length
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
)

from archive.core.query import InvalidQuery
from archive.core.decode_limits import TooLargeToDecode, check_frame
from archive.query.dicomweb.media.render import FrameNotFound, RenderError, number_of_frames
from archive.query.dicomweb.negotiation import NotAcceptable, parse_accept

OCTET_STREAM = "application/octet-stream"

# PS3.18 Table 8.7.3-5: media types of compressed frames and their transfer syntaxes,
# the default first.
FRAME_MEDIA_TYPES: dict[str, tuple[str, ...]] = {
    "image/jpeg": ("1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51",
                   "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70"),
    "image/jls": ("1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"),
    "image/jp2": ("1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91"),
    "image/jpx": ("1.2.840.10008.1.2.4.92", "1.2.840.10008.1.2.4.93"),
    "image/jphc": ("1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203"),
    "image/dicom-rle": ("1.2.840.10008.1.2.5",),
}
_MEDIA_OF_SYNTAX = {ts: media for media, syntaxes in FRAME_MEDIA_TYPES.items() for ts in syntaxes}


@dataclass(frozen=True)
class FrameFormat:
    """What each part of the response holds: its media type and transfer syntax."""

    media_type: str
    transfer_syntax: str

    @property
    def as_stored(self) -> bool:
        return self.media_type != OCTET_STREAM

    @property
    def content_type(self) -> str:
        return f"{self.media_type}; transfer-syntax={self.transfer_syntax}"


def parse_frame_numbers(text: str) -> list[int]:
    """``1,3,5`` -> [1, 3, 5]; PS3.18 8.3.3.1.2: frame numbers are 1-based."""
    numbers = []
    for part in text.split(","):
        part = part.strip()
        if not (part.isascii() and part.isdigit()) or int(part) < 1:  # str.isdigit() takes "١" and "²" too
            raise InvalidQuery(f"frame list {text!r}: {part!r} is not a frame number (1, 2, ...)")
        numbers.append(int(part))
    return numbers


def negotiate(accept: str, stored_syntax: str) -> FrameFormat:
    """The frame format to send for the Accept header (PS3.18 8.7.3.5.2), or NotAcceptable.

    ``transfer-syntax=*`` asks for the frames as stored. Compressed frames are
    sent as stored or decompressed; we do not transcode between compressed syntaxes.
    """
    stored = UID(stored_syntax)
    stored_media = _MEDIA_OF_SYNTAX.get(stored_syntax) if stored.is_compressed else None
    uncompressed = FrameFormat(OCTET_STREAM, ExplicitVRLittleEndian)
    for entry in parse_accept(accept or "*/*"):
        media = entry.media_type
        if media in ("multipart/related", "multipart/*"):
            media = entry.params.get("type", OCTET_STREAM).lower()
        if media == "*/*":  # also type="*/*", dicomweb-client's default (PS3.18 8.7.3.5.2: our default)
            media = OCTET_STREAM
        syntax = entry.params.get("transfer-syntax", "")
        if syntax == "*":  # as stored, whatever it is
            return FrameFormat(stored_media, stored_syntax) if stored_media else uncompressed
        if media == OCTET_STREAM and syntax in ("", ExplicitVRLittleEndian):
            return uncompressed
        # absent, the transfer-syntax parameter means the media type's default
        if media == stored_media and (syntax or FRAME_MEDIA_TYPES[media][0]) == stored_syntax:
            return FrameFormat(media, stored_syntax)
    raise NotAcceptable(f"cannot produce any of {accept!r} from frames stored as {stored_syntax}")


class FrameReader:
    """One spooled Part 10 file; reads single frames as stored or uncompressed."""

    def __init__(self, path: Path) -> None:
        self.path = path
        # Values over 1 KiB (pixel data above all) are not read, only located.
        self.ds: Dataset = dcmread(path, defer_size=1024)
        self.syntax = UID(self.ds.file_meta.TransferSyntaxUID)
        element = self.ds.get_item("PixelData", keep_deferred=True)
        if element is None:
            raise RenderError("the instance has no Pixel Data")
        self.frames = number_of_frames(self.ds)
        self._inline: bytes | None = None  # pixel data small enough to have been read
        self.pixel_offset = 0
        if isinstance(element, RawDataElement) and element.value is None:
            self.pixel_offset = element.value_tell
        else:
            self._inline = bytes(self.ds.PixelData)
        self._file: BinaryIO | None = None

    def __enter__(self) -> "FrameReader":
        self._file = io.BytesIO(self._inline) if self._inline is not None else open(self.path, "rb")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._file is not None:
            self._file.close()

    def check(self, numbers: Iterable[int]) -> None:
        for n in numbers:
            if n > self.frames:
                raise FrameNotFound(n, self.frames)

    def check_decodable(self, fmt: FrameFormat) -> None:
        """RenderError when frames would be decoded and one declares more than we decode per request."""
        if not fmt.as_stored and (self.syntax.is_compressed or self.syntax == DeflatedExplicitVRLittleEndian):
            try:
                check_frame(self.ds)
            except TooLargeToDecode as exc:
                raise RenderError(str(exc)) from None

    def frame(self, number: int, fmt: FrameFormat) -> bytes:
        """Frame ``number`` (1-based) in the negotiated format."""
        self.check([number])
        if fmt.as_stored:
            return self._stored(number - 1)
        return self._uncompressed(number - 1)

    def _stored(self, index: int) -> bytes:
        assert self._file is not None
        self._file.seek(self.pixel_offset)
        extended = None
        if "ExtendedOffsetTable" in self.ds and "ExtendedOffsetTableLengths" in self.ds:
            extended = (self.ds.ExtendedOffsetTable, self.ds.ExtendedOffsetTableLengths)
        return get_frame(self._file, index, number_of_frames=self.frames, extended_offsets=extended)

    def _uncompressed(self, index: int) -> bytes:
        bits = int(self.ds.get("BitsAllocated") or 8)
        native_le = not self.syntax.is_compressed and self.syntax not in (ExplicitVRBigEndian,
                                                                           DeflatedExplicitVRLittleEndian)
        if native_le and bits % 8 == 0:
            # PS3.5 8.1.1: native frames follow each other without padding
            length = int(get_expected_length(self.ds, "bytes")) // self.frames
            assert self._file is not None
            self._file.seek(self.pixel_offset + index * length)
            data = self._file.read(length)
            if len(data) != length:
                raise RenderError("the pixel data is shorter than its attributes say")
            return data
        # compressed, big endian, deflated or 1-bit: decode this frame alone
        try:
            check_frame(self.ds)  # before a decoder allocates what the header declares
        except TooLargeToDecode as exc:
            raise RenderError(str(exc)) from None
        deflated = self.syntax == DeflatedExplicitVRLittleEndian
        arr = pixel_array(dcmread(self.path) if deflated else self.path, index=index)
        if bits == 1:
            return pack_bits(arr)
        return np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()
