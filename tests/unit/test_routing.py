"""Forwarding rules: parsing with clear errors, matching, jobs, reloading."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from archive.core.errors import PoisonMessage
from archive.core.routing import ForwardJob, Rules, RulesError, apply_changes, parse
from archive.forward.rules_file import RulesFile
from tests.factories import make_ct, make_message


def _message(tmp_path: Path, source_aet: str = "CT1", **kw: str):  # type: ignore[no-untyped-def]
    from dataclasses import replace

    return replace(make_message(make_ct(size=4, **kw), tmp_path), source_aet=source_aet)


RULES = """
rules:
  - name: ct-to-pacs
    match:
      Modality: CT
      StudyDate: 20240101-
      PatientName: "Doe*"
    destinations: [PACS, AI]
    set: {InstitutionName: Elsewhere}
    prefix: {AccessionNumber: "X-"}
  - name: from-mr1
    calling_aet: MR1
    trigger: instance
    destinations: PACS
"""


def test_a_rules_file_parses_and_matches(tmp_path: Path) -> None:
    rules = parse(RULES, "rules.yaml", peers=["PACS", "AI"])
    assert [r.name for r in rules.rules] == ["ct-to-pacs", "from-mr1"]
    assert rules.destinations == ("PACS", "AI")
    jobs = rules.jobs(_message(tmp_path), at=5.0)
    assert [(j.destination, j.rule) for j in jobs] == [("PACS", "ct-to-pacs"), ("AI", "ct-to-pacs")]
    assert jobs[0].set == (("InstitutionName", "Elsewhere"),) and jobs[0].queued_at == 5.0
    assert rules.jobs(_message(tmp_path, study_date="20231231"), 0) == []  # outside the range
    assert rules.jobs(_message(tmp_path, modality="MR"), 0) == []
    assert rules.jobs(_message(tmp_path, patient_name="Roe^Jim"), 0) == []
    # the second rule: any instance from MR1; PACS gets one job though two rules name it
    jobs = rules.jobs(_message(tmp_path, source_aet="MR1"), 0)
    assert [(j.destination, j.rule) for j in jobs] == [("PACS", "ct-to-pacs"), ("AI", "ct-to-pacs")]
    assert [j.rule for j in rules.jobs(_message(tmp_path, source_aet="MR1", modality="MR"), 0)] == ["from-mr1"]


def test_a_job_round_trips_and_rejects_what_is_unusable(tmp_path: Path) -> None:
    job = parse(RULES, "r").jobs(_message(tmp_path), 1.0)[0]
    assert ForwardJob.from_bytes(job.to_bytes()) == job
    for body in (b"", b"[]", b'{"version": 9}', job.to_bytes().replace(job.sop_instance_uid.encode(), b"../x"),
                 job.to_bytes().replace(b'"PACS"', b'"A\\\\B"')):
        with pytest.raises(PoisonMessage):
            ForwardJob.from_bytes(body)


def test_changes_apply_to_the_copy(tmp_path: Path) -> None:
    job = parse(RULES, "r").jobs(_message(tmp_path), 1.0)[0]
    ds = make_ct(size=4)
    apply_changes(ds, job)
    assert ds.InstitutionName == "Elsewhere" and ds.AccessionNumber == "X-ACC-1"


@pytest.mark.parametrize("text, fragment", [
    ("rules: {}", "rules: must be a list"),
    ("other: 1", "one key 'rules'"),
    ("rules: [1]", "rule 1: a rule is a mapping"),
    ("rules:\n  - name: a b\n    destinations: [PACS]", "is not a rule name"),
    ("rules:\n  - name: a\n    destinations: [PACS]\n    colour: red", "unknown key 'colour'"),
    ("rules:\n  - name: a", "destinations: missing"),
    ("rules:\n  - name: a\n    destinations: []", "destinations must be an AE title"),
    ("rules:\n  - name: a\n    destinations: [THIS-IS-LONGER-THAN-16]", "is not an AE title"),
    ("rules:\n  - name: a\n    destinations: [ELSEWHERE]", "'ELSEWHERE' is not a configured peer"),
    ("rules:\n  - name: a\n    trigger: hourly\n    destinations: [PACS]", "trigger: 'hourly' is not one of"),
    ("rules:\n  - name: a\n    match: {Colour: red}\n    destinations: [PACS]", "'Colour' is not a DICOM keyword"),
    ("rules:\n  - name: a\n    match: {StudyDate: yesterday}\n    destinations: [PACS]", "is not a date"),
    ("rules:\n  - name: a\n    set: {SOPInstanceUID: '1.2'}\n    destinations: [PACS]", "cannot be changed"),
    ("rules:\n  - name: a\n    set: {PatientName: [a, b]}\n    destinations: [PACS]", "is not a text"),
    ("rules:\n  - name: a\n    destinations: [PACS]\n  - name: a\n    destinations: [PACS]", "used twice"),
    ("rules: [", "not valid YAML"),
])
def test_a_bad_rules_file_says_what_and_where(text: str, fragment: str) -> None:
    with pytest.raises(RulesError, match="^rules.yaml: ") as caught:
        parse(text, "rules.yaml", peers=["PACS"])
    assert fragment in str(caught.value)


def test_json_and_an_empty_file_are_rules_too() -> None:
    assert parse('{"rules": [{"name": "a", "destinations": ["PACS"]}]}', "r.json").destinations == ("PACS",)
    assert parse("", "empty.yaml") == Rules((), "empty.yaml")


def test_the_file_is_reloaded_when_it_changes_and_a_broken_edit_keeps_the_rules(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text("rules:\n  - name: a\n    destinations: [PACS]\n")
    source = RulesFile(str(path), ["PACS", "AI"], check_seconds=0)
    assert source.current().destinations == ("PACS",)
    path.write_text("rules:\n  - name: b\n    destinations: [AI]\n")
    os.utime(path, ns=(1, 10**18))
    assert source.current().destinations == ("AI",)
    path.write_text("rules:\n  - name: b\n    destinations: [NOWHERE]\n")
    os.utime(path, ns=(1, 2 * 10**18))
    assert source.current().destinations == ("AI",)  # kept; the error is logged
    with pytest.raises(RulesError, match="cannot read"):
        RulesFile(str(tmp_path / "missing.yaml"), [])
