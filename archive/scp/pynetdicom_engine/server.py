"""The pynetdicom engine: one AE on one port, TCP_NODELAY, optional SO_REUSEPORT.

Services (store, query/retrieve, commitment) bring their presentation contexts
and event handlers; `serve` answers all of them on one port and AE title. With
ARCHIVE_SCP_ENGINE=asyncio the same server listens on no port and takes the
associations the asyncio receiver hands over (:meth:`DicomServer.take`).
"""

from __future__ import annotations

import concurrent.futures
import functools
import logging
import socket
import ssl
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pynetdicom import AE, evt
from pynetdicom.transport import ThreadedAssociationServer

from archive import metrics
from archive.compat import pynetdicom as pynetdicom_compat
from archive.core.audit import AuditTrail, NoAudit
from archive.ingest.service import IngestService
from archive.scp.access import AccessPolicy, Refusal
from archive.scp.portal import Portal
from archive.scp.pynetdicom_engine import handlers
from archive.scp.pynetdicom_engine.contexts import merge_contexts, storage_contexts
from archive.scp.spool import process_spool
from archive.scp.store import prepare_in, prepare_pool, store
from archive.settings import Settings

log = logging.getLogger(__name__)


class ArchiveAssociationServer(ThreadedAssociationServer):
    """Sets TCP_NODELAY on accepted sockets and SO_REUSEPORT on the listener; on a TLS port
    the handshake runs in the association's thread, within the ACSE timeout.

    (pynetdicom's own ``get_request`` handshakes in the accepting thread, without a timeout: one
    client that connects and sends nothing would stop every other from being accepted.)
    """

    reuse_port = False
    daemon_threads = True
    handshake_timeout = 30.0
    max_handshakes = 64  # connections in their TLS handshake at once; more are closed at once
    policy: AccessPolicy | None = None  # told of failed handshakes
    _handshaking = 0
    _handshake_lock = threading.Lock()

    def server_bind(self) -> None:
        assert self.socket is not None
        if self.reuse_port:
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        assert self.socket is not None
        client, address = self.socket.accept()
        # Without it a DCMTK sender waits ~40 ms per instance (Nagle + delayed ACK).
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.ssl_context is not None:
            with self._handshake_lock:
                busy = self._handshaking >= self.max_handshakes
                if not busy:
                    self._handshaking += 1
            if busy:  # a flood of connections that never finish their handshake: one thread each, capped
                self._handshake_failed(address, "TLS: too many handshakes in progress")
                client.close()
                raise OSError("too many TLS handshakes in progress")  # socketserver skips the request
            client = self.ssl_context.wrap_socket(client, server_side=True, do_handshake_on_connect=False)
        return client, address

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        if isinstance(request, ssl.SSLSocket) and not self._handshake(request, client_address):
            self.shutdown_request(request)
            return
        super().process_request_thread(request, client_address)

    def _handshake(self, conn: ssl.SSLSocket, address: Any) -> bool:
        try:
            conn.settimeout(self.handshake_timeout or None)
            conn.do_handshake()
            conn.settimeout(None)
            return True
        except (OSError, ValueError) as exc:  # ssl.SSLError, a timeout, a reset
            self._handshake_failed(address, _handshake_failure(exc))
            return False
        finally:
            with self._handshake_lock:
                self._handshaking -= 1

    def _handshake_failed(self, address: Any, reason: str) -> None:
        peer = str(address[0]) if isinstance(address, tuple) else str(address)
        metrics.ASSOCIATIONS.labels("rejected").inc()
        log.warning("TLS handshake failed", extra={"peer": peer, "reason": reason})
        if self.policy is not None:
            self.policy.report(Refusal("tls", "", peer, reason))


def _handshake_failure(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS: client certificate: {exc.verify_message}"[:200]  # e.g. "certificate has expired"
    if isinstance(exc, ssl.SSLError):
        return f"TLS: {exc.reason or exc}"[:200]
    if isinstance(exc, TimeoutError):
        return "TLS: no handshake within the ACSE timeout"
    return f"TLS: {type(exc).__name__}"


@dataclass(frozen=True)
class DimseService:
    """What one service adds to the AE: presentation contexts, event handlers, and a check run
    before each C-FIND/C-MOVE/C-GET (:func:`archive.compat.pynetdicom.guard_requests`)."""

    contexts: tuple[Any, ...]
    handlers: tuple[tuple[Any, ...], ...]
    guard: pynetdicom_compat.RequestGuard | None = None


class DicomServer:
    """One pynetdicom AE on one port answering the DIMSE services it is given."""

    def __init__(self, settings: Settings, services: Sequence[DimseService], *, role: str = "scp",
                 access: AccessPolicy | None = None, audit: AuditTrail | None = None,
                 tallies: handlers.Tallies | None = None) -> None:
        self.settings = settings
        self.audit = audit or NoAudit()
        self.tallies = tallies or handlers.Tallies()  # per association: what it stored, for the audit trail
        self.services = list(services)
        self.role = role
        self.access = access if access is not None else AccessPolicy.from_settings(settings)
        self.ae = AE(ae_title=settings.aet)
        for context in merge_contexts(cx for service in self.services for cx in service.contexts):
            # (the supported_contexts setter would drop the roles)
            self.ae.add_supported_context(
                context.abstract_syntax, context.transfer_syntax, context.scu_role, context.scp_role
            )
        self.ae.maximum_associations = settings.max_associations
        self.ae.maximum_pdu_size = settings.max_pdu
        self.ae.network_timeout = settings.network_timeout
        self.ae.acse_timeout = settings.acse_timeout
        self.ae.dimse_timeout = settings.dimse_timeout
        self.server: ThreadedAssociationServer | None = None
        self.tls_server: ThreadedAssociationServer | None = None
        self._listening = False

    def _handlers(self) -> list[Any]:
        handlers_: list[Any] = [
            (evt.EVT_REQUESTED, handlers.handle_requested, [self.access, self.audit, self.settings.aet]),
            (evt.EVT_CONN_OPEN, handlers.handle_open),
            (evt.EVT_CONN_CLOSE, handlers.handle_close, [self.tallies, self.audit, self.settings.aet]),
        ]
        for service in self.services:
            handlers_ += service.handlers
        return handlers_

    def _make_server(self, address: tuple[str, int], reuse_port: bool,
                     ssl_context: ssl.SSLContext | None = None) -> ThreadedAssociationServer:
        # AE.start_server() takes no server_class (pynetdicom 3.0); do what its
        # non-blocking branch does with our class.
        server_class = type("Server", (ArchiveAssociationServer,), {
            "reuse_port": reuse_port, "handshake_timeout": self.settings.acse_timeout, "policy": self.access,
            "max_handshakes": self.settings.max_associations, "_handshake_lock": threading.Lock()})
        return self.ae.make_server(address, evt_handlers=self._handlers(), server_class=server_class,
                                   ssl_context=ssl_context)

    def start(self, port: int | None = None, reuse_port: bool = False, *, listen: bool = True) -> int:
        """Listen on ``port`` (default ARCHIVE_DICOM_PORT); return the bound port.

        With ``listen=False`` nothing listens: connections come through :meth:`take`
        (the asyncio receiver hands over the associations it does not serve).
        """
        # its options, its spool directory (beside the data) and the retrieve patch
        pynetdicom_compat.install(process_spool(self.settings.data_dir), self.settings.max_pdu,
                                  self.settings.network_timeout)
        guards = [service.guard for service in self.services if service.guard is not None]
        if guards:
            pynetdicom_compat.guard_requests(self.ae, _first_refusal(guards))
        address = (self.settings.bind, self.settings.dicom_port if port is None else port)
        server = self._make_server(address if listen else ("127.0.0.1", 0), reuse_port)
        self.server = server
        self._listening = listen
        if not listen:
            server.server_close()  # connections arrive through take()
            return 0
        threading.Thread(target=server.serve_forever, name="dicom-acceptor", daemon=True).start()
        bound = int(self.server.server_address[1])
        log.info("DICOM listening", extra={"aet": self.settings.aet, "port": bound, "role": self.role})
        return bound

    def start_tls(self, port: int, context: ssl.SSLContext, reuse_port: bool = False) -> int:
        """Also serve every service over TLS on ``port`` (PS3.15 Annex B), after :meth:`start`."""
        server = self._make_server((self.settings.bind, port), reuse_port, context)
        self.tls_server = server
        threading.Thread(target=server.serve_forever, name="dicom-tls-acceptor", daemon=True).start()
        bound = int(server.server_address[1])
        log.info("DICOM TLS listening", extra={"aet": self.settings.aet, "port": bound, "role": self.role,
                                               "mutual_tls": context.verify_mode == ssl.CERT_REQUIRED})
        return bound

    def active(self) -> int:
        """Associations being served now."""
        return len(self.ae.active_associations)

    def take(self, connection: socket.socket, peer: Any) -> None:
        """Serve a connection accepted elsewhere, whose first bytes are an A-ASSOCIATE-RQ.

        ``peer`` is the requestor's address, for the access checks and the logs.
        """
        assert self.server is not None
        self.server.process_request(connection, tuple(peer))  # a thread of its own (ThreadingMixIn)

    def stop(self, drain_seconds: float = 30.0) -> None:
        """Stop accepting, let running associations finish (up to a deadline), close."""
        if self.server is None:
            return
        if self._listening:
            pynetdicom_compat.stop_listening(self.server)
        if self.tls_server is not None:
            pynetdicom_compat.stop_listening(self.tls_server)
            self.tls_server = None
        deadline = time.monotonic() + drain_seconds
        while self.ae.active_associations and time.monotonic() < deadline:
            time.sleep(0.05)
        for assoc in self.ae.active_associations:
            assoc.abort()
        self.server = None


def _first_refusal(guards: Sequence[pynetdicom_compat.RequestGuard]) -> pynetdicom_compat.RequestGuard:
    def guard(assoc: Any, request: Any) -> tuple[int, str] | None:
        return next((r for g in guards if (r := g(assoc, request)) is not None), None)
    return guard


def store_service(settings: Settings, ingest: IngestService, portal: Portal,
                  pool: concurrent.futures.Executor, access: AccessPolicy,
                  tallies: handlers.Tallies) -> DimseService:
    """C-ECHO and C-STORE of every storage SOP class into the ingest service; IngestService.prepare
    runs on ``pool``, the commit on the portal's loop (archive.scp.store)."""
    stored = functools.partial(store, ingest=ingest, prepare=prepare_in(pool, ingest), timeout=settings.store_timeout,
                               access=access)
    return DimseService(
        contexts=tuple(storage_contexts()),
        handlers=((evt.EVT_C_STORE, handlers.handle_store, [stored, portal, tallies]),),
    )


class StoreSCP(DicomServer):
    """The receiver: C-STORE into the archive, plus whatever other services are given."""

    def __init__(self, settings: Settings, ingest: IngestService, portal: Portal,
                 services: Sequence[DimseService] = (), *, access: AccessPolicy | None = None,
                 audit: AuditTrail | None = None) -> None:
        self._pool = prepare_pool(settings.max_associations, "pynetdicom")
        access = access if access is not None else AccessPolicy.from_settings(settings)
        tallies = handlers.Tallies()
        super().__init__(settings, [store_service(settings, ingest, portal, self._pool, access, tallies), *services],
                         access=access, audit=audit, tallies=tallies)

    def stop(self, drain_seconds: float = 30.0) -> None:
        super().stop(drain_seconds)
        self._pool.shutdown(wait=False)
