"""C-FIND identifiers -> query model -> responses, and the reference matching semantics."""

from __future__ import annotations

import pytest
from pydicom.dataset import Dataset

from archive.core.levels import Level
from archive.core.matching import matches
from archive.core.query import InvalidQuery, Range, SequenceMatch, SingleValue, UIDList, Universal, Wildcard
from archive.query.dimse.identifier import (
    PATIENT_ROOT_FIND,
    STUDY_ROOT_FIND,
    IdentifierError,
    choose_charset,
    plan_find,
    response,
)


def _identifier(level: str, **keys: object) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


def test_levels_belong_to_the_information_model() -> None:
    with pytest.raises(IdentifierError, match="not part of this information model"):
        plan_find(_identifier("PATIENT"), STUDY_ROOT_FIND)
    with pytest.raises(IdentifierError):
        plan_find(_identifier("WORKLIST"), PATIENT_ROOT_FIND)
    with pytest.raises(IdentifierError):
        plan_find(Dataset(), STUDY_ROOT_FIND)  # no Query/Retrieve Level at all
    assert plan_find(_identifier("PATIENT"), PATIENT_ROOT_FIND).query.level is Level.PATIENT


def test_keys_split_into_indexed_residual_and_unsupported() -> None:
    code = Dataset()
    code.CodeValue = "CTCHEST"
    ident = _identifier(
        "STUDY", PatientName="DOE*", StudyInstanceUID=["1.2.3", "1.2.4"], StudyDate="20240101-",
        StudyDescription="", NameOfPhysiciansReadingStudy="House*", ProcedureCodeSequence=[code],
        OperatorsName="Nobody",
    )
    plan = plan_find(ident, STUDY_ROOT_FIND)
    assert set(plan.query.matchers) == {
        Wildcard("PatientName", "DOE*"), UIDList("StudyInstanceUID", ("1.2.3", "1.2.4")),
        Range("StudyDate", "20240101", None),
    }
    assert set(plan.residual) == {
        Wildcard("NameOfPhysiciansReadingStudy", "House*"),
        SequenceMatch("ProcedureCodeSequence", (SingleValue("CodeValue", "CTCHEST"),)),
    }
    assert plan.unsupported == ("OperatorsName",)  # not kept at the study level: neither matched nor valued
    # every key asked for is returned, the universal one included
    assert {k.tag for k in plan.keys} >= {"00081030", "00100010", "00081070"}


def test_values_are_decoded_with_the_identifier_character_set() -> None:
    ident = _identifier("STUDY", SpecificCharacterSet="ISO_IR 100")
    ident.add_new(0x00100010, "PN", "G\xf3mez*".encode("latin-1"))  # raw Latin-1 bytes, as received
    plan = plan_find(ident, STUDY_ROOT_FIND)
    assert plan.query.matchers == (Wildcard("PatientName", "Gómez*"),)
    assert plan.charsets == ("ISO_IR 100",)


def test_malformed_values_are_invalid_queries() -> None:
    with pytest.raises(InvalidQuery, match="StudyDate"):
        plan_find(_identifier("STUDY", StudyDate="yesterday"), STUDY_ROOT_FIND)


STORED = {
    "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Müller^Jürgen"}]},
    "00080020": {"vr": "DA", "Value": ["20240110"]},
    "00080030": {"vr": "TM", "Value": ["083000.25"]},
    "00080008": {"vr": "CS", "Value": ["ORIGINAL", "PRIMARY", "AXIAL"]},
    "00081032": {"vr": "SQ", "Value": [
        {"00080100": {"vr": "SH", "Value": ["A"]}, "00080102": {"vr": "SH", "Value": ["X"]}},
        {"00080100": {"vr": "SH", "Value": ["CTCHEST"]}, "00080102": {"vr": "SH", "Value": ["99LOCAL"]}},
    ]},
    "00081030": {"vr": "LO"},
}


@pytest.mark.parametrize(
    "matcher, tag, expected",
    [
        (SingleValue("PatientName", "MULLER^JURGEN"), "00100010", True),  # case and accents folded
        (Wildcard("PatientName", "M?LLER*"), "00100010", True),
        (Wildcard("PatientName", "M?LER*"), "00100010", False),  # ? is exactly one character
        (Range("StudyDate", "20240101", None), "00080020", True),
        (Range("StudyDate", None, "20231231"), "00080020", False),
        (Range("StudyTime", "08", "0830"), "00080030", True),  # a lower-precision end covers its whole span
        (Range("StudyTime", "0831", None), "00080030", False),
        (SingleValue("ImageType", "AXIAL"), "00080008", True),  # any value of a multi-valued attribute
        (UIDList("ImageType", ("LOCALIZER", "PRIMARY")), "00080008", True),
        (SequenceMatch("ProcedureCodeSequence", (SingleValue("CodeValue", "CTCHEST"),
                                                 SingleValue("CodingSchemeDesignator", "99LOCAL"))), "00081032", True),
        # both keys must match within ONE item
        (SequenceMatch("ProcedureCodeSequence", (SingleValue("CodeValue", "CTCHEST"),
                                                 SingleValue("CodingSchemeDesignator", "X"))), "00081032", False),
        (SingleValue("StudyDescription", "CT"), "00081030", False),  # no value: only universal matches
        (Universal("StudyDescription"), "00081030", True),
        (SingleValue("AccessionNumber", "A"), "00080050", False),  # absent
    ],
)
def test_reference_matching(matcher: object, tag: str, expected: bool) -> None:
    assert matches(matcher, STORED, tag) is expected  # type: ignore[arg-type]


def test_response_carries_exactly_the_requested_keys() -> None:
    item = Dataset()
    item.CodeValue = ""
    ident = _identifier("STUDY", PatientName="", StudyDate="", AccessionNumber="", ProcedureCodeSequence=[item])
    plan = plan_find(ident, STUDY_ROOT_FIND)
    ds = response(plan, STORED, "ARCHIVE")
    assert str(ds.PatientName) == "Müller^Jürgen"
    assert ds.StudyDate == "20240110"
    assert "AccessionNumber" in ds and not ds.AccessionNumber  # asked for, none stored: zero length
    assert [i.CodeValue for i in ds.ProcedureCodeSequence] == ["A", "CTCHEST"]
    assert all("CodingSchemeDesignator" not in i for i in ds.ProcedureCodeSequence)  # only the item keys asked
    assert "StudyTime" not in ds and "ImageType" not in ds
    assert (ds.QueryRetrieveLevel, ds.RetrieveAETitle, ds.SpecificCharacterSet) == ("STUDY", "ARCHIVE", "ISO_IR 192")


@pytest.mark.parametrize(
    "requested, values, expected",
    [
        ((), ["Smith^Anna"], None),
        (("ISO_IR 100",), ["Smith^Anna"], "ISO_IR 100"),
        (("ISO_IR 100",), ["Gómez^José"], "ISO_IR 100"),
        (("ISO_IR 100",), ["山田^太郎"], "ISO_IR 192"),  # not encodable in Latin-1
        ((), ["Gómez^José"], "ISO_IR 192"),
    ],
)
def test_response_character_set(requested: tuple[str, ...], values: list[str], expected: str | None) -> None:
    assert choose_charset(requested, values) == expected
