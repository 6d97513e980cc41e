"""Hostile DIMSE peers: traversal and malformed UIDs, malformed datasets, PDU lengths, slow drips,
floods, unknown destinations, retrieve storms and unknown callers (PS3.8, PS3.7, PS3.4)."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest
from pynetdicom import AE, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)
from pydicom.dataset import Dataset

from tests.e2e.raw_dimse import A_ABORT, A_ASSOCIATE_RQ, A_ASSOCIATE_RJ, P_DATA_TF, associate_rq
from tests.e2e.senders import rejection_of
from tests.security.hostile import BIG_STUDY
from tests.security.conftest import (
    HOSTILE_UIDS,
    TRAVERSALS,
    Archive,
    ct,
    guarded,
    peak_rss_mb,
    start_archive,
)
from tests.security.dimse import CT, FIND, closed_by_peer, connect, associated, pdu_header, store_bytes, store_dataset
from tests.factories import new_uid

INVALID_UID, MALFORMED = 0xC001, 0xC000


@pytest.mark.parametrize("uid", TRAVERSALS)
def test_cstore_path_traversal_in_sop_instance_uid(archive: Archive, uid: str) -> None:
    with guarded(archive):
        assert store_dataset(archive.dicom_port, ct(sop_uid=uid)) == INVALID_UID


@pytest.mark.parametrize("attribute", ["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"])
@pytest.mark.parametrize("uid", HOSTILE_UIDS)
def test_cstore_hostile_uids(archive: Archive, attribute: str, uid: str) -> None:
    ds = ct()
    setattr(ds, attribute, uid)
    with guarded(archive):
        assert store_dataset(archive.dicom_port, ds) == INVALID_UID


@pytest.mark.parametrize("data", [b"", b"\x00" * 7, b"\xff" * 64, b"\x08\x00\x18\x00UI\xff\xff" + b"1" * 20,
                                  b"\x10\x00\x10\x00PN\x04\x00Doe^" * 3])
def test_cstore_malformed_dataset(archive: Archive, data: bytes) -> None:
    with guarded(archive):
        assert store_bytes(archive.dicom_port, data, sop_instance=new_uid()) in (MALFORMED, INVALID_UID)


@pytest.fixture(scope="session", params=["asyncio", "pynetdicom"])
def engine_archive(request: pytest.FixtureRequest, archive: Archive,
                   tmp_path_factory: pytest.TempPathFactory) -> Archive:
    """The suite's archive (asyncio engine) and one on the pynetdicom engine."""
    if request.param == "asyncio":
        return archive
    other = start_archive(tmp_path_factory.mktemp("pynetdicom"), ARCHIVE_SCP_ENGINE="pynetdicom")
    request.addfinalizer(other.proc.stop)
    return other


@pytest.mark.parametrize("when", ["association", "p-data", "p-data-find"])
def test_pdu_length_0xffffffff(engine_archive: Archive, when: str) -> None:
    """A length field of 4 GiB: no allocation of it, the connection is aborted or closed."""
    before = peak_rss_mb(engine_archive)
    with guarded(engine_archive):
        if when == "association":
            sock = connect(engine_archive.dicom_port)
            sock.sendall(pdu_header(A_ASSOCIATE_RQ, 0xFFFFFFFF) + b"\x00\x01" * 64)
        else:
            sock = associated(engine_archive.dicom_port, abstract=FIND if when == "p-data-find" else CT)
            sock.sendall(pdu_header(P_DATA_TF, 0xFFFFFFFF) + b"\x00" * 1024)
        closed, kinds = closed_by_peer(sock, within=10)
        sock.close()
    assert closed and set(kinds) <= {A_ABORT}, kinds
    assert peak_rss_mb(engine_archive) - before < 100


def test_oversized_p_data_refused(engine_archive: Archive) -> None:
    """A P-DATA-TF beyond the Maximum Length we announced (PS3.8 D.1), sent whole."""
    with guarded(engine_archive):
        sock = associated(engine_archive.dicom_port)
        body = b"\x00" * ((1 << 20) + 4096)
        try:
            sock.sendall(pdu_header(P_DATA_TF, len(body)) + body)
        except ConnectionError:
            pass  # aborted while we were still sending
        closed, kinds = closed_by_peer(sock, within=10)
        sock.close()
    assert closed and set(kinds) <= {A_ABORT}, kinds


@pytest.mark.parametrize("cut", [3, 10, 50])
def test_truncated_pdu_then_close(engine_archive: Archive, cut: int) -> None:
    rq = associate_rq()
    with guarded(engine_archive):
        sock = connect(engine_archive.dicom_port)
        sock.sendall(rq[:cut])
        sock.close()


def _drip(port: int, stop: threading.Event, closed: list[bool], data: bytes) -> None:
    sock = connect(port)
    sock.settimeout(0.1)
    try:
        for byte in data:
            if stop.is_set():
                break
            try:
                sock.sendall(bytes([byte]))
                if sock.recv(1) == b"":
                    closed.append(True)
                    return
            except TimeoutError:
                continue
            except ConnectionError:
                closed.append(True)
                return
        closed.append(False)
    finally:
        sock.close()


@pytest.mark.parametrize("phase", ["association", "pdu-header"])
def test_slow_drip_is_freed(engine_archive: Archive, phase: str) -> None:
    """Peers that send a byte every 0.1 s hold every slot (ARCHIVE_MAX_ASSOCIATIONS=4); ARTIM
    (ARCHIVE_ACSE_TIMEOUT=2) or the network timeout (3) closes them, and the archive serves again."""
    stop = threading.Event()
    closed: list[bool] = []
    if phase == "association":
        data = associate_rq()
        drips = [threading.Thread(target=_drip, args=(engine_archive.dicom_port, stop, closed, data))
                 for _ in range(4)]
        for t in drips:
            t.start()
    else:
        socks = [associated(engine_archive.dicom_port) for _ in range(4)]
        drips = []
        for s in socks:  # after the association: a PDU header, byte by byte
            def run(s: socket.socket = s) -> None:
                s.settimeout(0.1)
                try:
                    for byte in pdu_header(P_DATA_TF, 100):
                        s.sendall(bytes([byte]))
                        time.sleep(1.0)
                    closed.append(s.recv(100) == b"" or True)
                except (ConnectionError, TimeoutError):
                    closed.append(True)
            drips.append(threading.Thread(target=run))
            drips[-1].start()
    try:
        for t in drips:
            t.join(timeout=20)
        assert all(not t.is_alive() for t in drips)
        assert closed.count(True) == 4, closed
    finally:
        stop.set()
    engine_archive.alive()


def test_association_flood_past_the_cap(engine_archive: Archive) -> None:
    """ARCHIVE_MAX_ASSOCIATIONS=4 held open: the fifth is rejected (PS3.8 9.3.4: transient, local
    limit exceeded), and the archive serves as soon as they end."""
    held = []
    with guarded(engine_archive):
        try:
            for n in range(4):
                ae = AE(ae_title=f"FLOOD{n}")
                ae.add_requested_context(Verification)
                assoc = ae.associate("127.0.0.1", engine_archive.dicom_port, ae_title="ARCHIVE")
                assert assoc.is_established
                held.append(assoc)
            refused = []
            for n in range(8):
                ae = AE(ae_title=f"EXTRA{n}")
                ae.add_requested_context(Verification)
                assoc = ae.associate("127.0.0.1", engine_archive.dicom_port, ae_title="ARCHIVE")
                primitive = rejection_of(assoc)
                refused.append(None if primitive is None else (primitive.result, primitive.result_source,
                                                               primitive.diagnostic))
            assert refused == [(0x02, 0x03, 0x02)] * 8, refused
        finally:
            for assoc in held:
                assoc.release()


def _peer(ae_title: str, port: int, contexts: list[str]) -> AE:
    ae = AE(ae_title=ae_title)
    for cx in contexts:
        ae.add_requested_context(cx)
    return ae


def test_c_move_to_unknown_destination(archive: Archive) -> None:
    ae = _peer("MOVER", archive.dicom_port, [StudyRootQueryRetrieveInformationModelMove])
    with guarded(archive):
        assoc = ae.associate("127.0.0.1", archive.dicom_port, ae_title="ARCHIVE")
        assert assoc.is_established
        identifier = Dataset()
        identifier.QueryRetrieveLevel = "STUDY"
        identifier.StudyInstanceUID = "*"
        statuses = [s.Status for s, _ in assoc.send_c_move(identifier, "EVIL", StudyRootQueryRetrieveInformationModelMove) if s]
        assoc.release()
    assert statuses and statuses[-1] == 0xA801, [hex(s) for s in statuses]


@pytest.mark.parametrize("uid", [*TRAVERSALS[:4], "*", "1.2.3\\../../x"])
def test_c_get_hostile_study_uid_sends_nothing_unexpected(archive: Archive, uid: str) -> None:
    """A C-GET naming a traversal (or universal) study: a failure, or only what the archive holds."""
    received: list[str] = []
    ae = _peer("GETTER", archive.dicom_port, [StudyRootQueryRetrieveInformationModelGet])
    ae.add_requested_context(CTImageStorage)
    from pynetdicom.presentation import build_role

    def handle(event: evt.Event) -> int:
        received.append(str(event.request.AffectedSOPInstanceUID))
        return 0x0000

    with guarded(archive):
        assoc = ae.associate("127.0.0.1", archive.dicom_port, ae_title="ARCHIVE",
                             ext_neg=[build_role(CTImageStorage, scp_role=True)],
                             evt_handlers=[(evt.EVT_C_STORE, handle)])
        assert assoc.is_established
        identifier = Dataset()
        identifier.QueryRetrieveLevel = "STUDY"
        identifier.StudyInstanceUID = uid
        statuses = [s.Status for s, _ in assoc.send_c_get(identifier, StudyRootQueryRetrieveInformationModelGet) if s]
        assoc.release()
    assert statuses, "no C-GET response"
    assert set(received) <= set(archive.baseline.values())
    if uid != "*":
        assert received == [] and statuses[-1] != 0xFF00


def test_c_get_storm_is_capped(archive: Archive) -> None:
    """Every slot (4) runs a C-GET of a 100-instance study and of two decompression bombs (which the peer
    accepts only uncompressed) at once; more are rejected at the cap; every slot gets the study, the bombs
    fail as sub-operations, and memory stays bounded."""
    ae = _peer("STORM", archive.dicom_port, [StudyRootQueryRetrieveInformationModelGet])
    from pynetdicom.presentation import build_role
    from pydicom.uid import SecondaryCaptureImageStorage

    for cx in (CTImageStorage, SecondaryCaptureImageStorage):
        ae.add_requested_context(cx)
    counts: list[int] = []
    studies = [archive.location("big0")[0], archive.location("rle_bomb")[0]]
    before = peak_rss_mb(archive)

    def get_all() -> None:
        n = [0]

        def handle(event: evt.Event) -> int:
            n[0] += 1
            return 0x0000
        assoc = ae.associate("127.0.0.1", archive.dicom_port, ae_title="ARCHIVE",
                             ext_neg=[build_role(CTImageStorage, scp_role=True),
                                      build_role(SecondaryCaptureImageStorage, scp_role=True)],
                             evt_handlers=[(evt.EVT_C_STORE, handle)])
        if not assoc.is_established:
            primitive = rejection_of(assoc)
            assert primitive is not None and (primitive.result, primitive.result_source,
                                              primitive.diagnostic) == (0x02, 0x03, 0x02), "not the cap"
            counts.append(-1)
            return
        identifier = Dataset()
        identifier.QueryRetrieveLevel = "STUDY"
        identifier.StudyInstanceUID = studies
        last = [s.Status for s, _ in assoc.send_c_get(identifier, StudyRootQueryRetrieveInformationModelGet) if s][-1]
        assoc.release()
        assert last == 0xB000, hex(last)  # warning: the bombs failed, the rest was sent (PS3.4 C.4.3.1.3)
        counts.append(n[0])

    with guarded(archive):
        threads = [threading.Thread(target=get_all) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
    assert len(counts) == 8 and all(c in (-1, BIG_STUDY) for c in counts), counts
    # A burst counts every connection until it is answered, refused ones too: at most 4 are served at
    # once, at least one is, and each served one gets the whole study.
    assert 1 <= counts.count(BIG_STUDY) <= 8 and counts.count(-1) >= 4, counts
    assert peak_rss_mb(archive) - before < 300


@pytest.mark.parametrize("name", ["' OR '1'='1", "x' OR 1=1 --", "*' OR ''='", "\\' OR 1=1; DROP TABLE instances; --"])
def test_c_find_injection(archive: Archive, name: str) -> None:
    ae = _peer("FINDER", archive.dicom_port, [PatientRootQueryRetrieveInformationModelFind])
    with guarded(archive):
        assoc = ae.associate("127.0.0.1", archive.dicom_port, ae_title="ARCHIVE")
        identifier = Dataset()
        identifier.QueryRetrieveLevel = "PATIENT"
        identifier.PatientID = name
        identifier.PatientName = ""
        found = [i for s, i in assoc.send_c_find(identifier, PatientRootQueryRetrieveInformationModelFind)
                 if s and s.Status in (0xFF00, 0xFF01)]
        assoc.release()
    assert found == []


def test_unknown_peer_with_allow_list(tmp_path: Path) -> None:
    locked = start_archive(tmp_path, ARCHIVE_ALLOWED_AETS="MODALITY,PROBE")
    try:
        with guarded(locked):
            sock = connect(locked.dicom_port)
            sock.sendall(associate_rq(calling="INTRUDER"))
            closed, kinds = closed_by_peer(sock, within=10)
            sock.close()
            assert kinds == [A_ASSOCIATE_RJ], kinds
    finally:
        locked.proc.stop()
