"""Receiver behaviour at the socket and association level."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from archive.runtime import DRAIN_SECONDS
from tests.e2e.harness import connection_owner, http_json, listening, process_tree, serve, verify, wait_until
from tests.e2e.raw_dimse import A_ASSOCIATE_AC, A_RELEASE_RP, RawAssociation
from tests.e2e.senders import rejection_of
from tests.factories import make_ct, new_uid


# TCP_NODELAY on accepted sockets is tested for both engines in test_asyncio_engine.py.


@pytest.mark.parametrize("engine", ["pynetdicom", "asyncio"])
def test_association_cap_rejects_with_local_limit(tmp_path: Path, engine: str) -> None:
    proc = serve(tmp_path, ARCHIVE_MAX_ASSOCIATIONS="1", ARCHIVE_SCP_ENGINE=engine).start()
    try:
        ae = AE(ae_title="HOLDER")
        ae.add_requested_context(Verification)
        first = ae.associate("127.0.0.1", proc.dicom_port, ae_title="ARCHIVE")
        assert first.is_established
        second = AE(ae_title="SECOND")
        second.add_requested_context(Verification)
        other = second.associate("127.0.0.1", proc.dicom_port, ae_title="ARCHIVE")
        primitive = rejection_of(other)
        assert primitive is not None, f"aborted={other.is_aborted}\n{proc.log_tail(30)}"
        assert (primitive.result, primitive.result_source, primitive.diagnostic) == (0x02, 0x03, 0x02)
        first.release()
    finally:
        proc.stop()


# Associations held at once: all of them land in the same one of two processes 1 time in 2^(HELD - 1).
HELD = 24


@pytest.mark.parametrize("engine", ["asyncio", "pynetdicom"])
def test_workers_share_the_port(tmp_path: Path, engine: str) -> None:
    """Two processes serve one port: associations held open at once, each with a C-STORE
    half-sent, land in both (the kernel spreads connections over SO_REUSEPORT listeners)."""
    proc = serve(tmp_path, ARCHIVE_WORKERS="2", ARCHIVE_SCP_ENGINE=engine).start()
    try:
        # readiness covers the parent only: wait for the worker's listener too
        wait_until(lambda: proc.log_tail(2000).count('"msg": "DICOM listening"') == 2)
        serving = process_tree(proc.proc.pid)
        study = new_uid()
        datasets = [make_ct(study_uid=study, seed=n, size=16) for n in range(HELD)]
        peers = [RawAssociation(proc.dicom_port, [(str(ds.SOPClassUID), ExplicitVRLittleEndian)]) for ds in datasets]
        try:
            for peer, ds in zip(peers, datasets):
                assert peer.associate() == A_ASSOCIATE_AC
                peer.begin_store(ds)
            owners = [connection_owner(proc.dicom_port, peer.local_port, serving) for peer in peers]
            assert None not in owners and len(set(owners)) == 2, owners
            assert [peer.finish_store() for peer in peers] == [0] * HELD
            assert [peer.release() for peer in peers] == [A_RELEASE_RP] * HELD
        finally:
            for peer in peers:
                peer.close()
        wait_until(lambda: len(http_json(f"{proc.http}/dicom-web/studies/{study}/instances")[1] or []) == HELD)
        code, report = verify(proc.env)
        assert code == 0, report
    finally:
        assert proc.stop() == 0



@pytest.mark.parametrize("engine", ["asyncio", "pynetdicom"])
def test_sigterm_lets_a_store_in_progress_finish(tmp_path: Path, engine: str) -> None:
    """Graceful shutdown: at SIGTERM the port closes, but a C-STORE under way is answered Success
    and its association released; the process then exits at once, not at the drain deadline."""
    proc = serve(tmp_path, ARCHIVE_SCP_ENGINE=engine).start()
    ds = make_ct(size=16)
    peer = RawAssociation(proc.dicom_port, [(str(ds.SOPClassUID), ExplicitVRLittleEndian)])
    try:
        assert peer.associate() == A_ASSOCIATE_AC
        peer.begin_store(ds)
        assert proc.proc is not None
        proc.proc.send_signal(signal.SIGTERM)
        wait_until(lambda: not listening(proc.dicom_port))
        assert proc.proc.poll() is None  # draining
        assert peer.finish_store() == 0
        assert peer.release() == A_RELEASE_RP
        assert proc.proc.wait(timeout=DRAIN_SECONDS - 10) == 0
    finally:
        peer.close()
        proc.kill9()  # when something above failed
    proc.start()  # what was answered Success is in the archive
    try:
        wait_until(lambda: http_json(f"{proc.http}/dicom-web/instances?SOPInstanceUID={ds.SOPInstanceUID}")[1])
    finally:
        assert proc.stop() == 0
