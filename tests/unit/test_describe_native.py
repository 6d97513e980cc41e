"""The native core's describe (native/, Rust) equals pydicom's way, element for element.

Each dataset is described twice: through the native core (``_describe_native``, which reads
the common elements itself and hands the others back to pydicom) and with ``native=False``
(pydicom reads the whole dataset, the reference). Where the core answers, both must give the
same Description (the same DICOM JSON in the same order) or refuse with the same error; where it
leaves the dataset to pydicom (None), ``describe`` takes pydicom's way. The datasets: random
values of every VR the core reads, with the four UIDs valid or hostile, under character sets
that read ASCII as ASCII and some that do not; sequences of defined and undefined length, private
blocks (a private sequence among them), nested sequences, UN of undefined length, an undefined length that
is not a sequence, values past the bulk threshold, empty values, group lengths, an ambiguous VR, Pixel Data;
then the same bytes cut short, bit-flipped and reordered; and every dataset pydicom ships.
"""

from __future__ import annotations

import random
import struct
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from archive.ingest import describe as module
from tests.conftest import missing
from tests.factories import dataset_bytes, make_ct
from tests.sopclasses import make_sr
from tests.unit.test_describe_plain import CHARSETS, TAGS, element, random_value

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(autouse=True)
def _native_core() -> None:
    if not module.NATIVE:
        missing("the native core (native/) is not installed: make install builds it")

UIDS = (0x00080016, 0x00080018, 0x0020000D, 0x0020000E)
HOSTILE_UIDS = (b"1.2.3\\1.2.4", b"../../x", b"", b"1.02.3", b"1.2\x003", b"1.2.3\xe9", b" 1.2.3 ", b"1." + b"9" * 70)


def _uid(rng: random.Random) -> bytes:
    if rng.random() < 0.05:
        return rng.choice(HOSTILE_UIDS)
    value = f"1.2.826.0.1.{rng.randrange(1, 10**9)}.{rng.randrange(1, 10**6)}".encode()
    return value + (b"\x00" if len(value) % 2 else b"")


def _item(inner: bytes, undefined: bool) -> bytes:
    if undefined:
        return struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF) + inner + struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
    return struct.pack("<HHI", 0xFFFE, 0xE000, len(inner)) + inner


def _sequence(tag: int, items: bytes, implicit: bool, undefined: bool) -> bytes:
    if not undefined:
        return element(tag, "SQ", items, implicit)
    head = (struct.pack("<HHI", tag >> 16, tag & 0xFFFF, 0xFFFFFFFF) if implicit
            else struct.pack("<HH2s2xI", tag >> 16, tag & 0xFFFF, b"SQ", 0xFFFFFFFF))
    return head + items + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)


def random_dataset(rng: random.Random) -> tuple[bytes, str]:
    implicit = rng.random() < 0.4
    parts: dict[int, bytes] = {}

    def add(tag: int, vr: str, value: bytes) -> None:
        parts[tag] = element(tag, vr, value, implicit)

    charset = rng.choice(CHARSETS)
    if charset is not None:
        add(0x00080005, "CS", charset.encode() + b" " * (len(charset) % 2))
    for tag in UIDS:
        if rng.random() > 0.02:  # now and then one is missing
            add(tag, "UI" if rng.random() > 0.03 else "LO", _uid(rng))
    for vr in rng.sample(sorted(TAGS), rng.randrange(1, 10)):
        add(TAGS[vr], vr, b"" if rng.random() < 0.1 else random_value(rng, vr))
    if rng.random() < 0.2:
        add(0x00080000, "UL", struct.pack("<I", 100))  # a group length
    if rng.random() < 0.25:  # a sequence: an item with text of its own (and a character set, now and then)
        items = b""
        for _ in range(rng.randrange(0, 3)):
            fields = {0x00081150: element(0x00081150, "UI", b"1.2.840.10008.5.1.4.1.1.2\x00", implicit),
                      0x00081155: element(0x00081155, "UI", _uid(rng), implicit)}
            if rng.random() < 0.2:
                fields[0x00080005] = element(0x00080005, "CS", b"ISO_IR 13 ", implicit)
            for vr in rng.sample(sorted(TAGS), rng.randrange(0, 6)):  # random values of every VR, in an item
                fields[TAGS[vr]] = element(TAGS[vr], vr, b"" if rng.random() < 0.1 else random_value(rng, vr), implicit)
            items += _item(b"".join(fields[tag] for tag in sorted(fields)), rng.random() < 0.5)
        parts[0x00081140] = _sequence(0x00081140, items, implicit, rng.random() < 0.5)
    if rng.random() < 0.15:  # nested: a sequence in an item, of undefined lengths or not
        leaf = _item(element(0x00080100, "SH", b"T-1234", implicit) + element(0x00080104, "LO", b"a code", implicit),
                     rng.random() < 0.5)
        inner = _sequence(0x00081084, leaf, implicit, rng.random() < 0.5)  # Admitting Diagnoses Code Sequence
        parts[0x00081032] = _sequence(0x00081032, _item(inner, rng.random() < 0.5) * rng.randrange(1, 3), implicit,
                                      rng.random() < 0.7)
    if rng.random() < 0.1 and not implicit:  # UN of undefined length: a sequence of Implicit VR items (PS3.5 6.2.2)
        items = _item(struct.pack("<HHI", 0x0008, 0x0100, 4) + b"T-12", True)
        parts[0x00400260] = (struct.pack("<HH2s2xI", 0x0040, 0x0260, b"UN", 0xFFFFFFFF) + items
                             + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0))
    if rng.random() < 0.1:  # a private sequence of undefined length (Implicit VR: pydicom looks ahead for an item)
        parts[0x00290010] = element(0x00290010, "LO", b"ACME SQ ", implicit)
        parts[0x00291010] = _sequence(0x00291010, _item(element(0x00100020, "LO", b"inner", implicit), True),
                                      implicit, True)
    if rng.random() < 0.05:  # an undefined length that is no sequence (as encapsulated pixel data has)
        parts[0x00420011] = (struct.pack("<HHI", 0x0042, 0x0011, 0xFFFFFFFF) if implicit
                             else struct.pack("<HH2s2xI", 0x0042, 0x0011, b"OB", 0xFFFFFFFF)) \
            + _item(b"\x01\x02", False) + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    if rng.random() < 0.3:  # a private block: its creator readable or not, or none
        creator_vr = rng.choice(("LO", "LO", "L(", "UN", "SH", None))
        if creator_vr is not None:
            add(0x00090010, creator_vr, rng.choice((b"ACME 1.0", b"GEMS_IDEN_01", b"\xe9t\xe9 ", b"")))
        for i, vr in enumerate(rng.sample(sorted(TAGS), 3)):
            add(0x00091010 + i, vr, random_value(rng, vr))
        if rng.random() < 0.5:  # UN, which pydicom reads by the creator's private dictionary
            add(0x00091001, "UN", b"GE_GENESIS_FF ")
        if rng.random() < 0.2:
            add(0x00090000, "UL", struct.pack("<I", 64))  # a private group's length
        if rng.random() < 0.2:
            add(0x00090005, "LO", b"odd")  # an element of no block
    if rng.random() < 0.1:  # a second block, GE's, with the values it holds
        add(0x00190010, "LO", b"GEMS_ACQU_01")
        add(0x0019100F, "DS", b"-0.25 ")
        add(0x0019101A, "SS", struct.pack("<h", -3))
        add(0x00191019, "DS", b"1.5\\2")
    if rng.random() < 0.15:  # values past the bulk threshold: text, bytes, a sequence
        size = module.BULK_THRESHOLD + rng.choice((0, 1, 2, 100))
        kind = rng.choice(("UT", "OB", "SQ"))
        if kind == "UT":
            add(0x00204000, "UT", b"x" * size)
        elif kind == "OB":
            add(0x00282000, "OB", b"\x01" * size)  # ICC Profile
        else:
            note = element(0x00081030, "LO", b"y" * 64, implicit)
            items = _item(note, False) * (size // len(_item(note, False)) + 1)
            parts[0x00081140] = _sequence(0x00081140, items, implicit, False)
    if rng.random() < 0.2:  # an ambiguous VR (US or SS), read by Pixel Representation
        add(0x00280103, "US", struct.pack("<H", rng.choice((0, 1))))
        add(0x00280106, "SS" if rng.random() < 0.5 else "US", struct.pack("<H", 0xFFF0))
    if rng.random() < 0.3:
        add(0x7FE00010, "OW", b"\x00\x01" * 64)
    raw = b"".join(parts[tag] for tag in sorted(parts))
    mutation = rng.random()
    if mutation < 0.06 and raw:  # cut short
        raw = raw[:rng.randrange(len(raw))]
    elif mutation < 0.12 and raw:  # a byte changed
        at = rng.randrange(len(raw))
        raw = raw[:at] + bytes([rng.randrange(256)]) + raw[at + 1:]
    elif mutation < 0.15 and len(parts) > 1:  # two elements out of order
        tags = sorted(parts)
        i = rng.randrange(len(tags) - 1)
        tags[i], tags[i + 1] = tags[i + 1], tags[i]
        raw = b"".join(parts[tag] for tag in tags)
    return raw, str(ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian)


def outcome(path: Path, syntax: str, offset: int = 0, *, native: bool) -> tuple[object, ...] | None:
    """("ok", description, its keys in order) or ("refused", error type); None: the core left it."""
    try:
        if native:
            with open(path, "rb") as fh:
                fh.seek(offset)
                description = module._describe_native(fh, syntax)
            if description is None:
                return None
        else:
            description = module.describe(path, syntax, offset, native=False)
    except Exception as exc:
        return ("refused", type(exc).__name__)
    return ("ok", description, list(description.metadata))


def compare(raw: bytes, syntax: str, path: Path) -> bool:
    """Both ways agree where the core answers; whether it did."""
    path.write_bytes(raw)
    native = outcome(path, syntax, native=True)
    if native is None:
        return False
    assert native == outcome(path, syntax, native=False), (raw, syntax)
    return True


@pytest.mark.parametrize("seed", range(6))
def test_random_datasets_give_pydicoms_description(seed: int, tmp_path: Path) -> None:
    rng = random.Random(seed)
    answered = sum(compare(*random_dataset(rng), tmp_path / "ds") for _ in range(500))
    assert answered > 250, f"the core answered {answered} of 500"  # not a test that cannot fail


def _read(path: Path, implicit: bool) -> tuple[object, ...] | None:
    with open(path, "rb") as fh:
        return module._NATIVE.read(fh.read(), implicit, True, module._charset_reads_ascii)


def test_the_core_reads_the_suites_instances_and_hands_the_odd_elements_back(tmp_path: Path) -> None:
    """A CT slice and an SR (its content sequences) are read by the core alone; a sequence with a
    private element in an item, and a value of another VR, go to pydicom beside the rest."""
    path = tmp_path / "ds"
    for syntax in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
        implicit = syntax == ImplicitVRLittleEndian
        for ds in (make_ct(size=16), make_sr("1.2.3.4", "PID-1", "a report\\ text")):
            path.write_bytes(dataset_bytes(ds, implicit=implicit))
            read = _read(path, implicit)
            assert read is not None and read[1] is None and read[2] == b""  # nothing handed back
            assert compare(path.read_bytes(), str(syntax), path)
        uids = b"".join(element(tag, "UI", b"1.2.3.4", implicit) for tag in UIDS)
        private_item = _item(element(0x00090010, "LO", b"ACME", implicit) + element(0x00091001, "LO", b"x", implicit),
                             False)
        raw = (uids[:-(len(uids) // 2)] + _sequence(0x00081140, private_item, implicit, False)
               + element(0x00082111, "ST", b"derived", implicit) + uids[-(len(uids) // 2):]
               + element(0x00280301, "CS", b"NO", implicit) + element(0x00286040, "OB", b"\x01\x02", implicit))
        path.write_bytes(raw)
        read = _read(path, implicit)
        assert read is not None and read[1] is not None and read[2]
        assert compare(raw, str(syntax), path)


def test_every_dataset_pydicom_ships(tmp_path: Path) -> None:
    """Real-world headers (private blocks, sequences, other character sets, odd encodings)."""
    from fuzz.describe import transfer_syntax

    answered = 0
    files = sorted((Path(pydicom.__file__).parent / "data" / "test_files").glob("*.dcm"))
    assert len(files) > 30
    for file in files:
        offset = module.dataset_offset(file)
        syntax = transfer_syntax(file)
        native = outcome(file, syntax, offset, native=True)
        if native is not None:
            answered += 1
            assert native == outcome(file, syntax, offset, native=False), file.name
    assert answered > 10


def test_describe_takes_the_core_and_falls_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "ds"
    path.write_bytes(dataset_bytes(make_ct(size=16)))
    calls: list[object] = []
    real = module._describe_native
    monkeypatch.setattr(module, "_describe_native", lambda fh, syntax: calls.append(real(fh, syntax)) or calls[-1])
    assert module.describe(path, ExplicitVRLittleEndian) == module.describe(path, ExplicitVRLittleEndian, native=False)
    assert calls and calls[-1] is not None
    path.write_bytes(b"\x08\x00\x05\x00CS\x04\x00\xff\xfe\x00\x00" * 2)  # out of order: the core leaves it
    with pytest.raises(Exception) as native_error:
        module.describe(path, ExplicitVRLittleEndian)
    assert calls[-1] is None
    with pytest.raises(type(native_error.value)):
        module.describe(path, ExplicitVRLittleEndian, native=False)


@pytest.mark.parametrize("implicit", [False, True])
def test_sequences_of_undefined_length_are_handed_back_whole(implicit: bool, tmp_path: Path) -> None:
    """Nested sequences and items of undefined length, a private one (Implicit VR: an item follows),
    UN of undefined length with Implicit VR items in an Explicit VR dataset: the core finds where each
    ends, answers, and agrees with pydicom."""
    syntax = str(ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian)
    uids = b"".join(element(tag, "UI", b"1.2.3.4", implicit) for tag in UIDS[:2])
    leaf = _item(element(0x00080100, "SH", b"T-1234", implicit), True)
    nested = _sequence(0x00081032, _item(_sequence(0x00081084, leaf, implicit, True), True) + _item(b"", False),
                       implicit, True)
    cases = [uids + nested + b"".join(element(tag, "UI", b"1.2.3.4", implicit) for tag in UIDS[2:])]
    private = (element(0x00290010, "LO", b"ACME SQ ", implicit)
               + _sequence(0x00291010, _item(element(0x00100020, "LO", b"inner", implicit), True), implicit, True))
    cases.append(b"".join(element(tag, "UI", b"1.2.3.4", implicit) for tag in UIDS) + private)
    if not implicit:
        un = (struct.pack("<HH2s2xI", 0x0040, 0x0260, b"UN", 0xFFFFFFFF)
              + _item(struct.pack("<HHI", 0x0008, 0x0100, 4) + b"T-12", True) + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0))
        cases.append(b"".join(element(tag, "UI", b"1.2.3.4", implicit) for tag in UIDS) + un)
    for raw in cases:
        assert compare(raw, syntax, tmp_path / "ds"), raw


@pytest.mark.parametrize("implicit", [False, True])
def test_what_pydicom_reads_on_the_side_stays_pydicoms(implicit: bool, tmp_path: Path) -> None:
    """Found in review: pydicom reads the Specific Character Set by the VR the file gives, a Private
    Creator past the bulk threshold is deferred (its block then reads as pydicom says), and the Pixel
    Representation is read whenever a sequence of defined length is converted. The core gives the
    reference's answer, or leaves the dataset to pydicom."""
    syntax = str(ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian)
    uids = [element(tag, "UI", b"1.2.3.4", implicit) for tag in UIDS]
    item = _item(element(0x00081150, "UI", b"1.2.3\x00", implicit), False)
    cases = [
        uids[0] + uids[1] + element(0x00090010, "LO", b"A" * 16386, implicit)
        + element(0x00091000, "LO", b"xy", implicit) + uids[2] + uids[3],
        uids[0] + uids[1] + _sequence(0x00081140, item, implicit, False) + uids[2] + uids[3]
        + element(0x00280103, "US", b"\x00", implicit),  # a Pixel Representation of one byte
        uids[0] + uids[1] + _sequence(0x00081140, item, implicit, False) + uids[2] + uids[3]
        + element(0x00280103, "US", b"\x01\x00", implicit),  # a readable one: the core answers
    ]
    if not implicit:
        for vr, value in (("US", b"d\x00"), ("AE", b"ISO_IR 144\x00"), ("PN", b"ISO_IR 100")):
            cases.append(element(0x00080005, vr, value, False) + b"".join(uids))
    path = tmp_path / "ds"
    answered = []
    for raw in cases:
        path.write_bytes(raw)
        native = outcome(path, syntax, native=True)
        assert native is None or native == outcome(path, syntax, native=False), raw
        answered.append(native is not None)
    assert answered[2]  # the readable Pixel Representation: not a test that cannot fail
