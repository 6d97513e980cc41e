"""Instances of the storage SOP classes an archive meets beyond images."""

from __future__ import annotations

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
from pydicom.uid import (
    BasicTextSRStorage,
    BasicVoiceAudioWaveformStorage,
    EncapsulatedPDFStorage,
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    MPEG4HP41,
    RTPlanStorage,
    VideoPhotographicImageStorage,
)

from tests.factories import make_ct, new_uid


def _common(ds: Dataset, sop_class: str, modality: str, study_uid: str, patient_id: str) -> Dataset:
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = new_uid()
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = new_uid()
    ds.PatientName = "Doe^Jane"
    ds.PatientID = patient_id
    ds.StudyDate = "20240115"
    ds.StudyTime = "101500"
    ds.AccessionNumber = "ACC-9"
    ds.Modality = modality
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def make_sr(study_uid: str, patient_id: str, text: str = "small nodule in the left lung") -> Dataset:
    ds = _common(Dataset(), BasicTextSRStorage, "SR", study_uid, patient_id)
    ds.ValueType = "CONTAINER"
    ds.ContinuityOfContent = "SEPARATE"
    ds.CompletionFlag = "COMPLETE"
    ds.VerificationFlag = "UNVERIFIED"
    name = Dataset()
    name.CodeValue, name.CodingSchemeDesignator, name.CodeMeaning = "11528-7", "LN", "Radiology Report"
    ds.ConceptNameCodeSequence = Sequence([name])
    item = Dataset()
    item.RelationshipType = "CONTAINS"
    item.ValueType = "TEXT"
    finding = Dataset()
    finding.CodeValue, finding.CodingSchemeDesignator, finding.CodeMeaning = "121071", "DCM", "Finding"
    item.ConceptNameCodeSequence = Sequence([finding])
    item.TextValue = text
    ds.ContentSequence = Sequence([item])
    return ds


def make_pdf(study_uid: str, patient_id: str) -> Dataset:
    ds = _common(Dataset(), EncapsulatedPDFStorage, "DOC", study_uid, patient_id)
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.DocumentTitle = "Referral letter"
    ds.BurnedInAnnotation = "YES"
    ds.EncapsulatedDocument = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"
    return ds


def make_audio(study_uid: str, patient_id: str) -> Dataset:
    ds = _common(Dataset(), BasicVoiceAudioWaveformStorage, "AU", study_uid, patient_id)
    wave = Dataset()
    wave.WaveformOriginality = "ORIGINAL"
    wave.NumberOfWaveformChannels = 1
    wave.NumberOfWaveformSamples = 8000
    wave.SamplingFrequency = 8000
    wave.WaveformBitsAllocated = 8
    wave.WaveformSampleInterpretation = "UB"
    wave.WaveformData = bytes(range(256)) * 31 + bytes(64)
    ds.WaveformSequence = Sequence([wave])
    return ds


def make_rt_plan(study_uid: str, patient_id: str) -> Dataset:
    ds = _common(Dataset(), RTPlanStorage, "RTPLAN", study_uid, patient_id)
    ds.RTPlanLabel = "PLAN1"
    ds.RTPlanGeometry = "PATIENT"
    return ds


def _encapsulated_image(ds: Dataset, ts: str, frames: list[bytes], rows: int, cols: int) -> Dataset:
    ds.file_meta.TransferSyntaxUID = ts
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "YBR_FULL_422"
    ds.PlanarConfiguration = 0
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.NumberOfFrames = len(frames)
    ds.PixelData = encapsulate(frames)
    ds["PixelData"].VR = "OB"
    return ds


def make_video(study_uid: str, patient_id: str) -> Dataset:
    ds = _common(Dataset(), VideoPhotographicImageStorage, "XC", study_uid, patient_id)
    ds.CineRate = 25
    ds.FrameTime = 40
    # Stored as received: the archive never decodes video, so opaque bytes will do.
    return _encapsulated_image(ds, MPEG4HP41, [b"\x00\x00\x00\x18ftypmp42" + bytes(4000)], 480, 640)


def make_jpeg_ct(study_uid: str, patient_id: str) -> Dataset:
    ds = make_ct(study_uid=study_uid, patient_id=patient_id)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    fake_jpeg = b"\xff\xd8\xff\xe0" + bytes(2000) + b"\xff\xd9"
    return _encapsulated_image(ds, JPEGBaseline8Bit, [fake_jpeg, fake_jpeg], 64, 64)


def every_kind(study_uid: str, patient_id: str) -> list[tuple[Dataset, str]]:
    """(dataset, transfer syntax) for each kind of object."""
    ct = make_ct(study_uid=study_uid, patient_id=patient_id)
    ct.file_meta = FileMetaDataset()
    ct.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return [
        (ct, ExplicitVRLittleEndian),
        (make_sr(study_uid, patient_id), ExplicitVRLittleEndian),
        (make_pdf(study_uid, patient_id), ExplicitVRLittleEndian),
        (make_audio(study_uid, patient_id), ExplicitVRLittleEndian),
        (make_rt_plan(study_uid, patient_id), ExplicitVRLittleEndian),
        (make_video(study_uid, patient_id), MPEG4HP41),
        (make_jpeg_ct(study_uid, patient_id), JPEGBaseline8Bit),
    ]
