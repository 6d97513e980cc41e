"""The header's DICOM JSON read straight from element bytes (describe._plain_json) equals pydicom's.

Every case is read twice, with the plain path and without (``plain=False``: every element through
pydicom's DataElement and to_json_dict, as before the plain path): random values of
every VR the plain path reads, in Explicit and Implicit VR Little Endian, under character sets
that decode ASCII as ASCII and some that do not, inside sequence items with a character set of
their own, and the test data the rest of the suite uses.
"""

from __future__ import annotations

import io
import random
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.datadict import DicomDictionary
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from archive.ingest import describe as module
from archive.ingest.describe import _PLAIN_VRS, dataset_json, read_header
from tests.factories import dataset_bytes, make_ct
from tests.sopclasses import make_sr

# random values are mostly invalid ones: pydicom warns about each (UserWarning and its log)
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

# a standard tag of each VR, not one describe or pydicom treats specially
TAGS = {vr: next(tag for tag, entry in sorted(DicomDictionary.items())
                 if entry[0] == vr and entry[1] == "1" and 0x0008 < tag >> 16 < 0x7FE0 and tag & 0xFFFF
                 and tag not in (0x00080005,) and not entry[2].startswith("Retired"))
        for vr in sorted(_PLAIN_VRS)}
LONG = frozenset({"UT", "UR", "UC", "OB", "OW", "SQ", "UN"})
ALPHABET = "0123456789 .+-eE\\\x00=^AbZz_\t\x1c/:"
CHARSETS = (None, "ISO_IR 6", "ISO_IR 100", "ISO_IR 192", "ISO_IR 13", "ISO_IR 144", "GB18030",
            "\\ISO 2022 IR 87", "ISO 2022 IR 6\\ISO 2022 IR 100")


def element(tag: int, vr: str, value: bytes, implicit: bool, big: bool = False) -> bytes:
    group, elem = tag >> 16, tag & 0xFFFF
    e = ">" if big else "<"
    if implicit:
        return struct.pack("<HHI", group, elem, len(value)) + value
    if vr in LONG:
        return struct.pack(f"{e}HH2s2xI", group, elem, vr.encode(), len(value)) + value
    return struct.pack(f"{e}HH2sH", group, elem, vr.encode(), len(value)) + value


def random_value(rng: random.Random, vr: str) -> bytes:
    if vr in ("US", "SS", "UL", "SL", "FL", "FD"):
        size = struct.calcsize(f"<{vr_format(vr)}")
        count = rng.choice((0, 1, 1, 2, 3))
        tail = rng.choice((b"", b"", b"\x01"))  # a length not a multiple of the value's size
        return bytes(rng.randrange(256) for _ in range(size * count)) + tail
    kind = rng.random()
    if kind < 0.3:  # number-like, where IS and DS differ from one another
        text = rng.choice(("1", "-2", "+3", "007", " 4 ", "1.5", ".5", "5.", "1e3", "-1.2E-4", "1_0", "nan",
                           "inf", "1e999", "", " ", "1.0", "2\\3", "1\\\\2", "1\\ ", "\t5", "5\t", "١"))
        return text.encode("utf-8")
    if kind < 0.4:  # bytes beyond ASCII, and ESC
        return bytes(rng.choice((0x1B, 0xA5, 0xE9, 0xC3, 0x24, 0x42, 0x41, 0x5C)) for _ in range(rng.randrange(1, 9)))
    length = rng.randrange(0, 24)
    return "".join(rng.choice(ALPHABET) for _ in range(length)).encode("ascii")


def vr_format(vr: str) -> str:
    return {"US": "H", "SS": "h", "UL": "L", "SL": "l", "FL": "f", "FD": "d"}[vr]


def both(raw: bytes, syntax: str) -> tuple[object, object]:
    """(plain path, pydicom only) JSON of a dataset's bytes."""
    return (dataset_json(read_header(io.BytesIO(raw), syntax)),
            dataset_json(read_header(io.BytesIO(raw), syntax), plain=False))


def cases(seed: int, count: int) -> Iterator[tuple[bytes, str]]:
    rng = random.Random(seed)
    for _ in range(count):
        implicit = rng.random() < 0.4
        charset = rng.choice(CHARSETS)
        parts = []
        if charset is not None:
            parts.append(element(0x00080005, "CS", charset.encode() + b" " * (len(charset) % 2), implicit))
        for vr in rng.sample(sorted(TAGS), rng.randrange(1, 8)):
            parts.append((TAGS[vr], element(TAGS[vr], vr, random_value(rng, vr), implicit)))
        if rng.random() < 0.3:  # a private block: its creator readable or not (a VR pydicom does not know)
            creator_vr = rng.choice(("LO", "LO", "L(", "UN", "SH"))
            parts.append((0x00110010, element(0x00110010, creator_vr, b"ACME 1.0", implicit)))
            for i, vr in enumerate(rng.sample(sorted(TAGS), 3)):
                parts.append((0x00111010 + i, element(0x00111010 + i, vr, random_value(rng, vr), implicit)))
        ordered = parts[:1] if charset is not None else []
        ordered += [p for _, p in sorted((t, p) for t, p in (x for x in parts if isinstance(x, tuple)))]
        yield b"".join(ordered), str(ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian)


@pytest.mark.parametrize("seed", range(8))
def test_random_values_of_every_plain_vr_give_pydicoms_json(seed: int) -> None:
    plain_read = 0
    for raw, syntax in cases(seed, 400):
        plain, reference = both(raw, syntax)
        assert plain == reference, (raw, syntax)
        plain_read += 1
    assert plain_read == 400


def test_the_plain_path_is_taken() -> None:
    """Not a test that cannot fail: the plain path must answer for the common elements."""
    ds = make_ct(size=16)
    read = read_header(io.BytesIO(dataset_bytes(ds)), ExplicitVRLittleEndian)
    taken = [tag for tag in read.keys() if module._plain_json(read.get_item(tag, keep_deferred=True), True) is not None]
    assert {0x00100010, 0x0020000D, 0x00080060, 0x00280010, 0x00080020} <= set(taken)
    assert len(taken) == len(read), sorted(set(read.keys()) - set(taken))


def test_a_sequence_item_with_a_character_set_of_its_own() -> None:
    """An item naming ISO_IR 13 (0x5C the yen sign) in a Latin-1 dataset: its text goes pydicom's way."""
    for implicit in (False, True):
        syntax = str(ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian)
        inner = (element(0x00080005, "CS", b"ISO_IR 13 ", implicit)
                 + element(0x00100010, "PN", b"A\\B", implicit) + element(0x00081030, "LO", b"x\\y ", implicit))
        item = struct.pack("<HHI", 0xFFFE, 0xE000, len(inner)) + inner
        raw = (element(0x00080005, "CS", b"ISO_IR 100", implicit)
               + element(0x00081032, "SQ", item, implicit) + element(0x00100010, "PN", b"C\\D", implicit))
        plain, reference = both(raw, syntax)
        assert plain == reference


def test_big_endian_numbers_go_pydicoms_way() -> None:
    raw = element(0x00280010, "US", b"\x01\x00", False, big=True) + element(0x00280011, "US", b"\x00\x02", False, big=True)
    plain, reference = both(raw, str(ExplicitVRBigEndian))
    assert plain == reference and plain["00280010"]["Value"] == [256]


@pytest.mark.parametrize("make", [lambda: make_ct(size=16), lambda: make_sr("1.2.3.4", "PID-1", "a report\\ text")])
def test_the_suites_test_data(make: object, tmp_path: Path) -> None:
    ds = make()  # type: ignore[operator]
    for syntax in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
        plain, reference = both(dataset_bytes(ds, implicit=syntax == ImplicitVRLittleEndian), str(syntax))
        assert plain == reference


@pytest.mark.parametrize("implicit", [False, True])
def test_the_uids_read_from_their_bytes_are_pydicoms(implicit: bool) -> None:
    """describe's four UIDs: read from the element's bytes when they hold one value, else through
    pydicom; valid or refused (InvalidUID) the same way, hostile values included."""
    from archive.core.errors import InvalidInstance
    from archive.core.uids import validate_uid

    rng = random.Random(13)
    values = [b"1.2.3", b"1.2.3\x00", b"1.2.3 ", b" 1.2.3", b"1.2\x003.4", b"1.2.3\\1.2.4", b"../../x", b"1.02.3",
              b"1.2.abc", b"", b"\x00", b"1." + b"2" * 70, b"1.2\t", b"1.2.3\xe9", b"\\", b"1.2.3\\"]
    values += [bytes(rng.choice(b"0123456789.\\ \x00\tx") for _ in range(rng.randrange(12))) for _ in range(300)]
    syntax = str(ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian)
    for value in values:
        for keyword, tag in module._UID_TAGS.items():
            ds = read_header(io.BytesIO(element(0x00080005, "CS", b"ISO_IR 100", implicit)
                                        + element(tag, "UI", value, implicit)), syntax)
            outcomes = []
            for read in (lambda: module._uid(ds, keyword), lambda: validate_uid(ds.get(keyword), keyword)):
                try:
                    outcomes.append(("valid", read()))
                except InvalidInstance as exc:
                    outcomes.append(("refused", type(exc).__name__))
            assert outcomes[0] == outcomes[1], (value, keyword)
