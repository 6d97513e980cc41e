"""The asyncio receiver (archive.scp.asyncio_engine) against real senders on embedded backends."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import random
import socket
import struct
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, _config
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from archive.adapters.filesystem_store import FilesystemStore
from archive.adapters.sqlite_queue import SqliteQueue
from archive.core.uids import object_key
from archive.ingest.service import IngestService
from archive.scp.asyncio_engine import AsyncioReceiver
from archive.scp.portal import Portal
from archive.scp.pynetdicom_engine import StoreSCP
from archive.settings import Settings
from tests.e2e.raw_dimse import (A_ABORT, A_ASSOCIATE_AC, A_ASSOCIATE_RJ, A_RELEASE_RP, COMMAND_LAST, DATA_LAST, P_DATA_TF,
                                 RawAssociation, associate_rq, command, p_data, recv_pdu, status_of)
from tests.e2e.harness import wait_until
from tests.e2e.senders import associate_result, echoscu, pynetdicom_store, storescu
from tests.factories import make_ct, new_uid, write_part10
from tests.sopclasses import every_kind


@dataclass
class Running:
    port: int
    portal: Portal
    store: FilesystemStore
    queue: SqliteQueue

    def object_bytes(self, sop_uid: str) -> bytes:
        return self.portal.run(self._read(sop_uid))

    async def _read(self, sop_uid: str) -> bytes:
        return b"".join([chunk async for chunk in self.store.get(object_key(sop_uid))])

    def queued(self) -> int:
        return self.portal.run(self.queue.depth()).ready


def _start(tmp: Path, engine: str, *, fsync: bool = False, handover: bool = False, **env: str) -> tuple[Running, object]:
    """A receiver on embedded backends; ``handover``: the asyncio engine hands associations for
    other services to a pynetdicom server (storage and verification only here), as `serve` does."""
    settings = Settings.from_env({"ARCHIVE_DATA_DIR": str(tmp), "ARCHIVE_BIND": "127.0.0.1",
                                  "ARCHIVE_FSYNC": str(fsync).lower(), **env})
    portal = Portal().start()
    store, queue = FilesystemStore(tmp / "objects", fsync=fsync), SqliteQueue(tmp / "queue.db")
    portal.run(store.migrate())
    portal.run(queue.migrate())
    ingest = IngestService(store, queue, settings.duplicate_policy)
    scp: object
    if engine == "asyncio":
        other = None
        if handover:
            other = StoreSCP(settings, ingest, portal)
            other.start(listen=False)
        receiver = AsyncioReceiver(settings, ingest, portal.loop, handover=other)
        port = portal.run(receiver.start("127.0.0.1", 0))
        scp = (receiver, other)
    else:
        threaded = StoreSCP(settings, ingest, portal)
        port = threaded.start(port=0)
        scp = threaded
    return Running(port, portal, store, queue), scp


def _stop(running: Running, scp: object) -> None:
    if isinstance(scp, tuple):
        receiver, other = scp
        running.portal.run(receiver.stop(drain_seconds=1))
        if other is not None:
            other.stop(drain_seconds=1)
    elif isinstance(scp, StoreSCP):
        scp.stop(drain_seconds=1)
    running.portal.run(running.queue.close())
    running.portal.run(running.store.close())
    running.portal.stop()


@pytest.fixture
def receiver(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Running]:
    env = dict(getattr(request, "param", {}))
    running, scp = _start(tmp_path, "asyncio", fsync=bool(env.pop("fsync", False)),
                          handover=bool(env.pop("handover", False)), **env)
    try:
        yield running
    finally:
        _stop(running, scp)


def test_echo_from_dcmtk_and_pynetdicom(receiver: Running) -> None:
    result = echoscu(receiver.port)
    assert result.returncode == 0, result.stderr
    ae = AE(ae_title="ECHO")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", receiver.port, ae_title="ARCHIVE")
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0
    assoc.release()


@pytest.mark.parametrize("receiver", [{"ARCHIVE_MAX_PDU": "16384"}], indirect=True)
def test_storescu_instances_are_stored_and_queued(receiver: Running, tmp_path: Path) -> None:
    """Many PDUs per dataset (16 KB maximum): every instance stored once, queued once, its
    checksum that of its bytes (0.1 to 4.7 MB: the larger one over the hashing thread's backlog)."""
    datasets = [make_ct(size=256, seed=i) for i in range(3)] + [make_ct(size=512), make_ct(size=1536)]
    files = [write_part10(ds, tmp_path / f"{i}.dcm") for i, ds in enumerate(datasets)]
    result = storescu(receiver.port, files)
    assert result.returncode == 0, result.stderr
    for ds in datasets:
        body = receiver.object_bytes(ds.SOPInstanceUID)
        info = receiver.portal.run(receiver.store.head(object_key(ds.SOPInstanceUID)))
        assert info is not None and info.sha256 == hashlib.sha256(body).hexdigest()
        stored = pydicom.dcmread(pydicom.filebase.DicomBytesIO(body))
        assert stored.SOPInstanceUID == ds.SOPInstanceUID
        assert stored.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert "SourceApplicationEntityTitle" not in stored.file_meta  # stored bytes do not depend on the sender
        assert stored.PixelData == ds.PixelData
    assert receiver.queued() == 5
    assert not [p for p in (tmp_path / "spool").rglob("*") if p.is_file()]  # spool files removed


def test_every_kind_and_compressed_syntaxes(receiver: Running) -> None:
    study = new_uid()
    for ds, syntax in every_kind(study, "PAT-ASYNCIO"):
        assert pynetdicom_store(receiver.port, [ds], transfer_syntax=syntax) == [0]
        stored = pydicom.dcmread(pydicom.filebase.DicomBytesIO(receiver.object_bytes(ds.SOPInstanceUID)))
        assert stored.file_meta.TransferSyntaxUID == syntax
        assert stored.SOPClassUID == ds.SOPClassUID
        if "PixelData" in ds:
            assert stored.PixelData == ds.PixelData
    assert receiver.queued() == len(every_kind(study, "PAT-ASYNCIO"))


def test_stored_bytes_equal_the_pynetdicom_receivers(tmp_path: Path) -> None:
    """The asyncio engine's object is its spool file, hashed while received: the same bytes as pynetdicom's."""
    datasets = [make_ct(size=128, seed=i) for i in range(3)]
    keep = tempfile.tempdir  # StoreSCP.start points tempfile at its spool
    stored: dict[str, list[bytes]] = {}
    for engine in ("pynetdicom", "asyncio"):
        running, scp = _start(tmp_path / engine, engine)
        try:
            assert pynetdicom_store(running.port, [ds.copy() for ds in datasets]) == [0, 0, 0]
            stored[engine] = [running.object_bytes(ds.SOPInstanceUID) for ds in datasets]
            for ds, body in zip(datasets, stored[engine]):
                info = running.portal.run(running.store.head(object_key(ds.SOPInstanceUID)))
                assert info is not None and info.sha256 == hashlib.sha256(body).hexdigest()
            assert running.queued() == 3
            assert not list((tmp_path / engine / "spool").rglob("*.dcm"))  # spool names removed
        finally:
            _stop(running, scp)
            tempfile.tempdir = keep
    assert stored["asyncio"] == stored["pynetdicom"]


def test_the_spool_file_becomes_the_object(receiver: Running, tmp_path: Path) -> None:
    """Linked in place, not copied: the object is the very file the dataset was received into."""
    ds = make_ct(size=64)
    peer = RawAssociation(receiver.port, [(str(ds.SOPClassUID), ExplicitVRLittleEndian)])
    try:
        assert peer.associate() == A_ASSOCIATE_AC
        peer.begin_store(ds)
        (spool,) = wait_until(lambda: list((tmp_path / "spool").rglob("*.dcm")), timeout=10)
        received_into = spool.stat().st_ino
        assert peer.finish_store() == 0
        assert peer.release() == A_RELEASE_RP
    finally:
        peer.close()
    stored = receiver.store.root / object_key(ds.SOPInstanceUID)
    assert stored.stat().st_ino == received_into
    assert stored.stat().st_nlink == 1  # and the spool name is gone
    assert pydicom.dcmread(stored).SOPInstanceUID == ds.SOPInstanceUID


def test_four_concurrent_associations(receiver: Running) -> None:
    """Four associations at once, each with a C-STORE half-sent before any is finished, then
    finished last first: a server that serves one association (or one C-STORE) at a time hangs."""
    datasets = [make_ct(size=64, seed=n) for n in range(4)]
    peers = [RawAssociation(receiver.port, [(str(ds.SOPClassUID), ExplicitVRLittleEndian)]) for ds in datasets]
    try:
        for peer, ds in zip(peers, datasets):
            assert peer.associate() == A_ASSOCIATE_AC
            peer.begin_store(ds)
        assert [peer.finish_store() for peer in reversed(peers)] == [0] * 4
        assert [peer.release() for peer in peers] == [A_RELEASE_RP] * 4
    finally:
        for peer in peers:
            peer.close()
    assert receiver.queued() == 4
    for ds in datasets:
        assert pydicom.dcmread(pydicom.filebase.DicomBytesIO(receiver.object_bytes(ds.SOPInstanceUID))).PixelData == ds.PixelData


@pytest.mark.parametrize("engine, handover", [("asyncio", False), ("asyncio", True), ("pynetdicom", False)],
                         ids=["asyncio", "asyncio, handed over", "pynetdicom"])
def test_accepted_sockets_have_tcp_nodelay(tmp_path: Path, engine: str, handover: bool) -> None:
    """Without it a DCMTK sender waits ~40 ms per instance (Nagle + delayed ACK). Handed over: an
    association for a service the asyncio engine does not serve goes to pynetdicom with its socket."""
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind  # type: ignore[attr-defined]

    running, scp = _start(tmp_path, engine, handover=handover)
    contexts = [(Verification, ImplicitVRLittleEndian)]
    if handover:
        contexts.append((StudyRootQueryRetrieveInformationModelFind, ImplicitVRLittleEndian))
    peer = RawAssociation(running.port, contexts)
    try:
        assert peer.associate() == A_ASSOCIATE_AC
        assert _nodelay_of_accepted(peer.sock) != 0
        assert peer.release() == A_RELEASE_RP
    finally:
        peer.close()
        _stop(running, scp)


def _nodelay_of_accepted(client: socket.socket) -> int:
    """TCP_NODELAY of the socket this process accepted from ``client`` (the server runs in this
    process: the descriptor whose peer is the client's address)."""
    for fd in os.listdir("/proc/self/fd"):
        try:
            sock = socket.socket(fileno=os.dup(int(fd)))
        except OSError:  # not a socket, or already closed
            continue
        with sock:
            try:
                if (sock.type == socket.SOCK_STREAM and sock.getpeername() == client.getsockname()
                        and sock.getsockname() == client.getpeername()):
                    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            except OSError:  # not connected
                continue
    raise AssertionError("no accepted socket in this process for the client")


def test_uid_mismatch_answers_a900(receiver: Running, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # send the file as it is: the command's UIDs then come from its File Meta
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    ds = make_ct()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = UID(new_uid())  # what the C-STORE command announces
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    path = tmp_path / "mismatch.dcm"
    ds.preamble = b"\x00" * 128
    ds.save_as(path, enforce_file_format=False)  # keep the mismatching File Meta as set
    assert pydicom.dcmread(path).file_meta.MediaStorageSOPInstanceUID != ds.SOPInstanceUID
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(ds.SOPClassUID, [ExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", receiver.port, ae_title="ARCHIVE")
    try:
        status = assoc.send_c_store(path)
        assert status.Status == 0xA900
        assert "differs" in str(status.ErrorComment)
    finally:
        assoc.release()
    assert receiver.queued() == 0


@pytest.mark.parametrize("engine", ["asyncio", "pynetdicom"])
def test_c_store_of_another_sop_class_than_its_context_is_refused(
        tmp_path: Path, engine: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """An MR instance sent on the CT Image Storage context: refused with 0x0122, nothing stored,
    and the association goes on (each context is negotiated for one SOP Class, PS3.8 7.1.1.13)."""
    from pynetdicom.sop_class import CTImageStorage, MRImageStorage  # type: ignore[attr-defined]

    keep = tempfile.tempdir  # StoreSCP.start points tempfile at its spool
    running, engines = _start(tmp_path, engine)
    try:
        mr, ct = make_ct(seed=1), make_ct(seed=2)
        mr.SOPClassUID = MRImageStorage
        for ds in (mr, ct):
            ds.file_meta = FileMetaDataset()
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ae = AE(ae_title="TESTSCU")
        ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian])
        ae.add_requested_context(MRImageStorage, [ExplicitVRLittleEndian])
        assoc = ae.associate("127.0.0.1", running.port, ae_title="ARCHIVE")
        assert assoc.is_established
        try:
            [ct_context] = [cx for cx in assoc.accepted_contexts if cx.abstract_syntax == CTImageStorage]
            with monkeypatch.context() as patch:  # pynetdicom picks the context by the SOP Class
                patch.setattr(assoc, "_get_valid_context", lambda *args, **kwargs: ct_context)
                refused = assoc.send_c_store(mr)
            assert refused.Status == 0x0122
            assert "not negotiated" in str(refused.ErrorComment)
            assert assoc.send_c_store(ct).Status == 0x0000
        finally:
            assoc.release()
        assert running.portal.run(running.store.head(object_key(mr.SOPInstanceUID))) is None
        assert running.portal.run(running.store.head(object_key(ct.SOPInstanceUID))) is not None
        assert running.queued() == 1
    finally:
        _stop(running, engines)
        tempfile.tempdir = keep


@pytest.mark.parametrize("receiver", [{"ARCHIVE_ALLOWED_AETS": "GOODSCU"}], indirect=True)
def test_calling_ae_outside_the_allow_list_is_rejected(receiver: Running) -> None:
    assert associate_result(receiver.port, "EVILSCU") == (False, 0x01, 0x03)
    assert associate_result(receiver.port, "GOODSCU") == (True, None, None)


# The association cap is tested for both engines in test_scp_limits.py.


# --- raw sockets: malformed input --------------------------------------------------------

def _item(kind: int, value: bytes) -> bytes:
    return struct.pack(">BxH", kind, len(value)) + value


def _closed_after(port: int, payload: bytes, *, half_close: bool = True) -> list[int]:
    """Send ``payload`` (then EOF); return the PDU types received until the server closes."""
    kinds: list[int] = []
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(payload)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        while True:
            kind, _ = recv_pdu(sock)
            if kind < 0:
                return kinds
            kinds.append(kind)


@pytest.mark.parametrize("receiver", [{}, {"handover": True}], ids=["alone", "with handover"], indirect=True)
def test_garbage_closes_the_connection_and_the_server_keeps_serving(
        receiver: Running, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="archive.scp.asyncio_engine")
    rng = random.Random(7)
    cases = [
        os.urandom(1),
        bytes(rng.randrange(256) for _ in range(3000)),
        b"\x01\x00\xff\xff\xff\xff" + bytes(100),  # huge A-ASSOCIATE-RQ length
        b"\x04\x00\x00\x00\x00\x10" + bytes(16),  # P-DATA before association
        associate_rq(unknown_items=True)[:40],  # truncated
        b"\x01\x00" + struct.pack(">I", 80) + bytes(74) + b"\x20\x00\xff\xff\x01\x00",  # item past its PDU
    ]
    for i in range(40):  # random mutations of a valid request
        raw = bytearray(associate_rq(unknown_items=True))
        for _ in range(3):
            raw[rng.randrange(6, len(raw))] = rng.randrange(256)
        cases.append(bytes(raw))
    for payload in cases:
        kinds = _closed_after(receiver.port, payload)
        assert set(kinds) <= {A_ASSOCIATE_AC, A_ASSOCIATE_RJ, A_ABORT}
    # no EOF from the peer: these are aborted at once, not after a timeout
    assert _closed_after(receiver.port, cases[2], half_close=False) == [A_ABORT]
    assert _closed_after(receiver.port, cases[3], half_close=False) == [A_ABORT]
    assert echoscu(receiver.port).returncode == 0
    # handled, not crashed (pynetdicom logs what it cannot decode of a handed-over request at ERROR)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR and r.name.startswith("archive")]
    assert any("aborted" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("receiver", [{"ARCHIVE_ACSE_TIMEOUT": "0.5"}, {"ARCHIVE_ACSE_TIMEOUT": "0.5", "handover": True}],
                         ids=["alone", "with handover"], indirect=True)
def test_silent_peer_is_dropped_after_the_artim_timeout(receiver: Running) -> None:
    with socket.create_connection(("127.0.0.1", receiver.port), timeout=5) as sock:
        assert sock.recv(10) == b""  # closed by the server, not by our 5 s timeout
    with socket.create_connection(("127.0.0.1", receiver.port), timeout=5) as sock:
        sock.sendall(associate_rq()[:40])  # part of a request, then nothing
        assert sock.recv(10) == b""
    assert echoscu(receiver.port).returncode == 0


@pytest.mark.parametrize("receiver", [{"handover": True, "ARCHIVE_MAX_ASSOCIATIONS": "1"}], indirect=True)
def test_associations_for_other_services_are_handed_over_and_share_the_cap(receiver: Running) -> None:
    """A request proposing a service the engine does not serve goes, unread, to pynetdicom; both
    engines' associations count against one ARCHIVE_MAX_ASSOCIATIONS."""
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind  # type: ignore[attr-defined]

    ae = AE(ae_title="MIXED")
    ae.add_requested_context(Verification)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)  # not in this server
    held = ae.associate("127.0.0.1", receiver.port, ae_title="ARCHIVE")
    assert held.is_established
    try:
        # pynetdicom negotiated it (the asyncio engine accepts every context it knows)
        assert [str(cx.abstract_syntax) for cx in held.rejected_contexts] == [StudyRootQueryRetrieveInformationModelFind]
        assert held.send_c_echo().Status == 0
        assert associate_result(receiver.port, "SECOND") == (False, 0x02, 0x02)  # busy: the cap counts it
    finally:
        held.release()
    # the handed-over association ends in its own thread, then the cap has room again
    wait_until(lambda: associate_result(receiver.port, "THIRD")[0], timeout=5)


def test_a_spool_file_that_cannot_be_made_durable_fails_the_store(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With fsync on, the spool file is fsynced beside prepare and linked in place; an fsync
    error (reported once by Linux) fails the C-STORE instead of being lost."""
    from archive.scp.asyncio_engine import receiver as asyncio_receiver

    running, engines = _start(tmp_path, "asyncio", fsync=True)
    try:
        good, bad = make_ct(seed=1), make_ct(seed=2)
        assert pynetdicom_store(running.port, [good]) == [0]
        info = running.portal.run(running.store.head(object_key(good.SOPInstanceUID)))
        assert info is not None and info.sha256 == hashlib.sha256(running.object_bytes(good.SOPInstanceUID)).hexdigest()

        def failing_fsync(path: Path) -> None:
            raise OSError(5, "Input/output error")

        monkeypatch.setattr(asyncio_receiver, "_fsync", failing_fsync)
        assert pynetdicom_store(running.port, [bad]) == [0xA700]
        assert running.portal.run(running.store.head(object_key(bad.SOPInstanceUID))) is None
        assert running.queued() == 1
        assert not list((tmp_path / "spool").rglob("*.dcm"))
    finally:
        _stop(running, engines)


def test_c_echo_with_a_dataset_leaves_no_spool_file(receiver: Running, tmp_path: Path) -> None:
    with socket.create_connection(("127.0.0.1", receiver.port), timeout=10) as sock:
        sock.sendall(associate_rq())
        assert recv_pdu(sock)[0] == A_ASSOCIATE_AC
        sock.sendall(p_data(1, COMMAND_LAST, command(0x0030, 3, has_dataset=True)))  # C-ECHO-RQ announcing a dataset
        sock.sendall(p_data(1, DATA_LAST, bytes(10)))
        kind, body = recv_pdu(sock)
        assert kind == P_DATA_TF and struct.pack("<HHIH", 0, 0x0100, 2, 0x8030) in body and status_of(body) == 0
    assert not [p for p in (tmp_path / "spool").rglob("*") if p.is_file()]


@pytest.mark.parametrize("receiver", [{"ARCHIVE_NETWORK_TIMEOUT": "0.5"}], indirect=True)
def test_stalled_pdu_is_aborted_after_the_network_timeout(receiver: Running) -> None:
    with socket.create_connection(("127.0.0.1", receiver.port), timeout=5) as sock:
        sock.sendall(associate_rq())
        assert recv_pdu(sock)[0] == A_ASSOCIATE_AC
        sock.sendall(struct.pack(">BxI", 4, 100) + struct.pack(">IBB", 96, 1, 0) + bytes(10))  # then silence
        assert recv_pdu(sock)[0] == A_ABORT
        assert recv_pdu(sock)[0] == -1


@pytest.mark.parametrize("receiver", [{"ARCHIVE_NETWORK_TIMEOUT": "2", "ARCHIVE_MAX_ASSOCIATIONS": "1"}],
                         indirect=True)
def test_a_peer_that_sends_and_never_reads_is_dropped_after_the_network_timeout(receiver: Running) -> None:
    """Its responses back up until ours wait to be read: the association gives up after the
    network timeout instead of holding its place against the cap (here 1) for ever."""
    with socket.create_connection(("127.0.0.1", receiver.port), timeout=5) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(associate_rq())
        assert recv_pdu(sock)[0] == A_ASSOCIATE_AC
        echoes = p_data(1, COMMAND_LAST, command(0x0030, 1)) * 200  # C-ECHO-RQs; no response is read
        sock.settimeout(0.2)  # well within the network timeout: the check below comes before it
        with contextlib.suppress(TimeoutError, ConnectionError):
            while True:  # until the archive stops reading: its responses wait on us
                sock.sendall(echoes)
        assert _new_association(receiver.port) == A_ASSOCIATE_RJ  # the one place is still taken
        # ... and is given back while this peer is still connected, still not reading
        assert wait_until(lambda: _new_association(receiver.port) == A_ASSOCIATE_AC, timeout=30)


def _new_association(port: int) -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as other:
        other.sendall(associate_rq())
        return recv_pdu(other)[0]


@pytest.mark.parametrize("receiver", [{"ARCHIVE_ACSE_TIMEOUT": "0.5"}], indirect=True)
def test_a_rejected_peer_that_trickles_bytes_is_closed_within_the_artim_timeout(receiver: Running) -> None:
    """After an A-ASSOCIATE-RJ the requestor is to close; one that keeps sending a byte now and
    then is closed on all the same, ARTIM counted from the rejection, not from its last byte."""
    rq = bytearray(associate_rq())
    rq[6:8] = b"\0\0"  # protocol version 0: rejected (PS3.8 9.3.4)
    with socket.create_connection(("127.0.0.1", receiver.port), timeout=5) as sock:
        sock.sendall(bytes(rq))
        assert recv_pdu(sock)[0] == A_ASSOCIATE_RJ
        sock.settimeout(0.2)
        deadline = time.monotonic() + 60
        while True:
            try:
                sock.sendall(b"x")
                if sock.recv(100) == b"":
                    break  # closed by the archive
            except TimeoutError:  # nothing yet: another byte, 0.2 s on
                pass
            except (ConnectionResetError, BrokenPipeError):
                break
            assert time.monotonic() < deadline, "a rejected peer is kept as long as it trickles"


def test_malformed_pdv_aborts_and_unknown_command_answers_0211(receiver: Running) -> None:
    with socket.create_connection(("127.0.0.1", receiver.port), timeout=10) as sock:
        sock.sendall(associate_rq())
        assert recv_pdu(sock)[0] == A_ASSOCIATE_AC
        # C-FIND-RQ (0x0020) without a dataset on the Verification context
        sock.sendall(p_data(1, COMMAND_LAST, command(0x0020, 7)))
        kind, body = recv_pdu(sock)
        assert kind == P_DATA_TF
        assert struct.pack("<HHIH", 0, 0x0100, 2, 0x8020) in body
        assert status_of(body) == 0x0211
        # a PDV longer than its PDU
        sock.sendall(struct.pack(">BxI", 4, 10) + struct.pack(">IBB", 5000, 1, 3) + bytes(4))
        assert recv_pdu(sock)[0] == A_ABORT
        assert recv_pdu(sock)[0] == -1
    assert echoscu(receiver.port).returncode == 0


def test_stop_lets_a_store_in_progress_finish(tmp_path: Path) -> None:
    """Graceful shutdown: no new peers, but a C-STORE under way when stop() begins is answered
    Success and its association released, and stop() returns then, not at the deadline."""
    running, engines = _start(tmp_path, "asyncio")
    assert isinstance(engines, tuple)
    ds = make_ct(size=64)
    peer = RawAssociation(running.port, [(str(ds.SOPClassUID), ExplicitVRLittleEndian)])
    try:
        assert peer.associate() == A_ASSOCIATE_AC
        peer.begin_store(ds)
        stopping = asyncio.run_coroutine_threadsafe(engines[0].stop(drain_seconds=60), running.portal.loop)
        wait_until(lambda: _refused(running.port), timeout=10)
        assert not stopping.done()  # draining: waits for the association in progress
        assert peer.finish_store() == 0
        assert peer.release() == A_RELEASE_RP
        stopping.result(timeout=10)
        assert running.queued() == 1
        assert pydicom.dcmread(pydicom.filebase.DicomBytesIO(running.object_bytes(ds.SOPInstanceUID))).PixelData == ds.PixelData
    finally:
        peer.close()
        _stop(running, engines)


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def test_stop_drains_then_aborts_and_refuses_new_peers(tmp_path: Path) -> None:
    running, engines = _start(tmp_path, "asyncio")
    assert isinstance(engines, tuple)
    scp = engines[0]
    ae = AE(ae_title="HOLDER")
    ae.add_requested_context(Verification)
    held = ae.associate("127.0.0.1", running.port, ae_title="ARCHIVE")
    assert held.is_established
    try:
        running.portal.run(scp.stop(drain_seconds=0.3), timeout=10)
        wait_until(lambda: held.is_aborted, timeout=5)  # the straggler got an A-ABORT after the deadline
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", running.port), timeout=2).close()
    finally:
        _stop(running, engines)
