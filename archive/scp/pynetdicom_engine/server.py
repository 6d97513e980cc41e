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
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pynetdicom import AE, evt
from pynetdicom.transport import ThreadedAssociationServer

from archive.compat import pynetdicom as pynetdicom_compat
from archive.core.audit import AuditTrail, NoAudit
from archive.ingest.service import IngestService
from archive.scp.access import AccessPolicy
from archive.scp.portal import Portal
from archive.scp.pynetdicom_engine import handlers
from archive.scp.pynetdicom_engine.contexts import merge_contexts, storage_contexts
from archive.scp.spool import process_spool
from archive.scp.store import prepare_in, prepare_pool, store
from archive.settings import Settings

log = logging.getLogger(__name__)


class ArchiveAssociationServer(ThreadedAssociationServer):
    """Sets TCP_NODELAY on accepted sockets and SO_REUSEPORT on the listener."""

    reuse_port = False
    daemon_threads = True

    def server_bind(self) -> None:
        assert self.socket is not None
        if self.reuse_port:
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        client, address = super().get_request()
        # Without it a DCMTK sender waits ~40 ms per instance (Nagle + delayed ACK).
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return client, address


@dataclass(frozen=True)
class DimseService:
    """What one service adds to the AE: presentation contexts and event handlers."""

    contexts: tuple[Any, ...]
    handlers: tuple[tuple[Any, ...], ...]


class DicomServer:
    """One pynetdicom AE on one port answering the DIMSE services it is given."""

    def __init__(self, settings: Settings, services: Sequence[DimseService], *, role: str = "scp",
                 audit: AuditTrail | None = None, tallies: handlers.Tallies | None = None) -> None:
        self.settings = settings
        self.audit = audit or NoAudit()
        self.tallies = tallies or handlers.Tallies()  # per association: what it stored, for the audit trail
        self.services = list(services)
        self.role = role
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
        self._listening = False

    def start(self, port: int | None = None, reuse_port: bool = False, *, listen: bool = True) -> int:
        """Listen on ``port`` (default ARCHIVE_DICOM_PORT); return the bound port.

        With ``listen=False`` nothing listens: connections come through :meth:`take`
        (the asyncio receiver hands over the associations it does not serve).
        """
        # its options, its spool directory (beside the data) and the retrieve patch
        pynetdicom_compat.install(process_spool(self.settings.data_dir), self.settings.max_pdu,
                                  self.settings.network_timeout)
        policy = AccessPolicy(self.settings.allowed_aets, self.settings.allowed_networks)
        server_class = type("Server", (ArchiveAssociationServer,), {"reuse_port": reuse_port})
        handlers_: list[Any] = [
            (evt.EVT_REQUESTED, handlers.handle_requested, [policy, self.audit, self.settings.aet]),
            (evt.EVT_CONN_OPEN, handlers.handle_open),
            (evt.EVT_CONN_CLOSE, handlers.handle_close, [self.tallies, self.audit, self.settings.aet]),
        ]
        for service in self.services:
            handlers_ += service.handlers
        # AE.start_server() takes no server_class (pynetdicom 3.0); do what its
        # non-blocking branch does with our class.
        address = (self.settings.bind, self.settings.dicom_port if port is None else port)
        server = self.ae.make_server(address if listen else ("127.0.0.1", 0), evt_handlers=handlers_,
                                     server_class=server_class)
        self.server = server
        self._listening = listen
        if not listen:
            server.server_close()  # connections arrive through take()
            return 0
        threading.Thread(target=server.serve_forever, name="dicom-acceptor", daemon=True).start()
        bound = int(self.server.server_address[1])
        log.info("DICOM listening", extra={"aet": self.settings.aet, "port": bound, "role": self.role})
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
        deadline = time.monotonic() + drain_seconds
        while self.ae.active_associations and time.monotonic() < deadline:
            time.sleep(0.05)
        for assoc in self.ae.active_associations:
            assoc.abort()
        self.server = None


def store_service(settings: Settings, ingest: IngestService, portal: Portal,
                  pool: concurrent.futures.Executor, tallies: handlers.Tallies) -> DimseService:
    """C-ECHO and C-STORE of every storage SOP class into the ingest service; IngestService.prepare
    runs on ``pool``, the commit on the portal's loop (archive.scp.store)."""
    stored = functools.partial(store, ingest=ingest, prepare=prepare_in(pool, ingest), timeout=settings.store_timeout)
    return DimseService(
        contexts=tuple(storage_contexts()),
        handlers=((evt.EVT_C_STORE, handlers.handle_store, [stored, portal, tallies]),),
    )


class StoreSCP(DicomServer):
    """The receiver: C-STORE into the archive, plus whatever other services are given."""

    def __init__(self, settings: Settings, ingest: IngestService, portal: Portal,
                 services: Sequence[DimseService] = (), *, audit: AuditTrail | None = None) -> None:
        self._pool = prepare_pool(settings.max_associations, "pynetdicom")
        tallies = handlers.Tallies()
        super().__init__(settings, [store_service(settings, ingest, portal, self._pool, tallies), *services],
                         audit=audit, tallies=tallies)

    def stop(self, drain_seconds: float = 30.0) -> None:
        super().stop(drain_seconds)
        self._pool.shutdown(wait=False)
