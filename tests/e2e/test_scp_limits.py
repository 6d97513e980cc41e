"""Receiver behaviour at the socket and association level."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from archive.adapters.filesystem_store import FilesystemStore
from archive.adapters.sqlite_queue import SqliteQueue
from archive.ingest.service import IngestService
from archive.scp.portal import Portal
from archive.scp.pynetdicom_engine import StoreSCP
from archive.settings import Settings
from tests.conftest import free_port
from tests.e2e.harness import serve, verify, wait_until, http_json
from tests.e2e.senders import pynetdicom_store, rejection_of
from tests.factories import make_ct, new_uid


def test_accepted_sockets_have_tcp_nodelay(tmp_path: Path) -> None:
    settings = Settings.from_env({"ARCHIVE_DATA_DIR": str(tmp_path), "ARCHIVE_BIND": "127.0.0.1"})
    portal = Portal().start()
    store, queue = FilesystemStore(tmp_path / "objects"), SqliteQueue(tmp_path / "queue.db")
    portal.run(store.migrate())
    portal.run(queue.migrate())
    scp = StoreSCP(settings, IngestService(store, queue, settings.duplicate_policy), portal)
    port = scp.start(port=free_port())
    try:
        with socket.create_connection(("127.0.0.1", port)):
            assoc = wait_until(lambda: scp.ae.active_associations, timeout=5)[0]
            sock = assoc.dul.socket.socket
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    finally:
        scp.stop(drain_seconds=1)
        portal.run(queue.close())
        portal.run(store.close())
        portal.stop()


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


@pytest.mark.parametrize("engine", ["asyncio", "pynetdicom"])
def test_workers_share_the_port(tmp_path: Path, engine: str) -> None:
    proc = serve(tmp_path, ARCHIVE_WORKERS="2", ARCHIVE_SCP_ENGINE=engine).start()
    try:
        study = new_uid()
        statuses: list[int] = []
        lock = threading.Lock()

        def send(batch: int) -> None:
            result = pynetdicom_store(proc.dicom_port, [make_ct(study_uid=study, seed=batch * 10 + i)
                                                        for i in range(10)])
            with lock:
                statuses.extend(result)

        # Each worker process must be up before the load; readiness covers the parent only.
        time.sleep(2)
        threads = [threading.Thread(target=send, args=(n,)) for n in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert statuses == [0] * 60
        wait_until(lambda: len(http_json(f"{proc.http}/dicom-web/studies/{study}/instances")[1] or []) == 60)
        code, report = verify(proc.env)
        assert code == 0, report
    finally:
        assert proc.stop() == 0
    # more than one process served associations
    log = proc.log_tail(2000)
    assert log.count("\"msg\": \"DICOM listening\", \"aet\": \"ARCHIVE\", \"port\": ") == 2  # two processes listened
