"""Query/Retrieve information model attributes per level (PS3.4 C.6.1, C.6.2).

Each level keeps the attributes a C-FIND or QIDO-RS can match or return at it.
Keywords are DICOM keywords; tags are the 8-hex-digit DICOM JSON keys.
"""

from __future__ import annotations

from enum import Enum

from pydicom.datadict import tag_for_keyword


class Level(str, Enum):
    PATIENT = "PATIENT"
    STUDY = "STUDY"
    SERIES = "SERIES"
    IMAGE = "IMAGE"


# keyword -> tag (DICOM JSON key)
PATIENT_ATTRIBUTES: dict[str, str] = {
    "PatientName": "00100010",
    "PatientID": "00100020",
    "IssuerOfPatientID": "00100021",
    "PatientBirthDate": "00100030",
    "PatientBirthTime": "00100032",
    "PatientSex": "00100040",
    "OtherPatientIDsSequence": "00101002",
    "OtherPatientNames": "00101001",
    "EthnicGroup": "00102160",
    "PatientComments": "00104000",
}

STUDY_ATTRIBUTES: dict[str, str] = {
    "StudyInstanceUID": "0020000D",
    "StudyDate": "00080020",
    "StudyTime": "00080030",
    "AccessionNumber": "00080050",
    "IssuerOfAccessionNumberSequence": "00080051",
    "StudyID": "00200010",
    "StudyDescription": "00081030",
    "ReferringPhysicianName": "00080090",
    "NameOfPhysiciansReadingStudy": "00081060",
    "ProcedureCodeSequence": "00081032",
    "PatientAge": "00101010",
    "PatientSize": "00101020",
    "PatientWeight": "00101030",
    "AdmittingDiagnosesDescription": "00081080",
    "InstitutionName": "00080080",
}

SERIES_ATTRIBUTES: dict[str, str] = {
    "SeriesInstanceUID": "0020000E",
    "Modality": "00080060",
    "SeriesNumber": "00200011",
    "SeriesDescription": "0008103E",
    "SeriesDate": "00080021",
    "SeriesTime": "00080031",
    "BodyPartExamined": "00180015",
    "Laterality": "00200060",
    "PerformedProcedureStepStartDate": "00400244",
    "PerformedProcedureStepStartTime": "00400245",
    "RequestAttributesSequence": "00400275",
    "InstitutionName": "00080080",
    "StationName": "00081010",
    "Manufacturer": "00080070",
    "ManufacturerModelName": "00081090",
    "ProtocolName": "00181030",
}

INSTANCE_ATTRIBUTES: dict[str, str] = {
    "SOPInstanceUID": "00080018",
    "SOPClassUID": "00080016",
    "InstanceNumber": "00200013",
    "ContentDate": "00080023",
    "ContentTime": "00080033",
    "AcquisitionDateTime": "0008002A",
    "NumberOfFrames": "00280008",
    "Rows": "00280010",
    "Columns": "00280011",
    "BitsAllocated": "00280100",
    "PhotometricInterpretation": "00280004",
    "ImageType": "00080008",
    "ConceptNameCodeSequence": "0040A043",
    "CompletionFlag": "0040A491",
    "VerificationFlag": "0040A493",
    "DocumentTitle": "00420010",
    "SpecificCharacterSet": "00080005",
}

LEVEL_ATTRIBUTES: dict[Level, dict[str, str]] = {
    Level.PATIENT: PATIENT_ATTRIBUTES,
    Level.STUDY: STUDY_ATTRIBUTES,
    Level.SERIES: SERIES_ATTRIBUTES,
    Level.IMAGE: INSTANCE_ATTRIBUTES,
}

# Attributes computed by the archive (PS3.4 C.3.4 / PS3.18 10.6.3.3)
COMPUTED_ATTRIBUTES: dict[str, str] = {
    "NumberOfPatientRelatedStudies": "00201200",
    "NumberOfPatientRelatedSeries": "00201202",
    "NumberOfPatientRelatedInstances": "00201204",
    "NumberOfStudyRelatedSeries": "00201206",
    "NumberOfStudyRelatedInstances": "00201208",
    "NumberOfSeriesRelatedInstances": "00201209",
    "ModalitiesInStudy": "00080061",
    "SOPClassesInStudy": "00080062",
    "RetrieveURL": "00081190",
    "RetrieveAETitle": "00080054",
    "InstanceAvailability": "00080056",
}

ALL_KEYWORDS: dict[str, str] = {
    **PATIENT_ATTRIBUTES,
    **STUDY_ATTRIBUTES,
    **SERIES_ATTRIBUTES,
    **INSTANCE_ATTRIBUTES,
    **COMPUTED_ATTRIBUTES,
}


def tag_of(keyword: str) -> str:
    """The DICOM JSON key (8 hex digits) of a keyword; a tag given as 8 hex digits passes."""
    if keyword in ALL_KEYWORDS:
        return ALL_KEYWORDS[keyword]
    if len(keyword) == 8 and all(c in "0123456789abcdefABCDEF" for c in keyword):
        return keyword.upper()
    tag = tag_for_keyword(keyword)
    if tag is None:
        raise KeyError(keyword)
    return f"{tag:08X}"


def stored_at(level: Level) -> dict[str, str]:
    """keyword -> tag of every attribute the catalog keeps for results at ``level``.

    A result carries its own level's attributes and those of the levels above
    (PS3.4 C.6.1, C.6.2), plus the computed ones.
    """
    order = [Level.PATIENT, Level.STUDY, Level.SERIES, Level.IMAGE]
    out: dict[str, str] = {}
    for above in order[: order.index(level) + 1]:
        out.update(LEVEL_ATTRIBUTES[above])
    return out
