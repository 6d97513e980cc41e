import io
import random
from pathlib import Path

import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.filebase import DicomFileLike
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import UID, AllTransferSyntaxes, CTImageStorage, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from archive.core.errors import InvalidUID, MalformedDataset
from archive.core.flatten import flatten
from archive.core.records import CatalogEntry
from archive.ingest.describe import (BULK_THRESHOLD, IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION, dataset_offset,
                                     describe, file_meta_bytes)
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


@pytest.mark.parametrize("implicit", [False, True], ids=["explicit VR", "implicit VR"])
def test_long_defined_length_sequences_are_metadata_not_bulk(tmp_path: Path, implicit: bool) -> None:
    """An SR Content Sequence longer than the bulk threshold, with defined lengths (PS3.5 7.5.1)."""
    from pydicom.dataset import Dataset

    report = "Impression: " + "no acute findings. " * 2000  # ~38 KB of report text
    assert len(report) > BULK_THRESHOLD
    ds = make_ct(size=4)
    item = Dataset()
    item.ValueType = "TEXT"
    item.TextValue = report
    icon = Dataset()
    icon.add_new(0x7FE00010, "OB", bytes(BULK_THRESHOLD + 10))  # bulk inside the sequence stays bulk
    item.IconImageSequence = [icon]
    ds.ContentSequence = [item]
    ds["ContentSequence"].is_undefined_length = False
    ds.ContentSequence[0].is_undefined_length_sequence_item = False
    path = tmp_path / "sr.bin"
    path.write_bytes(dataset_bytes(ds, implicit=implicit))
    description = describe(path, str(ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian))
    [stored] = description.metadata["0040A730"]["Value"]
    assert stored["0040A160"]["Value"] == [report.rstrip()]  # UT: trailing spaces are padding
    icon_pixels = stored["00880200"]["Value"][0]["7FE00010"]
    assert icon_pixels["BulkDataURI"] == "bulk:0040A730/0/00880200/0/7FE00010" and "Value" not in icon_pixels
    # and the report text is searchable
    document = flatten(make_message_from(description, tmp_path))
    assert report[:40] in document.text


def make_message_from(description: object, tmp_path: Path) -> object:
    from archive.ingest.describe import Description

    assert isinstance(description, Description)
    return description.index_message("instances/x.dcm", 1, "0" * 64, "TEST")


@pytest.mark.parametrize("syntax", sorted(str(ts) for ts in AllTransferSyntaxes))
def test_file_meta_bytes_equal_pydicoms_writer(syntax: str) -> None:
    """Hand-encoded File Meta: byte for byte what pydicom writes (stored objects must not change)."""
    rng = random.Random(syntax)
    for length in (3, 4, 63, 64):  # odd and even lengths: UI pads with NUL
        instance = "1." + "".join(rng.choice("0123456789") for _ in range(length - 2))
        instance = instance.replace(".0", ".1")  # no leading zero in a component
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = UID(CTImageStorage)
        meta.MediaStorageSOPInstanceUID = UID(instance)
        meta.TransferSyntaxUID = UID(syntax)
        meta.ImplementationClassUID = UID(IMPLEMENTATION_CLASS_UID)
        meta.ImplementationVersionName = IMPLEMENTATION_VERSION
        raw = io.BytesIO()
        buffer = DicomFileLike(raw)
        buffer.is_little_endian, buffer.is_implicit_VR = True, False
        write_file_meta_info(buffer, meta, enforce_standard=True)
        assert file_meta_bytes(CTImageStorage, instance, syntax) == b"\x00" * 128 + b"DICM" + raw.getvalue()


def _meta(syntax: str, **extra: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(CTImageStorage)
    meta.MediaStorageSOPInstanceUID = UID("1.2.3.4")
    meta.TransferSyntaxUID = UID(syntax)
    meta.ImplementationClassUID = UID(IMPLEMENTATION_CLASS_UID)
    for keyword, value in extra.items():
        setattr(meta, keyword, value)
    return meta


def _encoded(meta: FileMetaDataset, implicit: bool = False) -> bytes:
    raw = io.BytesIO()
    buffer = DicomFileLike(raw)
    buffer.is_little_endian, buffer.is_implicit_VR = True, implicit
    if implicit:  # as some writers do, against PS3.10 7.1
        write_dataset(buffer, meta)
    else:
        write_file_meta_info(buffer, meta, enforce_standard=True)
    return raw.getvalue()


@pytest.mark.parametrize("implicit", [False, True], ids=["explicit VR (PS3.10)", "implicit VR (seen in the wild)"])
@pytest.mark.parametrize("extra", [{}, {"SourceApplicationEntityTitle": "MODALITY", "PrivateInformationCreatorUID": "1.2.3"}])
def test_dataset_offset_steps_over_the_file_meta(tmp_path: Path, implicit: bool, extra: dict[str, str]) -> None:
    ds = make_ct()
    prefix = b"\x00" * 128 + b"DICM" + _encoded(_meta(ExplicitVRLittleEndian, **extra), implicit)
    path = tmp_path / "x.dcm"
    path.write_bytes(b"junk" + prefix + dataset_bytes(ds))
    assert dataset_offset(path, start=4) == 4 + len(prefix)
    assert describe(path, ExplicitVRLittleEndian, offset=dataset_offset(path, start=4)).sop_instance_uid == ds.SOPInstanceUID


def test_dataset_offset_of_a_bare_dataset_is_where_it_starts(tmp_path: Path) -> None:
    path = tmp_path / "bare.dcm"
    path.write_bytes(dataset_bytes(make_ct()))
    assert dataset_offset(path) == 0


@pytest.mark.parametrize("meta", [b"", b"\x08\x00\x16\x00UI\x00\x00", b"\x02\x00\x01\x00OB\x00\x00\xff\xff\xff\xff"],
                         ids=["nothing after DICM", "a dataset where the File Meta should be", "undefined length"])
def test_dataset_offset_refuses_a_broken_file_meta(tmp_path: Path, meta: bytes) -> None:
    path = tmp_path / "broken.dcm"
    path.write_bytes(b"\x00" * 128 + b"DICM" + meta)
    with pytest.raises(MalformedDataset):
        dataset_offset(path)
