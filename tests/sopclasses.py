"""Instances of the storage SOP classes an archive meets beyond images."""

from __future__ import annotations

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
from pydicom.uid import (
    BasicTextSRStorage,
    BasicVoiceAudioWaveformStorage,
    ComprehensiveSRStorage,
    EncapsulatedPDFStorage,
    ExplicitVRLittleEndian,
    GeneralAudioWaveformStorage,
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


# --- Objects the web UI shows (tests/e2e/test_web_ui_objects.py) ---------------------------------


def tiny_pdf(*pages: str, padding: int = 0) -> bytes:
    """A valid PDF written by hand: one line of Helvetica text per page, a correct xref table;
    ``padding`` bytes of comment make it larger (over the archive's bulk data threshold)."""
    count = len(pages)
    objects: list[bytes] = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [" + b" ".join(b"%d 0 R" % (4 + 2 * i) for i in range(count))
        + b"] /Count %d >>" % count,
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    for i, text in enumerate(pages):
        escaped = text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)").encode("latin-1")
        stream = b"BT /F1 24 Tf 72 700 Td (" + escaped + b") Tj ET"
        objects.append(b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 3 0 R >> >>"
                       b" /Contents %d 0 R >>" % (5 + 2 * i))
        objects.append(b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream")
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    out += b"".join(b"% padding " + b"x" * 60 + b"\n" for _ in range(padding // 72))
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


def make_pdf_document(study_uid: str, patient_id: str, pdf: bytes, title: str = "Referral letter") -> Dataset:
    ds = make_pdf(study_uid, patient_id)
    ds.DocumentTitle = title
    ds.EncapsulatedDocument = pdf
    ds.EncapsulatedDocumentLength = len(pdf)
    return ds


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = value, scheme, meaning
    return code


def _content(relationship: str, value_type: str, concept: Dataset, **values: object) -> Dataset:
    item = Dataset()
    item.RelationshipType = relationship
    item.ValueType = value_type
    item.ConceptNameCodeSequence = Sequence([concept])
    for keyword, value in values.items():
        setattr(item, keyword, value)
    return item


def make_measurement_sr(study_uid: str, patient_id: str, finding: str) -> Dataset:
    """A Comprehensive SR shaped like a TID 1500 measurement report: a heading (container), a text
    finding, a code, a NUM measurement with units, a date and a person name."""
    ds = _common(Dataset(), ComprehensiveSRStorage, "SR", study_uid, patient_id)
    ds.SeriesDescription = "Measurements"
    ds.ValueType = "CONTAINER"
    ds.ContinuityOfContent = "SEPARATE"
    ds.CompletionFlag = "COMPLETE"
    ds.VerificationFlag = "VERIFIED"
    observer = Dataset()
    observer.VerifyingObserverName = "Reader^Rita"
    observer.VerificationDateTime = "20240116093000"
    observer.VerifyingOrganization = "General Hospital"
    observer.VerifyingObserverIdentificationCodeSequence = Sequence([])
    ds.VerifyingObserverSequence = Sequence([observer])
    ds.ConceptNameCodeSequence = Sequence([_code("126000", "DCM", "Imaging Measurement Report")])
    diameter = Dataset()
    diameter.NumericValue = "12.5"
    diameter.MeasurementUnitsCodeSequence = Sequence([_code("mm", "UCUM", "millimeter")])
    group = _content("CONTAINS", "CONTAINER", _code("125007", "DCM", "Measurement Group"),
                     ContinuityOfContent="SEPARATE")
    group.ContentSequence = Sequence([
        _content("CONTAINS", "NUM", _code("410668003", "SCT", "Length"), MeasuredValueSequence=Sequence([diameter])),
        _content("HAS CONCEPT MOD", "CODE", _code("363698007", "SCT", "Finding Site"),
                 ConceptCodeSequence=Sequence([_code("39607008", "SCT", "Lung")])),
        _content("CONTAINS", "TEXT", _code("121071", "DCM", "Finding"), TextValue=finding),
    ])
    measurements = _content("CONTAINS", "CONTAINER", _code("126010", "DCM", "Imaging Measurements"),
                            ContinuityOfContent="SEPARATE")
    measurements.ContentSequence = Sequence([group])
    ds.ContentSequence = Sequence([
        _content("HAS OBS CONTEXT", "PNAME", _code("121008", "DCM", "Person Observer Name"),
                 PersonName="Reader^Rita"),
        _content("HAS OBS CONTEXT", "DATE", _code("111060", "DCM", "Study Date"), Date="20240115"),
        measurements,
    ])
    return ds


def mu_law(sample: int) -> int:
    """ITU-T G.711 µ-law encoding of a 16-bit sample (the inverse of g711.c ulaw2linear)."""
    sign = 0x80 if sample < 0 else 0
    magnitude = min(abs(sample), 32635) + 0x84
    exponent = max(0, magnitude.bit_length() - 8)
    mantissa = (magnitude >> (exponent + 3)) & 0x0F
    return ~(sign | (exponent << 4) | mantissa) & 0xFF


def a_law(sample: int) -> int:
    """ITU-T G.711 A-law encoding of a 16-bit sample (g711.c linear2alaw)."""
    pcm = sample >> 3
    mask = 0xD5 if pcm >= 0 else 0x55
    if pcm < 0:
        pcm = -pcm - 1
    segment = next((i for i, end in enumerate((0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF)) if pcm <= end), 8)
    if segment >= 8:
        return 0x7F ^ mask
    value = (segment << 4) | ((pcm >> 1) & 0x0F if segment < 2 else (pcm >> segment) & 0x0F)
    return value ^ mask


def make_waveform_audio(study_uid: str, patient_id: str, *, interpretation: str, frequency: int, channels: int,
                        samples: int) -> Dataset:
    """An audio waveform of a 440 Hz tone: MB or AB (µ-law or A-law, Basic Voice Audio) or SS (16-bit
    PCM, General Audio Waveform)."""
    import math

    sop_class = BasicVoiceAudioWaveformStorage if interpretation in ("MB", "AB") else GeneralAudioWaveformStorage
    ds = _common(Dataset(), sop_class, "AU", study_uid, patient_id)
    ds.SeriesDescription = f"Dictation {interpretation}"
    tone = [int(12000 * math.sin(2 * math.pi * 440 * n / frequency)) for n in range(samples)]
    interleaved = [value for value in tone for _ in range(channels)]
    wave = Dataset()
    wave.WaveformOriginality = "ORIGINAL"
    wave.NumberOfWaveformChannels = channels
    wave.NumberOfWaveformSamples = samples
    wave.SamplingFrequency = frequency
    wave.WaveformSampleInterpretation = interpretation
    if interpretation in ("MB", "AB"):
        wave.WaveformBitsAllocated = 8
        wave.WaveformData = bytes((mu_law if interpretation == "MB" else a_law)(v) for v in interleaved)
    else:
        wave.WaveformBitsAllocated = 16
        wave.add_new(0x54001010, "OW", b"".join(v.to_bytes(2, "little", signed=True) for v in interleaved))
    ds.WaveformSequence = Sequence([wave])
    return ds
