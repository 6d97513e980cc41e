"""WADO-RS transcoding: the transfer syntax an instance is sent in, and the conversion (PS3.18 8.7.3.5).

A client names what it accepts in the ``Accept`` header: media ranges such as
``multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.1``,
with q-values, read by :func:`archive.query.dicomweb.negotiation.wanted_syntaxes`.
For each stored instance :func:`choose` picks the first acceptable transfer syntax
we can produce:

* ``transfer-syntax=*`` or the stored syntax: the object as it was stored
  (bytes straight from the object store, no decoding).
* no ``transfer-syntax`` parameter: the default, Explicit VR Little Endian
  (PS3.18 8.7.3.5.2, Table 8.7.3-2), except that pixel data stored lossy
  compressed is sent as stored (the exception the same clause makes), and so
  is pixel data that no installed pydicom plugin can decode.
* an uncompressed syntax (Explicit or Implicit VR Little Endian): decoded with
  pydicom's pixel data plugins when stored compressed.
* a lossless compressed syntax pydicom can encode here (RLE Lossless always;
  JPEG-LS and JPEG 2000 lossless when their plugins are installed), from
  uncompressed or decodable lossless data.

Anything else is not produced: the request is answered 406 Not Acceptable.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydicom import dcmread
from pydicom.pixels import get_decoder, get_encoder
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    HTJ2K,
    ImplicitVRLittleEndian,
    JPEG2000,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

from archive.core.errors import ArchiveError
from archive.core.decode_limits import check_object
from archive.query.dicomweb.negotiation import ANY, DEFAULT

UNCOMPRESSED = (str(ExplicitVRLittleEndian), str(ImplicitVRLittleEndian))
# lossy (or possibly lossy) pixel data: PS3.18 8.7.3.5.2 lets it leave as stored by default
LOSSY = frozenset(map(str, (JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLSNearLossless, JPEG2000, HTJ2K)))
ENCODABLE = (str(RLELossless), str(JPEGLSLossless), str(JPEG2000Lossless))


class TranscodeError(ArchiveError):
    """The instance cannot be converted to the transfer syntax asked for."""


@lru_cache(maxsize=128)
def _plugin(syntax: str, encode: bool) -> bool:
    """Whether an installed pydicom plugin decodes (encodes) pixel data in ``syntax``."""
    try:
        return bool((get_encoder if encode else get_decoder)(UID(syntax)).is_available)
    except (NotImplementedError, ValueError):
        return False


def can_produce(stored: str, target: str) -> bool:
    if target == stored:
        return True
    source = UID(stored)
    readable = not source.is_compressed or _plugin(stored, encode=False)
    if target in UNCOMPRESSED:
        return readable
    if target in ENCODABLE:
        return readable and stored not in LOSSY and _plugin(target, encode=True)
    return False


def choose(stored: str, wanted: list[str]) -> str | None:
    """The transfer syntax to send an instance stored in ``stored`` in; None: not acceptable."""
    for syntax in wanted:
        if syntax in (ANY, stored):
            return stored
        if syntax == DEFAULT:  # PS3.18 8.7.3.5.2
            if stored in LOSSY or not can_produce(stored, str(ExplicitVRLittleEndian)):
                return stored
            return str(ExplicitVRLittleEndian)
        if can_produce(stored, syntax):
            return syntax
    return None


def transcode(source: Path, target: Path, syntax: str) -> None:
    """Write the Part 10 file ``source`` to ``target`` in transfer syntax ``syntax`` (blocking).

    The dataset is decoded in memory: one instance at a time.
    """
    wanted = UID(syntax)
    try:
        ds = dcmread(source)
        check_object(ds)  # decoded in memory: bounded before any decoder allocates
        if ds.file_meta.TransferSyntaxUID.is_compressed:
            ds.decompress(generate_instance_uid=False)  # PS3.5 8.2; now Explicit VR Little Endian
        if wanted.is_compressed:
            ds.compress(wanted, generate_instance_uid=False)  # the same instance, re-encoded
        else:
            ds.file_meta.TransferSyntaxUID = wanted
        ds.save_as(target, implicit_vr=wanted.is_implicit_VR, little_endian=True, enforce_file_format=True)
    except Exception as exc:
        raise TranscodeError(f"{syntax}: cannot convert: {type(exc).__name__}: {exc}") from exc
