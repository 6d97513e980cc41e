"""The audit trail against a real syslog collector (rsyslog from scripts/services.sh).

`serve` sends its PS3.15 A.5 records over UDP, TCP (octet counting) and TLS (client
certificate, the test CA); they must arrive, parse, and name the AE or user, the client
address, the study and the outcome. A record over 8 KB arrives whole over TCP and TLS. A dead
collector slows no C-STORE, the dropped counter moves, and the local file has every record.
Patient names are in no log, metric or record; the patient ID only in the audit records.
"""

from __future__ import annotations

import base64
import statistics
import time
import urllib.request
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind  # type: ignore[attr-defined]

from tests.conftest import free_port, service_setting
from tests.e2e.harness import ArchiveProcess, http_json, metric, serve, wait_until
from tests.e2e.senders import pynetdicom_store
from tests.factories import make_ct, new_uid

BOM = b"\xef\xbb\xbf"


def _collector_env(transport: str) -> dict[str, str]:
    env = {"ARCHIVE_AUDIT_SYSLOG": service_setting(f"AUDIT_SYSLOG_{transport.upper()}")}
    if transport == "tls":
        env |= {"ARCHIVE_AUDIT_TLS_CA": service_setting("AUDIT_SYSLOG_CA"),
                "ARCHIVE_AUDIT_TLS_CERT": service_setting("AUDIT_SYSLOG_CLIENT_CERT"),
                "ARCHIVE_AUDIT_TLS_KEY": service_setting("AUDIT_SYSLOG_CLIENT_KEY")}
    return env


def _received(transport: str, marker: str) -> list[tuple[bytes, ET.Element]]:
    """(syslog header, AuditMessage) of every record the collector got over ``transport`` naming ``marker``."""
    path = Path(service_setting("AUDIT_SYSLOG_OUT")) / f"{transport}.log"
    if not path.exists():
        return []
    out = []
    for line in _complete_lines(path.read_bytes()):
        header, _, xml = line.partition(BOM)
        message = ET.fromstring(xml.decode("utf-8"))
        queries = [base64.b64decode(q.text or "") for q in message.iter("ParticipantObjectQuery")]
        if marker.encode() in line or any(marker.encode() in q for q in queries):
            out.append((header, message))
    return out


def _complete_lines(data: bytes) -> list[bytes]:
    """The lines a writer has finished: the last one is still being written until its newline
    (rsyslog writes a record of over 8 KB in more than one write)."""
    return data.split(b"\n")[:-1]


def _local(proc: ArchiveProcess, marker: str) -> list[ET.Element]:
    path = Path(proc.env["ARCHIVE_DATA_DIR"]) / "audit" / "audit.log"
    if not path.exists():
        return []
    return [ET.fromstring(line) for line in _complete_lines(path.read_bytes()) if marker.encode() in line]


def _event_id(message: ET.Element) -> str:
    return message.find("EventIdentification/EventID").get("csd-code", "")  # type: ignore[union-attr]


def _c_find(port: int, calling_aet: str, study_uid: str) -> int:
    ae = AE(ae_title=calling_aet)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate("127.0.0.1", port, ae_title="ARCHIVE")
    assert assoc.is_established
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = study_uid
    matches = 0
    try:
        for status, found in assoc.send_c_find(identifier, StudyRootQueryRetrieveInformationModelFind):
            matches += found is not None and status.Status in (0xFF00, 0xFF01)
    finally:
        assoc.release()
    return matches


@pytest.mark.parametrize("transport", ["udp", "tcp", "tls"])
def test_records_arrive_parse_and_name_who_what_and_outcome(transport: str, tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:8].upper()
    aet, patient_id, patient_name = f"AUD{tag}", f"PID-{tag}", f"Zaudit^Name{tag}"
    study = new_uid()
    proc = serve(tmp_path, **_collector_env(transport)).start()
    try:
        cts = [make_ct(study_uid=study, patient_id=patient_id, patient_name=patient_name, instance_number=n)
               for n in range(3)]
        assert pynetdicom_store(proc.dicom_port, cts, calling_aet=aet) == [0, 0, 0]
        wait_until(lambda: http_json(f"{proc.http}/dicom-web/studies?StudyInstanceUID={study}")[1], timeout=30)
        assert _c_find(proc.dicom_port, aet, study) == 1
        status, _ = http_json(f"{proc.http}/dicom-web/studies/{study}/metadata")
        assert status == 200
        # a QIDO-RS query of ~7 KB (aiohttp takes request lines up to 8 KB): its record is over 8 KB
        uids = ",".join([study] + [new_uid() for _ in range(7000 // 60)])
        status, found = http_json(f"{proc.http}/dicom-web/studies?StudyInstanceUID={uids}")
        assert status == 200 and len(found) == 1

        def arrived() -> dict[str, list[ET.Element]]:
            kinds: dict[str, list[ET.Element]] = {}
            seen = set()
            for _, message in _received(transport, study) + _received(transport, aet):
                if (text := ET.tostring(message)) not in seen:
                    seen.add(text)
                    kinds.setdefault(_event_id(message), []).append(message)
            if not ({"110104", "110112", "110103"} <= set(kinds) and len(kinds["110112"]) >= 3):
                return {}
            # the polling above makes Query records too: over a stream, wait for the large one itself
            if transport != "udp" and not any(len(ET.tostring(m)) > 8192 for m in kinds["110112"]):
                return {}
            return kinds

        kinds = wait_until(arrived, timeout=30)
        # C-STORE: one DICOM Instances Transferred for the study, the calling AE and its address as source
        (stored,) = kinds["110104"]
        ident = stored.find("EventIdentification")
        assert ident is not None and (ident.get("EventActionCode"), ident.get("EventOutcomeIndicator")) == ("C", "0")
        source = stored.find("ActiveParticipant")
        assert source is not None and (source.get("UserID"), source.get("NetworkAccessPointID")) == (aet, "127.0.0.1")
        study_object, patient_object = stored.findall("ParticipantObjectIdentification")
        assert study_object.get("ParticipantObjectID") == study
        assert [c.get("NumberOfInstances") for c in study_object.findall("ParticipantObjectDescription/SOPClass")] == ["3"]
        assert patient_object.get("ParticipantObjectID") == patient_id
        # C-FIND and QIDO-RS: Query records naming the AE, or the loopback caller
        queries = kinds["110112"]
        requestors = {(m.find("ActiveParticipant").get("UserID"),  # type: ignore[union-attr]
                       m.find("ActiveParticipant").get("NetworkAccessPointID")) for m in queries}  # type: ignore[union-attr]
        assert {(aet, "127.0.0.1"), ("local", "127.0.0.1")} <= requestors  # the loopback caller (no sign-in set up)
        # WADO-RS metadata: DICOM Instances Accessed for the study and its patient
        accessed = kinds["110103"][0]
        assert [o.get("ParticipantObjectID") for o in accessed.findall("ParticipantObjectIdentification")] == \
            [study, patient_id]
        if transport != "udp":  # the large record arrived whole over a stream transport
            big = [m for header, m in _received(transport, study)
                   if _event_id(m) == "110112" and len(ET.tostring(m)) > 8192]
            assert big, "the QIDO-RS record of over 8 KB did not arrive whole"
            query = base64.b64decode(big[0].findtext("ParticipantObjectIdentification/ParticipantObjectQuery", ""))
            assert query.decode() == f"StudyInstanceUID={uids}"
        headers = [header for header, _ in _received(transport, study)]
        assert all(h.startswith(b"<85>1 ") and b" dicom-archive " in h for h in headers)  # authpriv.notice
        # every record the collector got is in the local file too
        local = set((Path(proc.env["ARCHIVE_DATA_DIR"]) / "audit" / "audit.log").read_text().splitlines())
        assert all(ET.tostring(m, encoding="unicode") in local for _, m in _received(transport, study))
        # the patient's name is nowhere; the patient ID only in audit records
        body = urllib.request.urlopen(f"{proc.http}/metrics", timeout=5).read().decode()
    finally:
        assert proc.stop() == 0, proc.log_tail()
    logs = proc.log_path.read_text()
    out = Path(service_setting("AUDIT_SYSLOG_OUT")) / f"{transport}.log"
    audit_file = (Path(proc.env["ARCHIVE_DATA_DIR"]) / "audit" / "audit.log").read_text()
    for text in (logs, body, out.read_text(errors="replace"), audit_file):
        assert "Zaudit" not in text and tag.capitalize() not in text.replace(tag, "")
    assert patient_id not in logs and patient_id not in body
    assert patient_id in audit_file


def _store_associations(proc: ArchiveProcess, aet: str, n: int) -> list[float]:
    times = []
    for _ in range(n):
        study = new_uid()
        started = time.perf_counter()
        statuses = pynetdicom_store(proc.dicom_port, [make_ct(study_uid=study, instance_number=k) for k in range(5)],
                                    calling_aet=aet)
        times.append(time.perf_counter() - started)
        assert statuses == [0] * 5
    return times


def test_a_dead_collector_fails_no_cstore(tmp_path: Path) -> None:
    for name in ("live", "dead"):
        (tmp_path / name).mkdir()
    live = serve(tmp_path / "live", **_collector_env("tcp")).start()
    dead = serve(tmp_path / "dead", ARCHIVE_AUDIT_SYSLOG=f"tcp://127.0.0.1:{free_port()}").start()  # nobody there
    try:
        _store_associations(live, "WARMUP", 2)
        _store_associations(dead, "WARMUP", 2)
        live_times, dead_times = [], []
        for _ in range(3):  # alternate, so that the machine's load falls on both alike
            live_times += _store_associations(live, "LIVEAUD", 5)
            dead_times += _store_associations(dead, "DEADAUD", 5)
        # every association's record was dropped for the collector, and is in the local file
        wait_until(lambda: metric(dead, "archive_audit_records_dropped_total", reason="collector_down") >= 17)
        local = [m for m in _local(dead, "DEADAUD") if _event_id(m) == "110104"]
        assert len(local) == 15
    finally:
        assert live.stop() == 0, live.log_tail()
        assert dead.stop() == 0, dead.log_tail()
    # what it costs (no assertion: timings are for benchmarks; the unit test
    # test_a_stalled_collector_never_holds_the_caller proves the caller never waits on the collector)
    live_median, dead_median = statistics.median(live_times), statistics.median(dead_times)
    print(f"5 C-STOREs per association, median: live collector {live_median * 1000:.1f} ms, "
          f"dead collector {dead_median * 1000:.1f} ms")
