"""A study downloaded as media (``?dicomdir=true``): PS3.10 File IDs and a DICOMDIR that pydicom's
FileSet reads, every record leading to its instance, and that dciodvfy passes (PS3.10 8, PS3.3 F)."""

from __future__ import annotations

import io
import re
import subprocess
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.fileset import FileSet

from tests.e2e.dimse_peers import require_tool
from tests.e2e.harness import ArchiveProcess, http_json, serve, wait_until
from tests.factories import make_ct, new_uid, write_part10
from tests.sopclasses import every_kind
from tests.stow_client import stow

FILE_ID = re.compile(r"DICOM(/[A-Z0-9_]{1,8}){4}")  # PS3.10 8.5: components of 8 from A-Z, 0-9, _
NAME = "山田^太郎"


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ArchiveProcess, str, dict[str, str]]]:
    tmp = tmp_path_factory.mktemp("dicomdir")
    study_uid = new_uid()
    sent: dict[str, str] = {}  # SOP UID -> SOP class
    files = []
    datasets = [ds for ds, _ in every_kind(study_uid, "DIR-1")]
    series = new_uid()
    datasets += [make_ct(study_uid=study_uid, series_uid=series, patient_id="DIR-1", instance_number=n, seed=n)
                 for n in (1, 2, 3)]
    for n, ds in enumerate(datasets):
        ds.SpecificCharacterSet = "ISO_IR 192"
        ds.PatientName = NAME
        if n == 1:
            del ds.StudyDate  # a Type 1 record key the instance lacks: made up, not left out
        sent[str(ds.SOPInstanceUID)] = str(ds.SOPClassUID)
        files.append(write_part10(ds, tmp / f"{n}.dcm").read_bytes())
    proc = serve(tmp).start()
    try:
        status, _, body = stow(proc.http, files)
        assert status == 200, body
        wait_until(lambda: len(http_json(f"{proc.http}/dicom-web/studies/{study_uid}/instances")[1] or []) == len(sent),
                   timeout=60)
        yield proc, study_uid, sent
    finally:
        proc.stop()


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_study_as_media_opens_with_its_dicomdir(study: tuple[ArchiveProcess, str, dict[str, str]],
                                                tmp_path: Path) -> None:
    proc, study_uid, sent = study
    query = urllib.parse.urlencode({"accept": "application/zip", "dicomdir": "true"})
    status, body = _get(f"{proc.http}/dicom-web/studies/{study_uid}?{query}")
    assert status == 200, body[:300]
    with zipfile.ZipFile(io.BytesIO(body)) as archive:
        names = archive.namelist()
        assert names[0] == "DICOMDIR"
        assert all(FILE_ID.fullmatch(name) for name in names[1:]), names
        assert len(names) == len(sent) + 1
        archive.extractall(tmp_path)
    fileset = FileSet(tmp_path / "DICOMDIR")  # pydicom follows every offset
    found = {}
    for instance in fileset:
        loaded = instance.load()
        assert loaded.SOPInstanceUID == instance.SOPInstanceUID
        found[str(instance.SOPInstanceUID)] = str(loaded.SOPClassUID)
    assert found == sent
    patient = fileset.find(PatientID="DIR-1")[0].node.parent.parent.parent
    assert str(patient._record.PatientName) == NAME
    kinds = {instance.node.record_type for instance in fileset}
    assert {"IMAGE", "SR DOCUMENT", "ENCAP DOC", "WAVEFORM", "RT PLAN"} <= kinds, kinds
    dicomdir = dcmread(tmp_path / "DICOMDIR")
    studies = [r for r in dicomdir.DirectoryRecordSequence if r.DirectoryRecordType == "STUDY"]
    assert len(studies) == 1 and studies[0].StudyDate  # made up where an instance had none
    result = subprocess.run([require_tool("dciodvfy"), str(tmp_path / "DICOMDIR")], capture_output=True, text=True,
                            errors="replace", timeout=60)
    errors = [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]
    assert errors == [], "\n".join(errors)


def test_dicomdir_is_refused_without_zip(study: tuple[ArchiveProcess, str, dict[str, str]]) -> None:
    proc, study_uid, _ = study
    assert _get(f"{proc.http}/dicom-web/studies/{study_uid}?dicomdir=true")[0] == 400
    assert _get(f"{proc.http}/dicom-web/studies/{study_uid}?accept=application/zip&dicomdir=maybe")[0] == 400
