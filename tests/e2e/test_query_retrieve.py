"""C-FIND, C-MOVE and C-GET against `dicom-archive serve` with real peers.

DCMTK findscu/movescu/getscu and storescp, Orthanc querying and retrieving
through its REST API. Every expectation is computed from the generated test
data below (``STUDIES``), never read back from our catalog.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind  # type: ignore[attr-defined]

from archive.adapters.sqlite_catalog import SqliteCatalog
from tests.e2e.dimse_peers import OrthancPeer, StoreSCPPeer, findscu, getscu, movescu, rest
from tests.e2e.harness import ArchiveProcess, http_json, serve, wait_until
from tests.e2e.senders import storescu
from tests.factories import clones, make_ct, new_uid, write_part10

pytestmark = pytest.mark.dcmtk


@dataclass(frozen=True)
class Study:
    uid: str
    patient_id: str
    patient_name: str
    charset: str
    date: str
    time: str
    accession: str
    series: tuple[tuple[str, str, int], ...]  # (series UID, modality, instances)
    procedure: str = ""

    @property
    def modalities(self) -> set[str]:
        return {m for _, m, _ in self.series}

    @property
    def instances(self) -> int:
        return sum(n for _, _, n in self.series)


def _study(pid: str, name: str, charset: str, date: str, time: str, acc: str,
           series: list[tuple[str, int]], procedure: str = "") -> Study:
    return Study(new_uid(), pid, name, charset, date, time, acc,
                 tuple((new_uid(), m, n) for m, n in series), procedure)


STUDIES = (
    _study("QR-P1", "Müller^Jürgen", "ISO_IR 192", "20240110", "083000", "ACC-1", [("CT", 3), ("MR", 1)], "CTCHEST"),
    _study("QR-P1", "Müller^Jürgen", "ISO_IR 192", "20230505", "141500", "ACC-2", [("MR", 2)]),
    _study("QR-P2", "Smith^Anna", "", "20200101", "235959", "ACC-3", [("CT", 1)]),
    _study("QR-P3", "Gómez^José", "ISO_IR 100", "20211111", "101500", "ACC-4", [("CT", 1)]),
)
SOP_UIDS: dict[str, list[str]] = {}  # series UID -> SOP Instance UIDs, filled when the files are written


def _files(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    files = []
    for study in STUDIES:
        for number, (series_uid, modality, count) in enumerate(study.series, start=1):
            for i in range(count):
                ds = make_ct(study_uid=study.uid, series_uid=series_uid, instance_number=i + 1, seed=i, size=16,
                             patient_id=study.patient_id, patient_name=study.patient_name, study_date=study.date,
                             accession=study.accession, modality=modality, charset=study.charset or None)
                ds.StudyTime = study.time
                ds.AcquisitionDateTime = f"{study.date}{study.time}.{i:06d}"
                ds.SeriesNumber = number
                if study.procedure:
                    code = Dataset()
                    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = study.procedure, "99LOCAL", "CT chest"
                    ds.ProcedureCodeSequence = [code]
                SOP_UIDS.setdefault(series_uid, []).append(str(ds.SOPInstanceUID))
                files.append(write_part10(ds, directory / f"{ds.SOPInstanceUID}.dcm"))
    return files


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("qr")


@pytest.fixture(scope="module")
def storescp_peer(workdir: Path) -> Iterator[StoreSCPPeer]:
    peer = StoreSCPPeer(workdir / "storescp").start()
    yield peer
    peer.stop()


@pytest.fixture(scope="module")
def archive(workdir: Path, storescp_peer: StoreSCPPeer) -> Iterator[tuple[ArchiveProcess, OrthancPeer]]:
    proc = serve(workdir)
    orthanc = OrthancPeer(workdir / "orthanc", archive_port=proc.dicom_port).start()
    proc.env["ARCHIVE_PEERS"] = (f"{storescp_peer.aet}@127.0.0.1:{storescp_peer.port},"
                                 f"{orthanc.aet}@127.0.0.1:{orthanc.dicom_port}")
    proc.start()
    try:
        files = _files(workdir / "in")
        sent = storescu(proc.dicom_port, files)
        assert sent.returncode == 0, sent.stderr
        wait_until(lambda: len(http_json(f"{proc.http}/dicom-web/instances?limit=1000")[1] or []) == len(files))
        yield proc, orthanc
    finally:
        proc.stop()
        orthanc.stop()


@pytest.fixture
def port(archive: tuple[ArchiveProcess, OrthancPeer]) -> int:
    return archive[0].dicom_port


def _uids(responses: list[Dataset], keyword: str) -> set[str]:
    return {str(getattr(r, keyword)) for r in responses}


STUDY_CASES: dict[str, tuple[list[str], Callable[[Study], bool]]] = {
    "single value": (["AccessionNumber=ACC-2"], lambda s: s.accession == "ACC-2"),
    "wildcard person name": (["SpecificCharacterSet=ISO_IR 192", "PatientName=Mü*"],
                             lambda s: s.patient_name.startswith("Mü")),
    "person name, any case and accents": (["PatientName=*GOMEZ*"], lambda s: "Gómez" in s.patient_name),
    "wildcard ?": (["AccessionNumber=ACC-?"], lambda s: True),
    "wildcard suffix": (["PatientName=*Anna"], lambda s: s.patient_name.endswith("Anna")),
    "uid list": ([f"StudyInstanceUID={STUDIES[0].uid}\\{STUDIES[2].uid}"], lambda s: s in (STUDIES[0], STUDIES[2])),
    "date range": (["StudyDate=20200101-20211231"], lambda s: "20200101" <= s.date <= "20211231"),
    "date from": (["StudyDate=20230101-"], lambda s: s.date >= "20230101"),
    "date until": (["StudyDate=-20200101"], lambda s: s.date <= "20200101"),
    "time range": (["StudyTime=080000-150000"], lambda s: "080000" <= s.time <= "150000"),
    "modalities in study": (["ModalitiesInStudy=MR"], lambda s: "MR" in s.modalities),
    "sequence": (["ProcedureCodeSequence[0].CodeValue=CTCHEST"], lambda s: s.procedure == "CTCHEST"),
    "combined": (["PatientID=QR-P1", "StudyDate=20240101-"], lambda s: s.patient_id == "QR-P1" and s.date >= "20240101"),
    "universal": (["PatientID=QR-P*"], lambda s: True),
}


@pytest.mark.parametrize("case", list(STUDY_CASES))
def test_study_root_study_level_matching(port: int, workdir: Path, case: str) -> None:
    keys, predicate = STUDY_CASES[case]
    code, responses, log = findscu(port, "study", ["QueryRetrieveLevel=STUDY", "StudyInstanceUID", "StudyDescription",
                                                   *keys], workdir / "find")
    assert code == 0, log
    assert _uids(responses, "StudyInstanceUID") == {s.uid for s in STUDIES if predicate(s)}
    for r in responses:
        assert r.QueryRetrieveLevel == "STUDY"
        assert "StudyDescription" in r  # universal matching: returned (PS3.4 C.2.2.2.3)
        assert "PatientBirthDate" not in r  # not asked for, not returned


def test_study_level_return_keys_and_computed_attributes(port: int, workdir: Path) -> None:
    code, responses, log = findscu(port, "study", [
        "QueryRetrieveLevel=STUDY", "PatientID=QR-P1", "StudyInstanceUID", "AccessionNumber", "StudyDate",
        "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances", "ModalitiesInStudy",
    ], workdir / "find")
    assert code == 0, log
    by_uid = {str(r.StudyInstanceUID): r for r in responses}
    expected = [s for s in STUDIES if s.patient_id == "QR-P1"]
    assert set(by_uid) == {s.uid for s in expected}
    for s in expected:
        r = by_uid[s.uid]
        assert (r.AccessionNumber, r.StudyDate) == (s.accession, s.date)
        assert int(r.NumberOfStudyRelatedSeries) == len(s.series)
        assert int(r.NumberOfStudyRelatedInstances) == s.instances
        modalities = r.ModalitiesInStudy
        assert ({modalities} if isinstance(modalities, str) else set(modalities)) == s.modalities


def test_patient_root_every_level(port: int, workdir: Path) -> None:
    code, patients, log = findscu(port, "patient", [
        "QueryRetrieveLevel=PATIENT", "PatientID=QR-P*", "PatientName", "NumberOfPatientRelatedStudies",
        "NumberOfPatientRelatedInstances"], workdir / "find")
    assert code == 0, log
    by_id = {str(p.PatientID): p for p in patients}
    assert set(by_id) == {s.patient_id for s in STUDIES}
    for pid, p in by_id.items():
        studies = [s for s in STUDIES if s.patient_id == pid]
        assert int(p.NumberOfPatientRelatedStudies) == len(studies)
        assert int(p.NumberOfPatientRelatedInstances) == sum(s.instances for s in studies)
        assert str(p.PatientName) == studies[0].patient_name

    code, studies, log = findscu(port, "patient", ["QueryRetrieveLevel=STUDY", "PatientID=QR-P1", "StudyInstanceUID"],
                                 workdir / "find")
    assert code == 0, log
    assert _uids(studies, "StudyInstanceUID") == {s.uid for s in STUDIES if s.patient_id == "QR-P1"}

    study = STUDIES[0]
    code, series, log = findscu(port, "patient", [
        "QueryRetrieveLevel=SERIES", "PatientID=QR-P1", f"StudyInstanceUID={study.uid}", "SeriesInstanceUID",
        "Modality", "NumberOfSeriesRelatedInstances"], workdir / "find")
    assert code == 0, log
    assert {(str(r.SeriesInstanceUID), r.Modality, int(r.NumberOfSeriesRelatedInstances)) for r in series} == set(
        study.series)

    series_uid = study.series[0][0]
    code, images, log = findscu(port, "patient", [
        "QueryRetrieveLevel=IMAGE", "PatientID=QR-P1", f"StudyInstanceUID={study.uid}",
        f"SeriesInstanceUID={series_uid}", "SOPInstanceUID", "InstanceNumber"], workdir / "find")
    assert code == 0, log
    assert _uids(images, "SOPInstanceUID") == set(SOP_UIDS[series_uid])


def test_series_and_image_level_matching(port: int, workdir: Path) -> None:
    code, series, log = findscu(port, "study", ["QueryRetrieveLevel=SERIES", "Modality=MR", "SeriesInstanceUID",
                                                "StudyInstanceUID"], workdir / "find")
    assert code == 0, log
    assert _uids(series, "SeriesInstanceUID") == {u for s in STUDIES for u, m, _ in s.series if m == "MR"}

    series_uid = STUDIES[0].series[0][0]
    code, images, log = findscu(port, "study", [
        "QueryRetrieveLevel=IMAGE", f"SeriesInstanceUID={series_uid}", "InstanceNumber=2", "SOPInstanceUID"],
        workdir / "find")
    assert code == 0, log
    assert _uids(images, "SOPInstanceUID") == {SOP_UIDS[series_uid][1]}


@pytest.mark.parametrize("value, low, high", [
    ("20230505140000-20240110090000", "20230505140000", "20240110090000"),  # closed
    ("20240101-", "20240101", None),  # open end, date precision
    ("-2020", None, "2020"),  # open start, year precision: all of 2020 included
])
def test_datetime_range_at_image_level(port: int, workdir: Path, value: str, low: str | None,
                                       high: str | None) -> None:
    """PS3.4 C.2.2.2.5: DT ranges, ends at any precision (a kept attribute matched on the rows)."""
    code, images, log = findscu(port, "study", ["QueryRetrieveLevel=IMAGE", "PatientID=QR-P*",
                                                f"AcquisitionDateTime={value}", "SOPInstanceUID"], workdir / "find")
    assert code == 0, log

    def within(stamp: str) -> bool:
        return (low is None or stamp >= low) and (high is None or stamp[: len(high)] <= high)

    expected = {uid for s in STUDIES if within(f"{s.date}{s.time}") for series_uid, _, _ in s.series
                for uid in SOP_UIDS[series_uid]}
    assert expected, "the case must match something"
    assert _uids(images, "SOPInstanceUID") == expected


def test_character_sets(port: int, workdir: Path) -> None:
    # A Latin-1 query for a name stored in Latin-1: answered in Latin-1
    code, responses, log = findscu(port, "study", [
        "QueryRetrieveLevel=STUDY", "SpecificCharacterSet=ISO_IR 100", "PatientName=G*", "StudyInstanceUID"],
        workdir / "find")
    assert code == 0, log
    assert [str(r.PatientName) for r in responses] == ["Gómez^José"]
    assert responses[0].SpecificCharacterSet == "ISO_IR 100"
    # A name stored in UTF-8, asked for without a character set: answered in UTF-8
    code, responses, log = findscu(port, "study", ["QueryRetrieveLevel=STUDY", "PatientID=QR-P1", "PatientName"],
                                   workdir / "find")
    assert code == 0, log
    assert {str(r.PatientName) for r in responses} == {"Müller^Jürgen"}
    assert all(r.SpecificCharacterSet == "ISO_IR 192" for r in responses)


# An SCP that ignored C-CANCEL would send every one of these; one that heeds it stops within a
# few dozen (however long findscu takes to send its C-CANCEL after the first response).
CANCEL_MATCHES = 5000


@pytest.fixture(scope="module")
def crowded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ArchiveProcess]:
    """A serve whose catalog holds CANCEL_MATCHES instances of one patient.

    Written straight into the catalog: a C-FIND reads nothing else, and storing them would take a minute.
    """
    workdir = tmp_path_factory.mktemp("crowded")
    db = workdir / "catalog.db"

    async def fill() -> None:
        catalog = SqliteCatalog(db)
        try:
            await catalog.migrate()
            await catalog.upsert(clones(workdir, CANCEL_MATCHES, patient_id="QR-MANY"))
        finally:
            await catalog.close()

    asyncio.run(fill())
    proc = serve(workdir, ARCHIVE_CATALOG=f"sqlite://{db}").start()
    yield proc
    proc.stop()


def test_cancel_stops_the_find(crowded: ArchiveProcess, tmp_path: Path) -> None:
    # PS3.4 C.4.1.2.3: on C-CANCEL-FIND-RQ the SCP stops as soon as possible and answers Cancel;
    # the pending responses it sent before reading the cancel stand (PS3.7 9.3.2.3)
    code, responses, log = findscu(crowded.dicom_port, "study",
                                   ["QueryRetrieveLevel=IMAGE", "PatientID=QR-MANY", "SOPInstanceUID"], tmp_path,
                                   extra=["--cancel", "1", "-v"])
    assert code == 0, log[-2000:]
    assert "Received Final Find Response (Cancel" in log, log[-2000:]
    assert 1 <= len(responses) < CANCEL_MATCHES // 10, len(responses)


def _find_statuses(port: int, identifier: Dataset) -> list[tuple[int, str]]:
    ae = AE(ae_title="PYFIND")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate("127.0.0.1", port, ae_title="ARCHIVE")
    assert assoc.is_established
    try:
        return [(int(status.Status), str(status.get("ErrorComment", "")))
                for status, _ in assoc.send_c_find(identifier, StudyRootQueryRetrieveInformationModelFind)]
    finally:
        assoc.release()


def test_invalid_identifiers_get_failure_statuses(port: int) -> None:
    bad_level = Dataset()
    bad_level.QueryRetrieveLevel = "PATIENT"  # not a level of the Study Root model
    assert _find_statuses(port, bad_level)[-1][0] == 0xA900
    bad_date = Dataset()
    bad_date.QueryRetrieveLevel = "STUDY"
    bad_date.StudyDate = "yesterday"
    status, comment = _find_statuses(port, bad_date)[-1]
    assert status == 0xC000 and "StudyDate" in comment


def test_match_cap_ends_with_out_of_resources(tmp_path: Path) -> None:
    proc = serve(tmp_path, ARCHIVE_FIND_MAX_MATCHES="2").start()
    try:
        files = [write_part10(make_ct(patient_id="CAP"), tmp_path / f"{i}.dcm") for i in range(3)]
        assert storescu(proc.dicom_port, files).returncode == 0
        wait_until(lambda: len(http_json(f"{proc.http}/dicom-web/studies?PatientID=CAP")[1] or []) == 3)
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.PatientID = "CAP"
        statuses = _find_statuses(proc.dicom_port, query)
        assert [s for s, _ in statuses] == [0xFF00, 0xFF00, 0xA700]
        assert "2" in statuses[-1][1]
    finally:
        proc.stop()


def test_move_to_storescp_sends_the_study_as_stored(port: int, workdir: Path, storescp_peer: StoreSCPPeer) -> None:
    study = STUDIES[0]
    result = movescu(port, storescp_peer.aet, ["QueryRetrieveLevel=STUDY", f"StudyInstanceUID={study.uid}"])
    assert result.returncode == 0, result.stderr
    received = storescp_peer.received()
    expected = {uid for series_uid, _, _ in study.series for uid in SOP_UIDS[series_uid]}
    assert expected <= set(received)
    originals = {p.stem: p for p in (workdir / "in").iterdir()}
    from pydicom import dcmread

    for uid in expected:
        original = dcmread(originals[uid])
        assert received[uid].PixelData == original.PixelData
        assert str(received[uid].PatientName) == study.patient_name


def test_move_to_unknown_destination_is_refused(port: int) -> None:
    result = movescu(port, "NOBODY", ["QueryRetrieveLevel=STUDY", f"StudyInstanceUID={STUDIES[2].uid}"])
    assert "MoveDestinationUnknown" in result.stderr or "A801" in result.stderr.upper(), result.stderr


def test_get_series_and_instances(port: int, workdir: Path) -> None:
    study = STUDIES[1]
    series_uid = study.series[0][0]
    out = workdir / "get-series"
    result = getscu(port, ["QueryRetrieveLevel=SERIES", f"StudyInstanceUID={study.uid}",
                           f"SeriesInstanceUID={series_uid}"], out)
    assert result.returncode == 0, result.stderr
    assert {p.name.split(".", 1)[1] for p in out.iterdir()} == set(SOP_UIDS[series_uid])

    # IMAGE level with a UID list, the identifier in implicit VR (getscu -xi)
    wanted = SOP_UIDS[STUDIES[0].series[0][0]][:2]
    out = workdir / "get-images"
    result = getscu(port, ["QueryRetrieveLevel=IMAGE", f"StudyInstanceUID={STUDIES[0].uid}",
                           f"SeriesInstanceUID={STUDIES[0].series[0][0]}", "SOPInstanceUID=" + "\\".join(wanted)],
                    out, extra=["-xi", "-v"])
    assert result.returncode == 0, result.stderr
    assert {p.name.split(".", 1)[1] for p in out.iterdir()} == set(wanted), result.stderr


def test_orthanc_queries_and_retrieves_from_us(archive: tuple[ArchiveProcess, OrthancPeer], port: int) -> None:
    _, orthanc = archive
    study = STUDIES[2]
    status, answer = rest(f"{orthanc.url}/modalities/archive/query",
                          {"Level": "Study", "Query": {"PatientID": study.patient_id, "StudyInstanceUID": ""}})
    assert status == 200, answer
    query_id = answer["ID"]
    status, content = rest(f"{orthanc.url}/queries/{query_id}/answers?expand")
    assert status == 200, content
    found = {a.get("0020,000d", {}).get("Value") for a in content}
    assert found == {study.uid}, content
    # C-MOVE from us to Orthanc, asked by Orthanc itself
    status, job = rest(f"{orthanc.url}/queries/{query_id}/answers/0/retrieve", {"TargetAet": orthanc.aet,
                                                                                  "Synchronous": True})
    assert status == 200, job
    status, found_instances = rest(f"{orthanc.url}/tools/find",
                                   {"Level": "Instance", "Query": {"StudyInstanceUID": study.uid}})
    assert status == 200 and len(found_instances) == study.instances


def test_movescu_to_orthanc(archive: tuple[ArchiveProcess, OrthancPeer], port: int) -> None:
    _, orthanc = archive
    study = STUDIES[3]
    result = movescu(port, orthanc.aet, ["QueryRetrieveLevel=STUDY", f"StudyInstanceUID={study.uid}"])
    assert result.returncode == 0, result.stderr
    status, found = rest(f"{orthanc.url}/tools/find", {"Level": "Instance", "Query": {"StudyInstanceUID": study.uid},
                                                        "Expand": True})
    assert status == 200 and len(found) == study.instances
    assert found[0]["MainDicomTags"]["SOPInstanceUID"] in SOP_UIDS[study.series[0][0]]


def test_relational_queries_are_negotiated(port: int) -> None:
    from pynetdicom.pdu_primitives import SOPClassExtendedNegotiation
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelMove  # type: ignore[attr-defined]

    items = []
    for uid in (StudyRootQueryRetrieveInformationModelFind, StudyRootQueryRetrieveInformationModelMove):
        item = SOPClassExtendedNegotiation()
        item.sop_class_uid = uid
        item.service_class_application_information = b"\x01\x01\x01\x01" if uid.endswith(".1") else b"\x01"
        items.append(item)
    ae = AE(ae_title="PYFIND")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    assoc = ae.associate("127.0.0.1", port, ae_title="ARCHIVE", ext_neg=items)
    assert assoc.is_established
    try:
        answers = assoc.acceptor.sop_class_extended
        # relational queries and combined date/time: yes; fuzzy names, timezone: no (PS3.4 C.5.1)
        assert answers[StudyRootQueryRetrieveInformationModelFind] == b"\x01\x01\x00\x00"
        assert answers[StudyRootQueryRetrieveInformationModelMove] == b"\x00"  # no relational retrieve
        # a relational query: a SERIES level key without the study's unique key
        query = Dataset()
        query.QueryRetrieveLevel = "SERIES"
        query.PatientID = "QR-P2"
        query.SeriesInstanceUID = ""
        responses = [ds for status, ds in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind)
                     if status and status.Status in (0xFF00, 0xFF01)]
        assert {str(ds.SeriesInstanceUID) for ds in responses} == {u for s in STUDIES if s.patient_id == "QR-P2"
                                                                   for u, _, _ in s.series}
    finally:
        assoc.release()


@pytest.mark.parametrize("env", [{"ARCHIVE_SCP_ENGINE": "pynetdicom"},
                                 {"ARCHIVE_SCP_ENGINE": "pynetdicom", "ARCHIVE_WORKERS": "2"},
                                 {"ARCHIVE_SCP_ENGINE": "asyncio", "ARCHIVE_WORKERS": "2"}],
                         ids=["pynetdicom receiver", "two pynetdicom receivers", "two asyncio receivers"])
def test_every_serve_layout_answers_c_find(tmp_path: Path, env: dict[str, str]) -> None:
    from tests.conftest import free_port

    query_port = free_port()
    proc = serve(tmp_path, ARCHIVE_QUERY_DICOM_PORT=str(query_port), **env).start()
    try:
        files = [write_part10(make_ct(patient_id="LAYOUT", seed=i), tmp_path / f"{i}.dcm") for i in range(3)]
        assert storescu(proc.dicom_port, files).returncode == 0
        wait_until(lambda: len(http_json(f"{proc.http}/dicom-web/studies?PatientID=LAYOUT")[1] or []) == 3)
        # one AE, one port: the asyncio receiver hands query/retrieve associations to pynetdicom
        for _ in range(6):  # with SO_REUSEPORT, associations land on either receiver process
            code, found, log = findscu(proc.dicom_port, "study", ["QueryRetrieveLevel=STUDY", "PatientID=LAYOUT",
                                                                  "StudyInstanceUID"], tmp_path / "find")
            assert code == 0 and len(found) == 3, log
        received = tmp_path / "got"
        received.mkdir()
        studies = "\\".join(str(ds.StudyInstanceUID) for ds in found)
        got = getscu(proc.dicom_port, ["QueryRetrieveLevel=STUDY", f"StudyInstanceUID={studies}"], received)
        assert got.returncode == 0 and len(list(received.iterdir())) == 3, got.stderr
        with socket.socket() as probe:  # serve opens no second DICOM port
            assert probe.connect_ex(("127.0.0.1", query_port)) != 0
        assert "child exited" not in proc.log_tail(3000)  # every process of the layout stays up
    finally:
        proc.stop()


def _c_get(port: int, query: Dataset, storage: str, syntaxes: list[str] | None = None
           ) -> tuple[list[tuple[Dataset, Dataset]], list[tuple[str, Dataset]]]:
    """C-GET with pynetdicom, taking the SCP role for ``storage`` in ``syntaxes``.

    The responses, and (transfer syntax, dataset) of every C-STORE sub-operation received.
    """
    from pynetdicom import build_role, evt
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelGet  # type: ignore[attr-defined]

    received: list[tuple[str, Dataset]] = []

    def on_store(event: evt.Event) -> int:
        received.append((str(event.context.transfer_syntax), event.dataset))
        return 0x0000

    ae = AE(ae_title="PYGET")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    ae.add_requested_context(storage, syntaxes)
    assoc = ae.associate("127.0.0.1", port, ae_title="ARCHIVE", ext_neg=[build_role(storage, scp_role=True)],
                         evt_handlers=[(evt.EVT_C_STORE, on_store)])
    assert assoc.is_established
    try:
        return list(assoc.send_c_get(query, StudyRootQueryRetrieveInformationModelGet)), received
    finally:
        assoc.release()


def test_get_reports_sub_operation_counts_and_damaged_objects(tmp_path: Path) -> None:
    """A missing object and a corrupted one fail their sub-operations; the rest arrive (PS3.4 C.4.3.1.3)."""
    from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

    proc = serve(tmp_path).start()
    try:
        study = new_uid()
        datasets = [make_ct(study_uid=study, patient_id="DAMAGED", instance_number=i, seed=i, size=16)
                    for i in range(1, 5)]
        files = [write_part10(ds, tmp_path / f"{i}.dcm") for i, ds in enumerate(datasets)]
        assert storescu(proc.dicom_port, files).returncode == 0
        wait_until(lambda: len(http_json(f"{proc.http}/dicom-web/instances?PatientID=DAMAGED")[1] or []) == 4)
        objects = {p.stem: p for p in (tmp_path / "data" / "objects").rglob("*.dcm")}
        missing, corrupted = str(datasets[0].SOPInstanceUID), str(datasets[1].SOPInstanceUID)
        objects[missing].unlink()
        raw = bytearray(objects[corrupted].read_bytes())
        raw[-10] ^= 0xFF  # one pixel byte: still parseable, no longer what was stored
        objects[corrupted].write_bytes(bytes(raw))

        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.StudyInstanceUID = study
        responses, stored = _c_get(proc.dicom_port, query, CTImageStorage)
        received = [str(ds.SOPInstanceUID) for _, ds in stored]
        final, identifier = responses[-1]
        assert final.Status == 0xB000  # some sub-operations failed
        assert (final.NumberOfCompletedSuboperations, final.NumberOfFailedSuboperations) == (2, 2)
        failed = identifier.FailedSOPInstanceUIDList
        assert set([failed] if isinstance(failed, str) else failed) == {missing, corrupted}
        assert sorted(received) == sorted(str(ds.SOPInstanceUID) for ds in datasets[2:])
        pending = [r for r, _ in responses[:-1] if r.Status == 0xFF00]
        assert [r.NumberOfRemainingSuboperations for r in pending] == [3, 2, 1, 0]
    finally:
        proc.stop()


def test_get_decompresses_for_a_requester_that_accepts_only_uncompressed(tmp_path: Path) -> None:
    """Stored RLE, asked for by an implicit-VR-only requester: decoded, same instance (same UID, same pixels)."""
    import numpy as np
    from pydicom import dcmread
    from pydicom.uid import ImplicitVRLittleEndian, RLELossless
    from pynetdicom.sop_class import SecondaryCaptureImageStorage  # type: ignore[attr-defined]

    from tests.images import image_file

    pixels = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64)
    source = image_file(tmp_path / "rle.dcm", pixels, syntax=RLELossless, PatientID="RLE-GET")
    original = dcmread(source)
    proc = serve(tmp_path).start()
    try:
        assert storescu(proc.dicom_port, [source], extra=["-xr"]).returncode == 0  # stored as RLE
        wait_until(lambda: len(http_json(f"{proc.http}/dicom-web/instances?PatientID=RLE-GET")[1] or []) == 1)
        query = Dataset()
        query.QueryRetrieveLevel = "IMAGE"
        query.StudyInstanceUID = original.StudyInstanceUID
        query.SeriesInstanceUID = original.SeriesInstanceUID
        query.SOPInstanceUID = original.SOPInstanceUID
        responses, received = _c_get(proc.dicom_port, query, SecondaryCaptureImageStorage,
                                     [ImplicitVRLittleEndian])  # nothing else
        assert responses[-1][0].Status == 0x0000
        [(syntax, dataset)] = received
        assert syntax == ImplicitVRLittleEndian
        assert dataset.SOPInstanceUID == original.SOPInstanceUID
        dataset.file_meta = original.file_meta
        dataset.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
        assert np.array_equal(dataset.pixel_array, pixels)
    finally:
        proc.stop()


def test_query_values_never_reach_the_logs(archive: tuple[ArchiveProcess, OrthancPeer], port: int) -> None:
    """Patient names and birth dates in identifiers, valid or not, stay out of the logs."""
    bad = Dataset()
    bad.QueryRetrieveLevel = "STUDY"
    bad.PatientBirthDate = "SECRETDOB7"  # invalid: the failure is logged, its value must not be
    assert _find_statuses(port, bad)[-1][0] == 0xC000
    good = Dataset()
    good.QueryRetrieveLevel = "STUDY"
    good.PatientName = "Secretname^Zed"
    good.PatientID = "SECRETPID9"
    assert _find_statuses(port, good)[-1][0] == 0x0000
    log = archive[0].log_tail(5000)
    assert "C-FIND failed" in log  # the failure was logged ...
    for secret in ("SECRETDOB7", "Secretname", "SECRETPID9", "Müller", "QR-P1"):
        assert secret not in log  # ... without the values
