"""The DICOMDIR of a media download (archive/query/dicomweb/dicomdir.py): record types by SOP class,
Type 1 keys made up where an instance lacks them, File ID components within PS3.10."""

from __future__ import annotations

import io
import json
import re

from pydicom import dcmread
from pydicom.dataset import Dataset

from archive.core.records import CatalogInstance
from archive.query.dicomweb.dicomdir import _component, layout
from tests.factories import new_uid

KOS, GSPS, DOSE, CT = ("1.2.840.10008.5.1.4.1.1.88.59", "1.2.840.10008.5.1.4.1.1.11.1",
                       "1.2.840.10008.5.1.4.1.1.481.2", "1.2.840.10008.5.1.4.1.1.2")


def _instance(sop_class: str, study: str, series: str, **attributes: object) -> tuple[CatalogInstance, str]:
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, new_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    inst = CatalogInstance(str(ds.SOPInstanceUID), study, series, "key", 1, "0" * 64, sop_class, "1.2.840.10008.1.2.1")
    return inst, json.dumps(ds.to_json_dict())


def test_record_types_and_made_up_keys() -> None:
    study = new_uid()
    made = [_instance(KOS, study, new_uid(), PatientName="A^B", Modality="KO", InstanceNumber=1),
            _instance(GSPS, study, new_uid(), PatientName="A^B", Modality="PR", InstanceNumber=1),
            _instance(DOSE, study, new_uid(), PatientName="A^B", Modality="RTDOSE", InstanceNumber=1,
                      DoseSummationType="PLAN"),
            _instance(CT, study, new_uid(), PatientName="C^D")]  # no Patient ID, no number: made up
    files = layout([inst for inst, _ in made], {inst.sop_instance_uid: text for inst, text in made})
    records = dcmread(io.BytesIO(files.dicomdir)).DirectoryRecordSequence
    kinds = [r.DirectoryRecordType for r in records]
    assert kinds.count("PATIENT") == 2 and kinds.count("STUDY") == 2  # one per patient, by name without an ID
    assert {"KEY OBJECT DOC", "PRESENTATION", "RT DOSE", "IMAGE"} <= set(kinds)
    by_kind = {r.DirectoryRecordType: r for r in records}
    assert by_kind["KEY OBJECT DOC"].ContentDate == "19000101"
    assert by_kind["PRESENTATION"].ContentLabel == "UNNAMED"
    assert by_kind["RT DOSE"].DoseSummationType == "PLAN"
    assert all(r.PatientID for r in records if r.DirectoryRecordType == "PATIENT")
    assert by_kind["IMAGE"].InstanceNumber == 1
    for name in files.members.values():
        assert re.fullmatch(r"DICOM(/[A-Z0-9_]{1,8}){4}", name), name


def test_file_id_components_stay_within_eight_characters() -> None:
    assert _component("IM", 1) == "IM000001"
    assert _component("IM", 999_999) == "IM999999"
    assert re.fullmatch(r"IM[0-9A-Z]{6}", _component("IM", 1_000_000))
    assert len({_component("IM", n) for n in range(999_990, 1_000_010)}) == 20
