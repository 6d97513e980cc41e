"""How much decoding one request may cost: the guard against decompression bombs (WADO-RS, WADO-URI, C-GET/C-MOVE).

A few hundred bytes of RLE or JPEG can declare a 40000 x 40000 image (PS3.5 G: an RLE
segment's replicate runs; ITU T.81 B.2.2: the SOF frame size); decoders allocate what the
header declares before they find the data short. Every decode (rendering, uncompressed
frames, transcoding, WADO-URI decompression, a C-GET/C-MOVE sub-operation to a peer that
accepted no stored syntax) first checks the size the attributes declare
(PS3.3 C.7.6.3: Rows x Columns x Samples per Pixel x Bits Allocated, times Number of
Frames for a whole object) against these limits; a larger instance is refused (406, as any
instance we cannot render or convert), its stored bytes still retrievable as stored.
"""

from __future__ import annotations

from pydicom.dataset import Dataset

from archive.core.errors import ArchiveError

# One frame: 2^26 samples (an 8192 x 8192 grey frame, a 4730 x 4730 colour one); rendering
# holds it a few times over in float64 (modality LUT, window), so ~0.5-1.5 GiB at most.
MAX_FRAME_SAMPLES = 1 << 26
# A whole object decoded in memory (transcoding, WADO-URI decompression): 1 GiB.
MAX_DECODED_BYTES = 1 << 30
# The longest side of a rendered image (viewport, WADO-URI rows/columns): larger asks are fitted.
MAX_OUTPUT_SIDE = 4096
# The Image Pixel attributes the check reads (PS3.3 C.7.6.3).
TAGS = [0x00280002, 0x00280008, 0x00280010, 0x00280011, 0x00280100]


class TooLargeToDecode(ArchiveError):
    """The instance declares more pixels than the archive decodes for one request."""


def _int(ds: Dataset, keyword: str, default: int) -> int:
    try:
        value = ds.get(keyword)
        return int(value) if value not in (None, "") else default
    except (TypeError, ValueError):
        return default


def frame_samples(ds: Dataset) -> int:
    return _int(ds, "Rows", 0) * _int(ds, "Columns", 0) * max(_int(ds, "SamplesPerPixel", 1), 1)


def check_frame(ds: Dataset) -> None:
    """Raise :class:`TooLargeToDecode` when one frame declares more than MAX_FRAME_SAMPLES."""
    samples = frame_samples(ds)
    if samples > MAX_FRAME_SAMPLES:
        raise TooLargeToDecode(f"a frame of {_int(ds, 'Rows', 0)} x {_int(ds, 'Columns', 0)} pixels is larger "
                               f"than the {MAX_FRAME_SAMPLES} samples decoded per request")


def check_object(ds: Dataset) -> None:
    """Raise :class:`TooLargeToDecode` when the whole object decodes to more than MAX_DECODED_BYTES."""
    check_frame(ds)
    frames = max(_int(ds, "NumberOfFrames", 1), 1)
    size = frame_samples(ds) * frames * max((_int(ds, "BitsAllocated", 8) + 7) // 8, 1)
    if size > MAX_DECODED_BYTES:
        raise TooLargeToDecode(f"the pixel data decodes to {size} bytes, more than the {MAX_DECODED_BYTES} "
                               "decoded per request; retrieve it as stored (transfer-syntax=*)")
