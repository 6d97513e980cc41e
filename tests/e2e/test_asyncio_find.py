"""C-FIND on the asyncio engine (archive.scp.asyncio_engine with archive.query.dimse.find.AsyncioFind).

`serve` keeps an association that proposes only Find and Verification on the asyncio engine
(others go to pynetdicom), so raw associations and real requestors here exercise its C-FIND:
responses with identifiers, C-CANCEL, SOP Class Extended Negotiation, per-AE permission, and
what a hostile requestor sends (an undecodable identifier, none at all, a huge one). PS3.4 C.4.1,
PS3.7 9.1.2 and 9.3.2.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.pdu_primitives import SOPClassExtendedNegotiation
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind  # type: ignore[attr-defined]

from tests.e2e.harness import ArchiveProcess, http_json, serve, wait_until
from tests.e2e.raw_dimse import (A_ABORT, A_ASSOCIATE_AC, C_CANCEL_RQ, C_FIND_RQ, COMMAND_LAST, DATA_LAST, P_DATA_TF,
                                 associate_rq, command, p_data, pdvs, recv_pdu, response_fields, status_of)
from tests.e2e.senders import echoscu, storescu
from tests.factories import dataset_bytes, make_ct, new_uid, write_part10

FIND = str(StudyRootQueryRetrieveInformationModelFind)
PATIENT = "AFIND-1"
SERIES = 4


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ArchiveProcess]:
    tmp = tmp_path_factory.mktemp("asyncio-find")
    config = tmp / "aes.yaml"
    config.write_text("aes:\n  RAWSCU: {permissions: [store, query, retrieve]}\n  PYFIND: {permissions: [query]}\n"
                      "  FINDSCU: {permissions: [query]}\n  STORESCU: {permissions: [store]}\n"
                      "  ECHOSCU: {permissions: [store]}\n  MODALITY: {permissions: [store]}\n")
    proc = serve(tmp, ARCHIVE_AE_CONFIG=str(config), ARCHIVE_SCP_ENGINE="asyncio").start()
    try:
        study = new_uid()
        files = [write_part10(make_ct(study_uid=study, series_uid=new_uid(), patient_id=PATIENT, seed=i),
                              tmp / f"{i}.dcm") for i in range(SERIES)]
        assert storescu(proc.dicom_port, files).returncode == 0
        wait_until(lambda: len(http_json(f"{proc.http}/dicom-web/studies/{study}/series")[1] or []) == SERIES)
        yield proc
    finally:
        proc.stop()


def identifier(level: str = "SERIES", implicit: bool = False, **keys: str) -> bytes:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    ds.PatientID = PATIENT
    ds.SeriesInstanceUID = ""
    ds.StudyInstanceUID = ""
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return dataset_bytes(ds, implicit)


class Raw:
    """A raw association proposing Study Root Find (context 1) and Verification (context 3)."""

    def __init__(self, port: int, syntax: str = ExplicitVRLittleEndian, calling: str = "RAWSCU") -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=20)
        self.sock.sendall(associate_rq([(FIND, syntax), ("1.2.840.10008.1.1", ImplicitVRLittleEndian)],
                                       calling=calling))
        assert recv_pdu(self.sock)[0] == A_ASSOCIATE_AC

    def find(self, data: bytes | None, message_id: int = 1) -> None:
        cmd = command(C_FIND_RQ, message_id, sop_class=FIND, has_dataset=data is not None)
        self.sock.sendall(p_data(1, COMMAND_LAST, cmd) + (p_data(1, DATA_LAST, data) if data is not None else b""))

    def responses(self) -> list[tuple[int, bool]]:
        """(status, whether an identifier followed) of each response, up to the final one."""
        out: list[tuple[int, bool]] = []
        while True:
            kind, body = recv_pdu(self.sock)
            assert kind == P_DATA_TF, f"PDU type {kind}"
            status, has_dataset = response_fields(next(pdvs(body))[2])
            if has_dataset:
                kind, data = recv_pdu(self.sock)
                assert kind == P_DATA_TF and data[5] & 0x03 == 0x02, "the identifier's PDV (dataset, last)"
            out.append((status, has_dataset))
            if status not in (0xFF00, 0xFF01):
                return out

    def close(self) -> None:
        self.sock.close()


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_raw_find_gets_a_pending_response_per_match_then_success(archive: ArchiveProcess, syntax: str) -> None:
    raw = Raw(archive.dicom_port, syntax)
    try:
        raw.find(identifier(implicit=syntax == ImplicitVRLittleEndian))
        assert raw.responses() == [(0xFF00, True)] * SERIES + [(0x0000, False)]
        raw.find(identifier(implicit=syntax == ImplicitVRLittleEndian), message_id=2)  # the association goes on
        assert len(raw.responses()) == SERIES + 1
    finally:
        raw.close()


def test_pynetdicom_gets_the_identifiers_and_extended_negotiation(archive: ArchiveProcess) -> None:
    ae = AE(ae_title="PYFIND")
    ae.add_requested_context(FIND)
    ext = SOPClassExtendedNegotiation()
    ext.sop_class_uid = FIND
    ext.service_class_application_information = b"\x01\x01\x01\x01"  # relational, date-time, fuzzy, timezone
    assoc = ae.associate("127.0.0.1", archive.dicom_port, ae_title="ARCHIVE", ext_neg=[ext])
    assert assoc.is_established
    try:
        assert assoc.acceptor.sop_class_extended == {FIND: b"\x01\x01\x00\x00"}
        ds = Dataset()
        ds.QueryRetrieveLevel = "STUDY"
        ds.PatientID = PATIENT
        ds.StudyInstanceUID = ""
        ds.NumberOfStudyRelatedSeries = ""
        found = [(int(s.Status), i) for s, i in assoc.send_c_find(ds, FIND)]
    finally:
        assoc.release()
    assert [s for s, _ in found] == [0xFF00, 0x0000]
    match = found[0][1]
    assert match.PatientID == PATIENT and int(match.NumberOfStudyRelatedSeries) == SERIES
    assert match.RetrieveAETitle == "ARCHIVE"


def test_cancel_for_another_message_is_ignored_and_cancel_stops_the_find(archive: ArchiveProcess) -> None:
    raw = Raw(archive.dicom_port)
    try:
        raw.sock.sendall(p_data(1, COMMAND_LAST, _cancel(99)))  # no find of Message ID 99: nothing happens
        raw.find(identifier(), message_id=5)
        raw.sock.sendall(p_data(1, COMMAND_LAST, _cancel(5)))
        answers = raw.responses()
        # PS3.4 C.4.1.2.3: Cancel ends it, perhaps after some Pending responses already under way
        assert answers[-1] in ((0xFE00, False), (0x0000, False)) and len(answers) <= SERIES + 1
        raw.find(identifier(), message_id=6)
        assert raw.responses()[-1] == (0x0000, False)
    finally:
        raw.close()


def _cancel(responding_to: int) -> bytes:
    return command(C_CANCEL_RQ, 0, sop_class=None, responding_to=responding_to)


def test_undecodable_or_missing_identifier_is_a_failure_status_not_a_crash(archive: ArchiveProcess) -> None:
    raw = Raw(archive.dicom_port)
    try:
        raw.find(b"\x08\x00\x52\x00\xff\xff\xff\x7f" + b"garbage")  # an element longer than the identifier
        [(status, has_dataset)] = raw.responses()
        assert status in (0xA900, 0xC000) and not has_dataset  # Identifier does not match / Unable to process
        raw.find(None, message_id=2)  # Command Data Set Type says no identifier follows
        assert raw.responses() == [(0xC000, False)]
        raw.find(identifier(), message_id=3)
        assert raw.responses()[-1] == (0x0000, False)
    finally:
        raw.close()


def test_an_identifier_over_a_mebibyte_aborts_the_association(archive: ArchiveProcess) -> None:
    raw = Raw(archive.dicom_port)
    try:
        raw.sock.sendall(p_data(1, COMMAND_LAST, command(C_FIND_RQ, 1, sop_class=FIND, has_dataset=True)))
        chunk = bytes(16000)
        try:
            for _ in range(80):
                raw.sock.sendall(p_data(1, 0x00, chunk))
            raw.sock.sendall(p_data(1, DATA_LAST, chunk))
        except OSError:  # the archive aborted and closed while we were still sending
            pass
        kinds = []
        try:
            while (kind := recv_pdu(raw.sock)[0]) != -1:
                kinds.append(kind)
        except OSError:  # reset: what we sent and it did not read
            pass
        assert P_DATA_TF not in kinds and set(kinds) <= {A_ABORT}, kinds  # never answered
    finally:
        raw.close()
    wait_until(lambda: "identifier of more than 1048576 bytes" in archive.log_tail(200), timeout=10)
    assert echoscu(archive.dicom_port).returncode == 0


def test_a_calling_ae_without_query_permission_is_refused(archive: ArchiveProcess) -> None:
    raw = Raw(archive.dicom_port, calling="MODALITY")
    try:
        raw.find(identifier())
        assert raw.responses() == [(0x0124, False)]
    finally:
        raw.close()
    assert "operation refused" in archive.log_tail(200)


def test_a_request_sent_during_a_find_is_answered_after_it(archive: ArchiveProcess) -> None:
    raw = Raw(archive.dicom_port)
    try:
        raw.find(identifier(), message_id=1)
        raw.sock.sendall(p_data(3, COMMAND_LAST, command(0x0030, 2)))  # C-ECHO-RQ before the find's last response
        assert raw.responses() == [(0xFF00, True)] * SERIES + [(0x0000, False)]
        kind, body = recv_pdu(raw.sock)
        assert kind == P_DATA_TF and status_of(body) == 0x0000
        assert struct.pack("<HHIH", 0, 0x0100, 2, 0x8030) in body  # the C-ECHO-RSP, in order
    finally:
        raw.close()
