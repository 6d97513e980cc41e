"""The DICOMweb conformance corpus: a few studies made here, sent alike to our archive and to Orthanc.

Three patients with non-ASCII names in two character sets; CT series of several
instances with patient geometry, an MR series, a multi-frame instance and a
Basic Text SR. Every UID is fresh per run, so the corpus never collides with
what a peer already holds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import BasicTextSRStorage, MRImageStorage, MultiFrameGrayscaleWordSecondaryCaptureImageStorage

from tests.factories import make_ct, new_uid, write_part10
from tests.images import image_file


@dataclass(frozen=True)
class Item:
    """One instance of the corpus: where it was written and its UIDs."""

    name: str
    file: Path
    study: str
    series: str
    sop: str
    rows: int = 0
    columns: int = 0
    frames: int = 1

    @property
    def path(self) -> str:
        """The instance's WADO-RS path under the DICOMweb root."""
        return f"/dicom-web/studies/{self.study}/series/{self.series}/instances/{self.sop}"


@dataclass
class Corpus:
    items: dict[str, Item] = field(default_factory=dict)

    @property
    def files(self) -> list[Path]:
        return [i.file for i in self.items.values()]

    def studies(self) -> list[str]:
        return sorted({i.study for i in self.items.values()})

    def of_study(self, study: str) -> list[Item]:
        return [i for i in self.items.values() if i.study == study]

    def of_series(self, series: str) -> list[Item]:
        return [i for i in self.items.values() if i.series == series]


PATIENTS = (  # (id, name, character set, birth date, sex)
    ("DW-1", "Müller^Jürgen", "ISO_IR 192", "19610203", "M"),
    ("DW-2", "Gómez^María", "ISO_IR 100", "19750521", "F"),
    ("DW-3", "Ωμέγα^Δέλτα", "ISO_IR 192", "19880909", "O"),
)


def _geometry(ds: Dataset, index: int, spacing: float = 0.7) -> None:
    ds.ImagePositionPatient = [-120.0, -110.5, -50.0 + 2.5 * index]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [spacing, spacing]
    ds.SliceThickness = 2.5
    ds.FrameOfReferenceUID = "1.2.826.0.1.3680043.10.1437.9.77"
    ds.WindowCenter, ds.WindowWidth = 40, 400


def _patient(ds: Dataset, patient: tuple[str, str, str, str, str], study_date: str, accession: str,
             description: str) -> None:
    ds.PatientID, ds.PatientName, ds.SpecificCharacterSet, ds.PatientBirthDate, ds.PatientSex = patient
    ds.StudyDate, ds.StudyTime, ds.AccessionNumber = study_date, "093000", accession
    ds.StudyDescription, ds.StudyID, ds.ReferringPhysicianName = description, accession[-3:], "Ärztin^Eva"


def _sr(patient: tuple[str, str, str, str, str], study: str, series: str, text: str) -> Dataset:
    """A Basic Text SR (PS3.3 A.35.1) with one TEXT content item."""
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = BasicTextSRStorage, new_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber, ds.SeriesDescription = "SR", 9, 1, "REPORT"
    ds.Manufacturer = "dicom-archive tests"
    ds.ContentDate, ds.ContentTime = "20240220", "120000"
    ds.ValueType, ds.ContinuityOfContent = "CONTAINER", "SEPARATE"
    ds.CompletionFlag, ds.VerificationFlag = "COMPLETE", "UNVERIFIED"
    title = Dataset()
    title.CodeValue, title.CodingSchemeDesignator, title.CodeMeaning = "18748-4", "LN", "Diagnostic imaging report"
    ds.ConceptNameCodeSequence = Sequence([title])
    finding = Dataset()
    finding.RelationshipType, finding.ValueType, finding.TextValue = "CONTAINS", "TEXT", text
    name = Dataset()
    name.CodeValue, name.CodingSchemeDesignator, name.CodeMeaning = "121071", "DCM", "Finding"
    finding.ConceptNameCodeSequence = Sequence([name])
    ds.ContentSequence = Sequence([finding])
    ds.ReferencedPerformedProcedureStepSequence = Sequence([])
    ds.PerformedProcedureCodeSequence = Sequence([])
    return ds


def make_corpus(directory: Path) -> Corpus:
    directory.mkdir(parents=True, exist_ok=True)
    corpus = Corpus()

    def add(name: str, ds: Dataset) -> None:
        path = write_part10(ds, directory / f"{name}.dcm")
        corpus.items[name] = Item(name, path, str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID),
                                  str(ds.SOPInstanceUID), int(ds.get("Rows", 0)), int(ds.get("Columns", 0)),
                                  int(ds.get("NumberOfFrames", 1) or 1))

    # Study 1: CT series of 4 slices and an MR series of 2 (UTF-8 patient name)
    study1, ct1, mr1 = new_uid(), new_uid(), new_uid()
    for i in range(4):
        ds = make_ct(study_uid=study1, series_uid=ct1, instance_number=i + 1, seed=i, size=64)
        _patient(ds, PATIENTS[0], "20230105", "DWACC001", "CT THORAX")
        _geometry(ds, i)
        add(f"s1ct{i}", ds)
    for i in range(2):
        ds = make_ct(study_uid=study1, series_uid=mr1, instance_number=i + 1, seed=10 + i, size=48, modality="MR")
        ds.SOPClassUID, ds.SeriesNumber, ds.SeriesDescription = MRImageStorage, 2, "T1 SAG"
        del ds.RescaleIntercept, ds.RescaleSlope
        ds.ScanningSequence, ds.SequenceVariant, ds.MRAcquisitionType = "SE", "NONE", "2D"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "OTHER"]
        _patient(ds, PATIENTS[0], "20230105", "DWACC001", "CT THORAX")
        _geometry(ds, i, spacing=1.0)
        add(f"s1mr{i}", ds)

    # Study 2: a multi-frame instance and a report (Latin-1 patient name)
    study2, mf2, sr2 = new_uid(), new_uid(), new_uid()
    frames = np.random.default_rng(5).integers(0, 4096, size=(4, 40, 30), dtype=np.uint16)
    mf = image_file(directory / "tmp-mf.dcm", frames, frames=4, bits_stored=12,
                    SOPClassUID=MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
                    StudyInstanceUID=study2, SeriesInstanceUID=mf2, SOPInstanceUID=new_uid(),
                    Modality="OT", SeriesNumber=1, InstanceNumber=1, SeriesDescription="CINE")
    ds = dcmread(mf)
    mf.unlink()
    _patient(ds, PATIENTS[1], "20240220", "DWACC002", "FLUORO")
    add("s2mf", ds)
    ds = _sr(PATIENTS[1], study2, sr2, "Kein Anhalt für Malignität; nódulo 4 mm.")
    _patient(ds, PATIENTS[1], "20240220", "DWACC002", "FLUORO")
    add("s2sr", ds)

    # Study 3: a CT series of 2 (Greek patient name), an older date
    study3, ct3 = new_uid(), new_uid()
    for i in range(2):
        ds = make_ct(study_uid=study3, series_uid=ct3, instance_number=i + 1, seed=20 + i, size=32)
        _patient(ds, PATIENTS[2], "20221231", "DWACC003", "CT HEAD")
        ds.BodyPartExamined = "HEAD"
        _geometry(ds, i)
        add(f"s3ct{i}", ds)
    return corpus
