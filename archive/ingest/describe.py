"""Read what the archive needs from a received dataset without loading bulk data.

The dataset file (as spooled by the receiver, without File Meta Information)
is parsed up to the pixel data; elements larger than ``BULK_THRESHOLD`` are
never read. The result carries the validated UIDs and the DICOM JSON metadata.
"""

from __future__ import annotations

import functools
import io
import math
import re
import struct
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, cast

from pydicom.charset import convert_encodings
from pydicom.dataelem import DataElement, RawDataElement, convert_raw_data_element
from pydicom.datadict import DicomDictionary, dictionary_VR
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.tag import BaseTag
from pydicom.uid import (UID, DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ExplicitVRLittleEndian,
                         ImplicitVRLittleEndian)
from pydicom.values import convert_string
from pydicom.valuerep import VR

from archive.core.errors import MalformedDataset
from archive.core.models import DicomJson, IndexMessage
from archive.core.uids import encode_uid, validate_uid

try:  # the native core (native/, Rust): the header read and its DICOM JSON; without it, Python's way
    import archive_native
except ImportError:  # pragma: no cover - a checkout whose native package was not built
    archive_native = None  # type: ignore[assignment]

BULK_THRESHOLD = 16 * 1024  # values above this stay out of the metadata (PS3.18 BulkDataURI)
PIXEL_GROUP = 0x7FE0
MAX_INFLATED = 256 * 1024 * 1024  # a Deflated Explicit VR dataset is inflated in memory up to this
MAX_DEFLATED_INPUT = 64 * 1024 * 1024
# A sequence is metadata (SR content, codes, references), never bulk: read even when long,
# up to this size; its bulk values inside still become BulkDataURIs.
MAX_SEQUENCE_BYTES = 64 * 1024 * 1024
IMPLEMENTATION_CLASS_UID = "1.2.826.0.1.3680043.10.1437.1"  # dicom-archive
IMPLEMENTATION_VERSION = "DICOMARCHIVE01"
_META_ELEMENT = struct.Struct("<HH2sH")
_META_ELEMENT_HEAD = struct.Struct("<HH2s")
_LONG_LENGTH_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})
# (0002,0001) File Meta Information Version: OB, 2 reserved bytes, 4-byte length, 00 01
_META_VERSION = struct.pack("<HH2s2xI", 0x0002, 0x0001, b"OB", 2) + b"\x00\x01"


@dataclass(frozen=True)
class Description:
    study_uid: str
    series_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    metadata: DicomJson

    def index_message(self, key: str, size: int, sha256: str, source_aet: str) -> IndexMessage:
        """The message the indexer needs for this instance, stored under ``key``."""
        return IndexMessage(
            key=key,
            size=size,
            sha256=sha256,
            study_uid=self.study_uid,
            series_uid=self.series_uid,
            sop_instance_uid=self.sop_instance_uid,
            sop_class_uid=self.sop_class_uid,
            transfer_syntax_uid=self.transfer_syntax_uid,
            received_at=time.time(),
            source_aet=source_aet,
            metadata=self.metadata,
        )


def _stop_at_pixels(tag: BaseTag, vr: str | None, length: int) -> bool:
    return tag.group >= PIXEL_GROUP and tag.group != 0xFFFE


def _clean(value: Any) -> Any:
    """JSON-safe: no NUL characters (PostgreSQL text and jsonb refuse them)."""
    if isinstance(value, str):
        return value.replace("\x00", "")
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    return value


def _finish(out: dict[str, Any]) -> dict[str, Any]:
    values = out.get("Value")
    if isinstance(values, list):
        if any(isinstance(v, float) and not math.isfinite(v) for v in values):
            # NaN/Infinity are not DICOM JSON numbers (PS3.18 F.2.3); keep the element, not the value
            del out["Value"]
        else:
            out["Value"] = [_clean(v) for v in values]
    return out


def _element_json(elem: DataElement, prefix: str) -> dict[str, Any]:
    return _finish(elem.to_json_dict(bulk_data_element_handler=lambda e: f"bulk:{prefix}{e.tag:08X}",
                                     bulk_data_threshold=BULK_THRESHOLD))


_VRS = frozenset(vr.value for vr in VR)

# The common elements' DICOM JSON straight from their bytes (_plain_json), as pydicom's element
# conversion and to_json_dict give it: the header parse and DICOM JSON were a quarter of `serve`'s
# CPU an instance, most of it pydicom building a DataElement per element (docs/benchmarks.md,
# "The header's DICOM JSON without pydicom's elements"). Anything else, or anything unusual in a
# value, takes pydicom's way; tests/unit/test_describe_plain.py and the describe fuzz target compare both.
_MULTI = frozenset({"AS", "CS", "DA", "DT", "TM", "UI"})  # values.multi_string: the whole value stripped, then split
_TEXT = frozenset({"SH", "LO"})  # values.convert_text: split, each value stripped
_SINGLE = frozenset({"ST", "LT", "UT"})  # values.convert_single_string: one value
_BINARY = {"US": "H", "SS": "h", "UL": "L", "SL": "l", "FL": "f", "FD": "d"}  # values.convert_numbers
_SIZES = {vr: struct.calcsize(f"<{fmt}") for vr, fmt in _BINARY.items()}
_PLAIN_VRS = _MULTI | _TEXT | _SINGLE | frozenset(_BINARY) | {"AE", "UR", "PN", "IS", "DS"}
# Implicit VR: the dictionary's VR, for the standard tags with one of the VRs above
_IMPLICIT_VR = {tag: entry[0] for tag, entry in DicomDictionary.items() if entry[0] in _PLAIN_VRS}
_SEQUENCES = frozenset(tag for tag, entry in DicomDictionary.items() if entry[0] == "SQ")
_IS = re.compile(r" *[+-]?[0-9]+ *")  # what int() reads the same way as pydicom's IS (no "1_0", no "1.0")
_DS = re.compile(r" *[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)? *")  # no "nan", "inf", "1_0"
_ASCII_BUT_ESCAPE = bytes(b for b in range(128) if b != 0x1B)  # ESC starts ISO 2022 code extensions


@functools.lru_cache(maxsize=64)
def _decodes_as_ascii(encodings: tuple[str, ...]) -> bool:
    """Is the dataset's character set one byte ISO 8859 (ISO_IR 6, 100, 101, ...) or UTF-8 (ISO_IR
    192), whose ASCII bytes pydicom decodes as ASCII? Not ISO_IR 13 (0x5C is the yen sign), not
    GB18030 or GBK (pydicom splits their person names its own way), not code extensions."""
    if len(encodings) != 1 or not encodings[0].startswith(("iso8859", "iso_ir_1", "latin_1", "UTF8")):
        return False
    try:
        return _ASCII_BUT_ESCAPE.decode(encodings[0]) == _ASCII_BUT_ESCAPE.decode("ascii")
    except (LookupError, UnicodeDecodeError):
        return False


def _uid_values(text: str) -> list[str]:
    """UI values as pydicom's convert_UI and UID class read them: the value stripped of trailing NULs
    and spaces, split, each value stripped."""
    return [v.strip() for v in text.rstrip("\0 ").split("\\")]


def _plain_json(raw: RawDataElement, ascii_text: bool) -> dict[str, Any] | None:
    """The element's DICOM JSON from its bytes, or None: pydicom's conversion decides."""
    value = raw.value
    vr = raw.VR if raw.VR is not None else _IMPLICIT_VR.get(raw.tag)
    if vr not in _PLAIN_VRS or not isinstance(value, bytes):
        return None
    if not value:
        return {"vr": vr}
    fmt = _BINARY.get(vr)
    if fmt is not None:
        size = _SIZES[vr]
        if not raw.is_little_endian or len(value) % size:
            return None
        numbers = list(struct.unpack(f"<{len(value) // size}{fmt}", value))
        if vr in ("FL", "FD") and not all(map(math.isfinite, numbers)):
            return {"vr": vr}  # as _finish: NaN/Infinity are not DICOM JSON numbers
        return {"vr": vr, "Value": numbers}
    if not ascii_text or not value.isascii() or b"\x1b" in value:
        return None
    text = value.decode("ascii")
    if vr == "UI":
        values = _uid_values(text)
    elif vr in _MULTI:
        values = text.rstrip("\0 ").split("\\")
    elif vr in _TEXT:
        values = [v.rstrip("\0 ") for v in text.split("\\")]
    elif vr in _SINGLE:
        values = [text.rstrip("\0 ")]
    elif vr == "AE":
        values = [v.strip() for v in text.split("\\")]
    elif vr == "UR":
        values = [text.rstrip()]
    elif vr == "PN":
        values = text.rstrip("\0 ").split("\\")
        if len(values) > 1 and not all(values) or any("=" in v for v in values):
            return None  # component groups: PersonName's parsing; an empty one of several: its IndexError
    else:  # IS, DS
        values = (text.strip() if vr == "DS" else text).rstrip("\0 ").split("\\")
        if values == [""]:
            return {"vr": vr}
        pattern = _IS if vr == "IS" else _DS
        if not all(pattern.fullmatch(v) for v in values):
            return None
        return _finish({"vr": vr, "Value": [int(v) if vr == "IS" else float(v) for v in values]})
    if values == [""]:
        return {"vr": vr}
    if "\0" in text:  # as _clean
        values = [v.replace("\0", "") for v in values]
    if vr == "PN":
        return {"vr": vr, "Value": [{"Alphabetic": v} for v in values]}
    return {"vr": vr, "Value": values}


def _creator_reads(ds: Dataset, tag: BaseTag) -> bool:
    """A private element's Private Creator, if there is one, converts: pydicom converts it when it
    converts the element (Dataset.__setitem__), and a creator it cannot read makes the element UN."""
    if not tag.group & 1:
        return True
    creator = BaseTag(tag & 0xFFFF0000 | tag.element >> 8)
    if creator == tag or creator not in ds:
        return True
    try:
        ds[creator]
    except Exception:
        return False
    return True


def dataset_json(ds: Dataset, prefix: str = "", ascii_text: bool | None = None, *, plain: bool = True) -> DicomJson:
    """DICOM JSON (PS3.18 F.2) of ``ds`` without deferred or bulk values.

    A bulk value becomes the marker ``bulk:<path>``, its path in the instance:
    ``<tag>`` at the top level, ``<sequence tag>/<item index>/<tag>`` inside items;
    the query service turns markers into BulkDataURIs (PS3.18 F.2.6). ``ascii_text``: the
    text values of ASCII bytes may be read without their character set (default: from ``ds``'s).
    ``plain=False``: every element through pydicom's DataElement and ``to_json_dict``, the reference
    the plain path is compared with (tests/unit/test_describe_plain.py, the describe fuzz target).
    """
    out: DicomJson = {}
    if ascii_text is None or 0x00080005 in ds:  # an item may name its own character set
        charset = ds._character_set
        ascii_text = _decodes_as_ascii((charset,) if isinstance(charset, str) else tuple(charset))
    for tag in sorted(ds.keys()):
        if tag.element == 0 or tag.group in (0x0002, 0xFFFE):
            continue  # group lengths, file meta, delimiters
        raw = ds.get_item(tag, keep_deferred=True)
        if isinstance(raw, RawDataElement):
            if raw.value is None and raw.length:
                # the VR as the file spells it, unread by pydicom: only one of PS3.5 6.2 (fuzzing: "C\x00")
                vr = raw.VR if raw.VR in _VRS else "UN"
                out[f"{tag:08X}"] = {"vr": vr, "BulkDataURI": f"bulk:{prefix}{tag:08X}"}
                continue
            answer = _plain_json(raw, ascii_text) if plain and _creator_reads(ds, tag) else None
            if answer is not None:
                out[f"{tag:08X}"] = answer
                continue
        try:
            elem = ds[tag]
            if elem.VR == "SQ":
                items = [dataset_json(item, f"{prefix}{tag:08X}/{i}/", ascii_text, plain=plain)
                         for i, item in enumerate(elem.value)]
                out[f"{tag:08X}"] = {"vr": "SQ", "Value": items} if items else {"vr": "SQ"}
            else:
                out[f"{tag:08X}"] = _element_json(elem, prefix)
        except Exception:  # an undecodable element: keep going, record it as bulk-like
            out[f"{tag:08X}"] = {"vr": "UN", "BulkDataURI": f"bulk:{prefix}{tag:08X}"}
    return out


def read_header(fp: BinaryIO, transfer_syntax_uid: str) -> Dataset:
    """Parse a dataset (no File Meta) encoded in ``transfer_syntax_uid`` up to pixel data."""
    ts = UID(transfer_syntax_uid)
    if ts == DeflatedExplicitVRLittleEndian:
        # Deflated datasets are small in practice; inflate to memory.
        # Inflate with a cap: a few KB of deflate must not become gigabytes in memory.
        inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        try:
            data = inflater.decompress(fp.read(MAX_DEFLATED_INPUT + 1), MAX_INFLATED)
        except zlib.error as exc:  # corrupt deflate stream: the sender's data, not our fault (0xC000)
            raise MalformedDataset(f"deflated dataset cannot be inflated: {exc}") from None
        if inflater.unconsumed_tail or len(data) >= MAX_INFLATED:
            raise MalformedDataset(f"deflated dataset inflates beyond {MAX_INFLATED >> 20} MiB")
        fp = io.BytesIO(data)
    implicit = ts == ImplicitVRLittleEndian
    little = ts != ExplicitVRBigEndian
    try:
        ds = read_dataset(
            fp,
            is_implicit_VR=implicit,
            is_little_endian=little,
            stop_when=_stop_at_pixels,
            defer_size=BULK_THRESHOLD,
        )
    except Exception as exc:
        raise MalformedDataset(f"dataset cannot be parsed: {exc}") from exc
    if len(ds) == 0:
        raise MalformedDataset("dataset is empty")
    try:
        charset = ds.get("SpecificCharacterSet")
    except Exception as exc:
        raise MalformedDataset(f"Specific Character Set cannot be read: {exc}") from exc
    try:
        encodings = convert_encodings(charset) if charset else None
    except Exception as exc:
        raise MalformedDataset(f"unknown Specific Character Set: {exc}") from exc
    ds.set_original_encoding(implicit, little, encodings)
    _read_long_sequences(fp, ds, implicit, little, encodings)
    return ds


def _read_long_sequences(fp: BinaryIO, ds: Dataset, implicit: bool, little: bool, encodings: Any) -> None:
    """Read the defined-length sequences ``defer_size`` left unread (PS3.5 7.5).

    pydicom defers any value longer than ``defer_size``, sequences included; an
    SR's Content Sequence easily is. Their bytes are read from the value's offset.
    """
    for tag in list(ds.keys()):
        raw = ds.get_item(tag, keep_deferred=True)
        if not isinstance(raw, RawDataElement) or raw.value is not None or not raw.length:
            continue
        vr = raw.VR or (dictionary_VR(tag) if tag in DicomDictionary else None)
        if vr != "SQ" or raw.length > MAX_SEQUENCE_BYTES:
            continue
        fp.seek(raw.value_tell)
        value = fp.read(raw.length)
        if len(value) != raw.length:
            raise MalformedDataset(f"sequence {BaseTag(tag)} is longer than the dataset")
        full = raw._replace(VR="SQ", value=value)
        try:
            ds[tag] = convert_raw_data_element(full, encoding=encodings, ds=ds)
        except Exception as exc:
            raise MalformedDataset(f"sequence {BaseTag(tag)} cannot be parsed: {exc}") from exc


# The native core reads the first bytes of a dataset; a header longer than this takes pydicom's way.
NATIVE_HEAD_BYTES = 64 * 1024
_NATIVE = archive_native.Header(_IMPLICIT_VR, _SEQUENCES) if archive_native is not None else None
NATIVE = _NATIVE is not None


@functools.lru_cache(maxsize=64)
def _charset_reads_ascii(value: bytes) -> bool | None:
    """For a Specific Character Set's bytes: do ASCII bytes of text read as ASCII under it
    (:func:`_decodes_as_ascii` of what pydicom makes of it)? None when pydicom would refuse it
    (reading, converting or naming its encodings): the native core then leaves the dataset to
    :func:`read_header`, whose error it is."""
    try:
        convert_encodings(convert_string(value, True))  # as pydicom's reader does on the way
        ds = Dataset()
        ds[0x00080005] = RawDataElement(BaseTag(0x00080005), None, len(value), value, 0, True, True)
        charset = ds.get("SpecificCharacterSet")
        if charset:
            convert_encodings(charset)  # as read_header does
        encodings = ds._character_set
    except Exception:
        return None
    return _decodes_as_ascii((encodings,) if isinstance(encodings, str) else tuple(encodings))


def _describe_native(fh: BinaryIO, transfer_syntax_uid: str) -> Description | None:
    """:func:`describe` through the native core, or None where it leaves the dataset to pydicom.

    The core gives the common elements' DICOM JSON and hands the others back as their own bytes
    (sequences, private blocks, other VRs, text of other bytes), with the elements pydicom reads
    them by; :func:`read_header` and :func:`dataset_json` read those as they read a whole dataset.
    """
    assert _NATIVE is not None
    if transfer_syntax_uid not in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
        return None
    data = fh.read(NATIVE_HEAD_BYTES)
    read = _NATIVE.read(data, transfer_syntax_uid == ImplicitVRLittleEndian, len(data) < NATIVE_HEAD_BYTES,
                        _charset_reads_ascii)
    if read is None:
        return None
    metadata, keys, rest, raw_uids = read
    uids = [_uid_values(raw) for raw in raw_uids]
    if any(len(values) != 1 for values in uids):
        return None  # pydicom's conversion decides what several values are
    if keys is not None:
        ds = read_header(io.BytesIO(rest), transfer_syntax_uid)
        try:
            others = dataset_json(ds)
        except Exception as exc:
            raise MalformedDataset(f"dataset cannot be decoded: {exc}") from exc
        merged = {key: metadata.get(key) or others.get(key) for key in keys}
        if not all(merged.values()):
            return None  # not expected: an element neither read
        metadata = cast(DicomJson, merged)
    return Description(
        study_uid=validate_uid(uids[0][0], "StudyInstanceUID"),
        series_uid=validate_uid(uids[1][0], "SeriesInstanceUID"),
        sop_instance_uid=validate_uid(uids[2][0], "SOPInstanceUID"),
        sop_class_uid=validate_uid(uids[3][0], "SOPClassUID"),
        transfer_syntax_uid=validate_uid(str(transfer_syntax_uid), "TransferSyntaxUID"),
        metadata=metadata,
    )


def dataset_offset(path: Path, start: int = 0) -> int:
    """Where the dataset from ``start`` begins: after preamble and File Meta of a Part 10 file, else ``start``.

    The File Meta Information is group 0002 in Explicit VR Little Endian (PS3.10 7.1); its
    elements are stepped over by their lengths, without decoding them. Files that wrote it
    in Implicit VR (seen in the wild; pydicom reads those too) are stepped over the same way.
    """
    with open(path, "rb") as fh:
        fh.seek(start)
        head = fh.read(132)
        if len(head) < 132 or head[128:132] != b"DICM":
            return start
        position = start + 132
        while len(header := fh.read(8)) == 8:
            group, _, vr = _META_ELEMENT_HEAD.unpack_from(header)
            if group != 0x0002:
                break
            if not vr.isalpha() or not vr.isupper():  # Implicit VR: a 4-byte length follows the tag
                size, length = 8, struct.unpack_from("<I", header, 4)[0]
            elif vr in _LONG_LENGTH_VRS:  # PS3.5 7.1.2: 2 reserved bytes, then a 4-byte length
                extra = fh.read(4)
                if len(extra) < 4:
                    break
                size, length = 12, struct.unpack("<I", extra)[0]
            else:
                size, length = 8, struct.unpack_from("<H", header, 6)[0]
            if length == 0xFFFFFFFF:
                raise MalformedDataset("File Meta Information with an undefined length")
            position += size + length
            fh.seek(position)
        if position == start + 132:
            raise MalformedDataset("File Meta Information missing after the DICM prefix")
        return position


_UID_TAGS = {"StudyInstanceUID": 0x0020000D, "SeriesInstanceUID": 0x0020000E, "SOPInstanceUID": 0x00080018,
             "SOPClassUID": 0x00080016}


def _uid(ds: Dataset, keyword: str) -> str:
    """A validated UID of ``ds``; an element pydicom cannot decode (an unknown VR, say, which
    :func:`dataset_json` records as UN) is the sender's malformed data (0xC000), not our failure."""
    raw = ds.get_item(_UID_TAGS[keyword], keep_deferred=True)
    if (isinstance(raw, RawDataElement) and raw.VR in ("UI", None) and isinstance(raw.value, bytes)
            and raw.value.isascii()):  # one value, as pydicom's convert_UI and UID read it
        values = _uid_values(raw.value.decode("ascii"))
        if len(values) == 1:
            return validate_uid(values[0], keyword)
    try:
        value = ds.get(keyword)
    except Exception as exc:
        raise MalformedDataset(f"{keyword} cannot be decoded: {exc}") from exc
    return validate_uid(value, keyword)


def describe(path: Path, transfer_syntax_uid: str, offset: int = 0, *, native: bool = NATIVE) -> Description:
    """Validate the UIDs of a spooled dataset and build its metadata (``native``: through the
    native core where it reads the dataset; False: pydicom's way, the reference)."""
    with open(path, "rb") as fh:
        fh.seek(offset)
        if native and (description := _describe_native(fh, transfer_syntax_uid)) is not None:
            return description
        fh.seek(offset)
        ds = read_header(fh, transfer_syntax_uid)
        try:
            metadata = dataset_json(ds)
        except Exception as exc:
            raise MalformedDataset(f"dataset cannot be decoded: {exc}") from exc
    return Description(
        study_uid=_uid(ds, "StudyInstanceUID"),
        series_uid=_uid(ds, "SeriesInstanceUID"),
        sop_instance_uid=_uid(ds, "SOPInstanceUID"),
        sop_class_uid=_uid(ds, "SOPClassUID"),
        # C-STORE and STOW-RS pass only syntaxes they accept; validated all the same, as it goes into the
        # catalog and the stored File Meta (the fuzz target, which reads it from the File Meta as STOW-RS
        # does but without STOW-RS's list, carried "1.2.840.10\x0008.1.2" into the index message)
        transfer_syntax_uid=validate_uid(str(transfer_syntax_uid), "TransferSyntaxUID"),
        metadata=metadata,
    )


def _meta_element(element: int, vr: bytes, value: bytes) -> bytes:
    """One (0002,eeee) element, explicit VR little endian with a 2-byte length (PS3.5 7.1.2)."""
    return _META_ELEMENT.pack(0x0002, element, vr, len(value)) + value


def file_meta_bytes(sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str) -> bytes:
    """Preamble, ``DICM`` and the File Meta Information group (PS3.10 7.1).

    Encoded here rather than with pydicom's writer, which costs more than the rest of a
    C-STORE's bookkeeping; a unit test holds it byte for byte to pydicom's output, so stored
    objects (and the checksums identical re-sends are compared by) do not change. The UIDs
    are validated ones (ASCII digits and dots).
    """
    version = IMPLEMENTATION_VERSION.encode("ascii")
    body = b"".join((
        _META_VERSION,
        _meta_element(0x0002, b"UI", encode_uid(sop_class_uid)),
        _meta_element(0x0003, b"UI", encode_uid(sop_instance_uid)),
        _meta_element(0x0010, b"UI", encode_uid(transfer_syntax_uid)),
        _meta_element(0x0012, b"UI", encode_uid(IMPLEMENTATION_CLASS_UID)),
        _meta_element(0x0013, b"SH", version + b" " if len(version) % 2 else version),
    ))
    return b"\x00" * 128 + b"DICM" + _META_ELEMENT.pack(0x0002, 0x0000, b"UL", 4) + struct.pack("<I", len(body)) + body
