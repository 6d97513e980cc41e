"""The query benchmark's synthetic data: the shape it claims, rows the catalog accepts."""

from __future__ import annotations

import sys
from collections import Counter, defaultdict

import pytest

from archive.core.flatten import flatten
from archive.core.models import IndexMessage
from archive.core.records import CatalogEntry
from archive.core.uids import validate_uid
from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "bench"))

from _queryclients import KINDS, TEXT_KINDS, questions  # noqa: E402
from _querydata import PROFILES, Hospital  # noqa: E402


@pytest.fixture(scope="module")
def hospital() -> Hospital:
    return Hospital(seed=7, run=1234567)


@pytest.fixture(scope="module")
def messages(hospital: Hospital) -> list[IndexMessage]:
    return hospital.take(3000)


def test_every_instance_has_the_attribute_set_of_a_factory_ct(hospital: Hospital, messages: list[IndexMessage]) -> None:
    tags = set(hospital.template)
    for m in messages:
        assert set(m.metadata) == tags
        for uid, name in ((m.study_uid, "StudyInstanceUID"), (m.series_uid, "SeriesInstanceUID"),
                          (m.sop_instance_uid, "SOPInstanceUID")):
            validate_uid(uid, name)
        assert m.metadata["00080018"]["Value"] == [m.sop_instance_uid]
        assert m.metadata["0020000E"]["Value"] == [m.series_uid]


def test_hierarchy_is_consistent_and_hospital_shaped(hospital: Hospital, messages: list[IndexMessage]) -> None:
    entries = [CatalogEntry.from_message(m) for m in messages]
    assert len({e.instance.sop_instance_uid for e in entries}) == len(entries)
    study_of_series = {}
    patient_of_study = {}
    numbers = defaultdict(list)
    for e in entries:
        assert study_of_series.setdefault(e.series.series_uid, e.study.study_uid) == e.study.study_uid
        assert patient_of_study.setdefault(e.study.study_uid, e.patient.patient_id) == e.patient.patient_id
        numbers[e.series.series_uid].append(e.instance.instance_number)
        assert "20150101" <= (e.study.study_date or "") <= "20241231"
        profile = next(p for p in PROFILES if p.modality == e.series.modality)
        assert e.instance.sop_class_uid == profile.sop_class
        assert e.series.body_part in profile.body_parts
    for series_numbers in numbers.values():
        assert series_numbers == list(range(1, len(series_numbers) + 1))
    per_study = Counter(e.study.study_uid for e in entries)
    assert 20 <= len(entries) / len(per_study) <= 120  # tens of instances per study, as documented
    assert len(set(patient_of_study.values())) < len(per_study)  # patients come back
    assert hospital.samples.studies == len(hospital.samples.study_uids) >= len(per_study)


def test_documents_carry_names_for_free_text(messages: list[IndexMessage]) -> None:
    doc = flatten(messages[0])
    name = messages[0].metadata["00100010"]["Value"][0]["Alphabetic"]
    assert name in doc.text and doc.fields["PatientID"]


def test_questions_are_drawn_from_the_loaded_data(hospital: Hospital, messages: list[IndexMessage]) -> None:
    s = hospital.samples
    for kind in KINDS:
        items = questions(kind, s, 30, seed=1)
        assert len(items) == 30 and all(q.kind == kind for q in items)
        if kind in TEXT_KINDS:
            assert all(q.text and not q.keys for q in items)
    assert {q.keys["PatientID"] for q in questions("patient_id", s, 30, 1)} <= set(s.patient_ids)
    assert {q.keys["StudyInstanceUID"] for q in questions("study_uid", s, 30, 1)} <= set(s.study_uids)
    assert {q.text for q in questions("text_rare", s, 30, 1)} <= set(s.accessions)
    assert all(q.keys["PatientName"].endswith("*") for q in questions("patient_name", s, 30, 1))
    assert all(q.keys["PatientName"].endswith("*") for q in questions("ui_list_name", s, 30, 1))
    assert all(not q.keys and not q.text for q in questions("ui_list", s, 30, 1))  # the page as it opens
    assert questions("study_uid", s, 5, 1) == questions("study_uid", s, 5, 1)  # deterministic
