"""C-FIND response identifiers written straight from DICOM JSON equal pydicom's (archive/query/dimse/encode.py)."""

from __future__ import annotations

import io
import random

import pytest
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset

from archive.query.dimse.encode import Unsupported, encode_identifier
from archive.query.dimse import identifier as identifier_module
from archive.query.dimse.identifier import plan_find, response, response_bytes
from tests.factories import make_ct

STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
NAMES = ["Müller^Jürgen", "山田^太郎=やまだ^たろう", "Παπαδόπουλος^Νίκος", "O'Brien^Seán", "DOE^JOHN", ""]


def _identifier(charset: str | None = None) -> Dataset:
    ds = Dataset()
    if charset:
        ds.SpecificCharacterSet = charset
    ds.QueryRetrieveLevel = "IMAGE"
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "StudyInstanceUID", "SeriesInstanceUID",
                    "SOPInstanceUID", "StudyDescription", "Modality", "InstanceNumber", "Rows", "Columns",
                    "AccessionNumber", "StudyTime", "ImageType", "SeriesNumber", "BodyPartExamined"):
        setattr(ds, keyword, "")
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = "", "", ""
    ds.ProcedureCodeSequence = [item]
    return ds


def _row(seed: int) -> dict:
    rng = random.Random(seed)
    ds = make_ct(seed=seed, patient_id=f"P{seed}")
    ds.PatientName = rng.choice(NAMES)
    ds.StudyDescription = rng.choice(["CT thorax", "Röntgen Thorax", "胸部CT", "", "a\\b"])
    ds.InstanceNumber = rng.randint(1, 500)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "RPID16", "RADLEX", rng.choice(["CT Chest", "Brust"])
    ds.ProcedureCodeSequence = [code] if seed % 3 else []
    if seed % 4 == 0:
        del ds.StudyDescription  # asked for, not held: zero length
    return ds.to_json_dict()


def _decoded(raw: bytes, implicit: bool) -> dict:
    return read_dataset(io.BytesIO(raw), implicit, True).to_json_dict()


@pytest.mark.parametrize("charset", [None, "ISO_IR 100", "ISO_IR 192", "ISO_IR 126"])
@pytest.mark.parametrize("implicit", [False, True])
def test_direct_encoding_decodes_to_pydicoms_response(charset: str | None, implicit: bool,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    def no_fallback(*args: object) -> None:
        raise AssertionError("the direct encoder left a catalog value to pydicom")

    monkeypatch.setattr(identifier_module, "write_dataset", no_fallback)
    plan = plan_find(_identifier(charset), STUDY_ROOT_FIND)
    for seed in range(60):
        row = _row(seed)
        expected = response(plan, row, "ARCHIVE").to_json_dict()
        assert _decoded(response_bytes(plan, row, "ARCHIVE", implicit), implicit) == expected, seed


def test_direct_encoding_is_taken_for_catalog_values() -> None:
    row = _row(1)
    elements = {k: row[k] for k in ("00100010", "00100020", "00200013", "00080008", "00321064") if k in row}
    encoded = encode_identifier(elements, "utf-8", implicit=False)
    assert encoded[:4] == b"\x08\x00\x08\x00"  # tag order: Image Type first
    assert len(encoded) % 2 == 0


@pytest.mark.parametrize("element", [
    {"vr": "OB", "InlineBinary": "AAAA"},
    {"vr": "DS", "Value": [1.5]},
    {"vr": "AT", "Value": ["00100010"]},
    {"vr": "US", "Value": [70000]},
    {"vr": "PN", "Value": ["not json form"]},
])
def test_values_the_encoder_leaves_to_pydicom(element: dict) -> None:
    with pytest.raises(Unsupported):
        encode_identifier({"00091001": element}, "ascii", implicit=False)


def test_a_value_left_to_pydicom_still_makes_the_response() -> None:
    ds = Dataset()
    ds.QueryRetrieveLevel = "IMAGE"
    ds.SOPInstanceUID = ""
    ds.SliceThickness = ""
    plan = plan_find(ds, STUDY_ROOT_FIND)
    row = {"00080018": {"vr": "UI", "Value": ["1.2.3"]}, "00180050": {"vr": "DS", "Value": [1.25]}}
    assert _decoded(response_bytes(plan, row, "ARCHIVE", False), False) == response(plan, row, "ARCHIVE").to_json_dict()


def test_the_response_charset_is_one_the_values_fit() -> None:
    from archive.query.dimse.identifier import choose_charset

    assert choose_charset(("ISO_IR 6",), ["Müller"]) == "ISO_IR 192"  # pydicom's ISO_IR 6 codec takes Latin-1
    assert choose_charset(("ISO_IR 13",), ["山田"]) == "ISO_IR 192"  # shift_jis takes kanji ISO_IR 13 has not
    assert choose_charset(("ISO_IR 100",), ["Müller"]) == "ISO_IR 100"
    assert choose_charset(("GB2312",), ["DOE"]) is None  # not a defined term: none for plain ASCII
    assert choose_charset(("ISO_IR 192",), ["DOE"]) == "ISO_IR 192"


def test_an_unknown_requested_charset_still_makes_the_response() -> None:
    ds = _identifier()
    ds.SpecificCharacterSet = "GB2312"
    plan = plan_find(ds, STUDY_ROOT_FIND)
    row = _row(3)
    assert _decoded(response_bytes(plan, row, "ARCHIVE", False), False) == response(plan, row, "ARCHIVE").to_json_dict()
