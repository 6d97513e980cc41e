from pathlib import Path

import pytest
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from archive.core.errors import InvalidUID, MalformedDataset
from archive.core.flatten import flatten
from archive.core.records import CatalogEntry
from archive.ingest.describe import BULK_THRESHOLD, describe
from tests.factories import dataset_bytes, make_ct, make_message


def test_describe_reads_header_and_skips_pixels(tmp_path: Path) -> None:
    ds = make_ct(size=256)
    path = tmp_path / "ds.raw"
    path.write_bytes(dataset_bytes(ds))
    d = describe(path, ExplicitVRLittleEndian)
    assert d.sop_instance_uid == ds.SOPInstanceUID
    assert d.study_uid == ds.StudyInstanceUID
    assert "7FE00010" not in d.metadata
    assert d.metadata["00100010"]["Value"][0]["Alphabetic"] == "Doe^Jane"


def test_describe_implicit_vr(tmp_path: Path) -> None:
    ds = make_ct()
    path = tmp_path / "ds.raw"
    path.write_bytes(dataset_bytes(ds, implicit=True))
    d = describe(path, ImplicitVRLittleEndian)
    assert d.metadata["00080060"]["Value"] == ["CT"]


def test_large_non_pixel_values_stay_out(tmp_path: Path) -> None:
    ds = make_ct()
    ds.add_new(0x00091010, "OB", b"x" * (BULK_THRESHOLD * 4))
    ds.add_new(0x00090010, "LO", "ACME")
    path = tmp_path / "ds.raw"
    path.write_bytes(dataset_bytes(ds))
    d = describe(path, ExplicitVRLittleEndian)
    assert "BulkDataURI" in d.metadata["00091010"]
    assert "Value" not in d.metadata["00091010"]


def test_hostile_uid_rejected(tmp_path: Path) -> None:
    ds = make_ct(sop_uid="1.2.3")
    ds.SOPInstanceUID = "../../../etc/passwd"
    path = tmp_path / "ds.raw"
    path.write_bytes(dataset_bytes(ds))
    with pytest.raises(InvalidUID):
        describe(path, ExplicitVRLittleEndian)


@pytest.mark.parametrize("payload", [b"", b"\x00" * 7, b"garbage" * 100, b"\x08\x00\x16\x00UI\xff\xff"])
def test_garbage_is_malformed(tmp_path: Path, payload: bytes) -> None:
    path = tmp_path / "ds.raw"
    path.write_bytes(payload)
    with pytest.raises((MalformedDataset, InvalidUID)):
        describe(path, ExplicitVRLittleEndian)


def test_catalog_entry_and_search_document(tmp_path: Path) -> None:
    ds = make_ct(patient_name="Müller^Jürgen")
    ds.SpecificCharacterSet = "ISO_IR 100"
    block = ds.private_block(0x0009, "ACME", create=True)
    block.add_new(0x01, "LO", "secretvalue")
    message = make_message(ds, tmp_path)
    entry = CatalogEntry.from_message(message)
    assert entry.patient.patient_name_folded == "MULLER^JURGEN"
    assert entry.series.modality == "CT"
    assert entry.instance.object_key == message.key
    doc = flatten(message)
    assert "secretvalue" in doc.text
    assert doc.fields["PatientID"] == ["PAT-1"]
    assert any(v == ["secretvalue"] for k, v in doc.fields.items() if k.startswith("0009"))
