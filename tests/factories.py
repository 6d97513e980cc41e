"""Test data made here: synthetic CT instances and the messages built from them."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import write_dataset
from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian, generate_uid

from archive.core.models import IndexMessage
from archive.core.records import CatalogEntry
from archive.core.uids import object_key
from archive.ingest.describe import describe

UID_ROOT = "1.2.826.0.1.3680043.10.1437.9."


def new_uid() -> str:
    return generate_uid(prefix=UID_ROOT)


def make_ct(
    *,
    study_uid: str | None = None,
    series_uid: str | None = None,
    sop_uid: str | None = None,
    patient_id: str = "PAT-1",
    patient_name: str = "Doe^Jane",
    study_date: str = "20240115",
    accession: str = "ACC-1",
    modality: str = "CT",
    instance_number: int = 1,
    size: int = 64,
    seed: int = 0,
    charset: str | None = None,
) -> Dataset:
    ds = Dataset()
    if charset:
        ds.SpecificCharacterSet = charset
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid or new_uid()
    ds.StudyInstanceUID = study_uid or new_uid()
    ds.SeriesInstanceUID = series_uid or new_uid()
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "F"
    ds.StudyDate = study_date
    ds.StudyTime = "101500"
    ds.AccessionNumber = accession
    ds.StudyID = "1"
    ds.StudyDescription = "CT CHEST"
    ds.ReferringPhysicianName = "Smith^John"
    ds.Modality = modality
    ds.SeriesNumber = 1
    ds.SeriesDescription = "AXIAL"
    ds.BodyPartExamined = "CHEST"
    ds.InstitutionName = "General Hospital"
    ds.InstanceNumber = instance_number
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = size
    ds.Columns = size
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = -1024
    ds.RescaleSlope = 1
    rng = np.random.default_rng(seed)
    ds.PixelData = rng.integers(0, 4096, size=(size, size), dtype=np.uint16).tobytes()
    return ds


def dataset_bytes(ds: Dataset, implicit: bool = False) -> bytes:
    """The dataset encoded without File Meta, as a C-STORE carries it."""
    buffer = io.BytesIO()
    from pydicom.filebase import DicomFileLike

    fp = DicomFileLike(buffer)
    fp.is_little_endian = True
    fp.is_implicit_VR = implicit
    write_dataset(fp, ds)
    return buffer.getvalue()


def write_part10(ds: Dataset, path: Path, transfer_syntax: str = ExplicitVRLittleEndian) -> Path:
    ds = ds.copy()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = UID(transfer_syntax)
    ds.save_as(path, enforce_file_format=True)
    return path


def make_message(ds: Dataset, tmp_path: Path, *, sha256: str = "0" * 64, size: int = 1) -> IndexMessage:
    spool = tmp_path / f"{ds.SOPInstanceUID}.raw"
    spool.write_bytes(dataset_bytes(ds))
    d = describe(spool, ExplicitVRLittleEndian)
    return d.index_message(object_key(d.sop_instance_uid), size, sha256, source_aet="TESTSCU")


def clones(tmp_path: Path, count: int, **kw: str) -> list[CatalogEntry]:
    """``count`` instances of one series, cheaply (one dataset, new SOP UIDs)."""
    message = make_message(make_ct(size=4, **kw), tmp_path)
    out = []
    for n in range(count):
        uid = new_uid()
        metadata = {**message.metadata, "00080018": {"vr": "UI", "Value": [uid]}}
        metadata["00200013"] = {"vr": "IS", "Value": [n]}
        copy = dataclasses.replace(message, sop_instance_uid=uid, key=object_key(uid), metadata=metadata)
        out.append(CatalogEntry.from_message(copy))
    return out
