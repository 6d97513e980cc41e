"""The audit trail without a real collector: RFC 5424 framing, octet counting, the local file and
its rotation, the bounded buffer, and a dead collector that slows nothing."""

from __future__ import annotations

import dataclasses
import socket
import threading
import time
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from archive.audit import syslog
from archive.audit.logfile import AuditFile
from archive.audit.messages import Source
from archive.audit.trail import Trail
from archive.core.audit import Action, AuditEvent, EventKind, Outcome, StudyAccess, Subtype
from archive.core.identity import Principal, PrincipalKind
from tests.conftest import free_port

SOURCE = Source("ARCHIVE@test", "ARCHIVE", "test")
WHO = Principal(PrincipalKind.AE, "CT1", "127.0.0.1")


def _event(n: int = 0, outcome: Outcome = Outcome.SUCCESS) -> AuditEvent:
    return AuditEvent(EventKind.INSTANCES_TRANSFERRED, WHO, outcome, Action.CREATE,
                      study=StudyAccess(f"1.2.3.{n}", "PAT-1", (("1.2.840.10008.5.1.4.1.1.2", 1),)))


def _dropped(reason: str) -> float:
    return REGISTRY.get_sample_value("archive_audit_records_dropped_total", {"reason": reason}) or 0.0


def test_rfc5424_message() -> None:
    msg = syslog.message("<AuditMessage/>", msgid="InstancesTransferred", outcome=Outcome.MINOR_FAILURE,
                         at=1700000000.25, hostname="arch ive", procid=42)
    # PRI = facility 10 (authpriv) * 8 + severity 4 (warning for a minor failure)
    assert msg == (b"<84>1 2023-11-14T22:13:20.250Z archive dicom-archive 42 InstancesTransferred - "
                   b"\xef\xbb\xbf<AuditMessage/>")
    ok = syslog.message("<x/>", msgid="Query", outcome=Outcome.SUCCESS, at=0, hostname="", procid=1)
    assert ok.startswith(b"<85>1 1970-01-01T00:00:00.000Z - dicom-archive 1 Query - \xef\xbb\xbf")


def test_octet_counting_frames_by_length_in_bytes() -> None:
    msg = "é".encode() * 3
    assert syslog.octet_counted(msg) == b"6 " + msg


def test_udp_refuses_what_no_datagram_carries() -> None:
    collector = syslog.collector(f"udp://127.0.0.1:{free_port()}")
    try:
        with pytest.raises(syslog.TooLarge):
            collector.send(b"x" * (syslog.UDP_MAX + 1))
    finally:
        collector.close()


def _tcp_sink(port: int, frames: list[bytes], stop: threading.Event) -> threading.Thread:
    server = socket.create_server(("127.0.0.1", port))

    def serve() -> None:
        with server:
            server.settimeout(5)
            conn, _ = server.accept()
            data = b""
            with conn:
                conn.settimeout(0.2)
                while not stop.is_set():
                    try:
                        chunk = conn.recv(65536)
                    except socket.timeout:
                        continue
                    if not chunk:
                        break
                    data += chunk
                    while b" " in data:
                        length, _, rest = data.partition(b" ")
                        if len(rest) < int(length):
                            break
                        frames.append(rest[:int(length)])
                        data = rest[int(length):]

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


def test_records_reach_a_tcp_collector_whole_and_the_file(tmp_path: Path) -> None:
    port, frames, stop = free_port(), [], threading.Event()
    sink = _tcp_sink(port, frames, stop)
    trail = Trail(SOURCE, AuditFile(tmp_path / "audit.log", 1 << 20, 3), syslog.collector(f"tcp://127.0.0.1:{port}"))
    trail.start()
    big = AuditEvent(EventKind.INSTANCES_TRANSFERRED, WHO, study=StudyAccess(
        "1.2.3", "PAT-1", tuple((f"1.2.840.10008.5.1.4.1.1.{n}", n) for n in range(400))))
    for event in (_event(1), big, _event(2)):
        trail.record(event)
    deadline = time.monotonic() + 10
    while len(frames) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    stop.set()
    trail.close()
    sink.join(5)
    assert len(frames) == 3 and len(frames[1]) > 8192
    assert all(f.startswith(b"<85>1 ") and b"InstancesTransferred - \xef\xbb\xbf<AuditMessage>" in f for f in frames)
    lines = (tmp_path / "audit.log").read_text().splitlines()
    assert len(lines) == 3 and lines[1].encode() == frames[1].split(b"\xef\xbb\xbf", 1)[1]


def test_a_handshake_cut_short_is_tried_again_at_once_and_loses_no_record(tmp_path: Path) -> None:
    """A TLS collector that closes its first connection before the handshake (as a busy or
    restarting rsyslog does): the record goes over a second connection, nothing is dropped."""
    import ssl

    from tests.e2e.pki import CA

    ca = CA(tmp_path / "pki")
    server_id = ca.issue("localhost", hosts=("localhost", "127.0.0.1"))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(server_id.cert), str(server_id.key))
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    frames: list[bytes] = []

    def serve() -> None:
        with listener:
            listener.settimeout(10)
            first, _ = listener.accept()
            first.close()  # before the TLS handshake
            conn, _ = listener.accept()
            with context.wrap_socket(conn, server_side=True) as tls:
                tls.settimeout(10)
                data = b""
                while b" " not in data or len(data.partition(b" ")[2]) < int(data.partition(b" ")[0]):
                    chunk = tls.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                length, _, rest = data.partition(b" ")
                frames.append(rest[:int(length)])

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    before = _dropped("collector_down")
    trail = Trail(SOURCE, AuditFile(tmp_path / "audit.log", 1 << 20, 3),
                  syslog.collector(f"tls://localhost:{port}", syslog.TlsFiles(ca=ca.pem)))
    trail.start()
    trail.record(_event(7))
    thread.join(15)
    trail.close()
    assert len(frames) == 1 and b"1.2.3.7" in frames[0]
    assert _dropped("collector_down") == before


def test_a_dead_collector_costs_the_caller_nothing_and_the_file_has_every_record(tmp_path: Path) -> None:
    before = _dropped("collector_down")
    trail = Trail(SOURCE, AuditFile(tmp_path / "audit.log", 1 << 20, 3),
                  syslog.collector(f"tcp://127.0.0.1:{free_port()}"))  # nothing listens there
    trail.start()
    for n in range(200):
        trail.record(_event(n))
    trail.close()
    assert len((tmp_path / "audit.log").read_text().splitlines()) == 200
    assert _dropped("collector_down") - before == 200


def test_a_stalled_collector_never_holds_the_caller(tmp_path: Path) -> None:
    """A collector that accepts the connection and never reads: the sender's socket fills (loopback
    takes ~1.5 MB) and its send blocks (up to syslog.SEND_TIMEOUT). record() must not wait for it:
    200 records of ~20 KB return in less time than one blocked send would take (a record() that
    sent on the caller's thread takes longer; checked by hand)."""
    stalled = socket.socket()
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)  # inherited by the connection it never accepts
    stalled.bind(("127.0.0.1", 0))
    stalled.listen(1)
    try:
        trail = Trail(SOURCE, AuditFile(tmp_path / "audit.log", 1 << 26, 3),
                      syslog.collector(f"tcp://127.0.0.1:{stalled.getsockname()[1]}"), buffer=100)
        trail.start()
        started = time.perf_counter()
        for n in range(200):
            trail.record(dataclasses.replace(_event(n), detail="x" * 20_000))
        elapsed = time.perf_counter() - started
        assert elapsed < syslog.SEND_TIMEOUT, f"record() waited on the collector: {elapsed:.1f} s"
        assert len((tmp_path / "audit.log").read_text().splitlines()) == 200
        trail.close(drain_seconds=0.5)
    finally:
        stalled.close()


def test_a_full_buffer_spills_to_the_file_only(tmp_path: Path) -> None:
    before = _dropped("buffer_full")
    # never started: nothing drains the buffer of 5
    trail = Trail(SOURCE, AuditFile(tmp_path / "audit.log", 1 << 20, 3),
                  syslog.collector(f"tcp://127.0.0.1:{free_port()}"), buffer=5)
    for n in range(12):
        trail.record(_event(n))
    assert _dropped("buffer_full") - before == 7
    assert REGISTRY.get_sample_value("archive_audit_records_queued") is not None
    assert len((tmp_path / "audit.log").read_text().splitlines()) == 12
    trail.close()
    assert _dropped("shutdown") >= 5


def test_the_file_rotates_by_size_and_keeps_n(tmp_path: Path) -> None:
    path = tmp_path / "audit" / "audit.log"
    file = AuditFile(path, 1000, 2)
    for n in range(40):
        file.append(f"record {n:03d} " + "x" * 80)
    file.close()
    names = sorted(p.name for p in path.parent.iterdir() if not p.name.endswith(".lock"))
    assert names == ["audit.log", "audit.log.1", "audit.log.2"]
    assert all(p.stat().st_size <= 1000 for p in path.parent.glob("audit.log*") if not p.name.endswith(".lock"))
    last = path.read_text().splitlines()[-1]
    assert last.startswith("record 039")


def test_two_writers_share_the_file_and_its_rotation(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    a, b = AuditFile(path, 5000, 50), AuditFile(path, 5000, 50)  # as two processes would
    for n in range(300):
        (a if n % 2 else b).append(f"r{n:04d}" + "y" * 40)
    a.close()
    b.close()
    lines = [line for p in tmp_path.glob("audit.log*") if not p.name.endswith(".lock")
             for line in p.read_text().splitlines()]
    assert sorted(lines) == sorted(f"r{n:04d}" + "y" * 40 for n in range(300))


def test_record_never_raises_when_the_file_cannot_be_written(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    trail = Trail(SOURCE, AuditFile(blocker / "audit.log", 1 << 20, 3))
    trail.record(_event())  # logs and counts, does not raise
    assert (REGISTRY.get_sample_value("archive_audit_file_failures_total") or 0) >= 1


async def test_refused_http_requests_are_audited(tmp_path: Path) -> None:
    from aiohttp import web
    from aiohttp.test_utils import make_mocked_request

    from archive.web import AUDIT, audit_denied

    class Kept:
        def __init__(self) -> None:
            self.events: list[AuditEvent] = []

        def record(self, event: AuditEvent) -> None:
            self.events.append(event)

    kept = Kept()
    app = web.Application()
    app[AUDIT] = kept
    request = make_mocked_request("GET", "/dicom-web/studies", app=app)
    audit_denied(request, 401, "missing bearer token")
    audit_denied(request, 403, "reader role required", who=Principal(PrincipalKind.USER, "bob", "10.0.0.9"))
    first, second = kept.events
    assert (first.kind, first.subtype, first.who.name, first.outcome) == (
        EventKind.USER_AUTHENTICATION, Subtype.LOGIN, "anonymous", Outcome.MINOR_FAILURE)
    assert (second.kind, second.subtype, second.who.name, second.service) == (
        EventKind.SECURITY_ALERT, Subtype.USE_OF_RESTRICTED_FUNCTION, "bob", "/dicom-web/studies")
