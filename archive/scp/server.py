"""The C-STORE SCP: one pynetdicom AE, TCP_NODELAY, optional SO_REUSEPORT."""

from __future__ import annotations

import logging
import socket
import tempfile
import threading
import time
from typing import Any

from pydicom.uid import AllTransferSyntaxes
from pynetdicom import AE, _config, evt
from pynetdicom.presentation import AllStoragePresentationContexts, build_context
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from archive.ingest.service import IngestService
from archive.scp import handlers
from archive.scp.access import AccessPolicy
from archive.scp.portal import Portal
from archive.scp.spool import process_spool
from archive.settings import Settings

log = logging.getLogger(__name__)

# Receive datasets into a spool file instead of memory (multi-GB instances).
_config.STORE_RECV_CHUNKED_DATASET = True
# Our handlers log; pynetdicom's own INFO logs are not needed (and never PHI).
logging.getLogger("pynetdicom").setLevel(logging.WARNING)


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


def storage_contexts() -> list[Any]:
    """Every storage SOP class pynetdicom knows, in every transfer syntax pydicom knows."""
    syntaxes = [str(ts) for ts in AllTransferSyntaxes]
    contexts = [
        build_context(str(cx.abstract_syntax), syntaxes) for cx in AllStoragePresentationContexts
    ]
    contexts.append(build_context(Verification, syntaxes))
    return contexts


class StoreSCP:
    """A running C-STORE SCP bound to settings and the ingest service."""

    def __init__(self, settings: Settings, ingest: IngestService, portal: Portal) -> None:
        self.settings = settings
        self.ingest = ingest
        self.portal = portal
        self.ae = AE(ae_title=settings.aet)
        self.ae.supported_contexts = storage_contexts()
        self.ae.maximum_associations = settings.max_associations
        self.ae.maximum_pdu_size = settings.max_pdu
        self.ae.network_timeout = settings.network_timeout
        self.ae.acse_timeout = settings.acse_timeout
        self.ae.dimse_timeout = settings.dimse_timeout
        self.server: ThreadedAssociationServer | None = None

    def start(self, port: int | None = None, reuse_port: bool = False) -> int:
        # pynetdicom spools each received dataset to a temporary file: keep the
        # spool beside the data, not on a small /tmp.
        tempfile.tempdir = str(process_spool(self.settings.data_dir))
        policy = AccessPolicy(self.settings.allowed_aets, self.settings.allowed_networks)
        server_class = type("Server", (ArchiveAssociationServer,), {"reuse_port": reuse_port})
        handlers_: list[Any] = [
            (evt.EVT_C_STORE, handlers.handle_store, [self.ingest, self.portal, self.settings.store_timeout]),
            (evt.EVT_REQUESTED, handlers.handle_requested, [policy]),
            (evt.EVT_CONN_OPEN, handlers.handle_open),
            (evt.EVT_CONN_CLOSE, handlers.handle_close),
        ]
        # AE.start_server() takes no server_class (pynetdicom 3.0); do what its
        # non-blocking branch does with our class.
        server = self.ae.make_server(
            (self.settings.bind, self.settings.dicom_port if port is None else port),
            evt_handlers=handlers_,
            server_class=server_class,
        )
        threading.Thread(target=server.serve_forever, name="dicom-acceptor", daemon=True).start()
        self.ae._servers.append(server)  # so AE.shutdown() stops it too
        self.server = server
        bound = int(self.server.server_address[1])
        log.info("DICOM SCP listening", extra={"aet": self.settings.aet, "port": bound})
        return bound

    def stop(self, drain_seconds: float = 30.0) -> None:
        """Stop accepting, let running associations finish (up to a deadline), close."""
        if self.server is None:
            return
        self.server.shutdown()  # stops accepting and closes the listening socket
        deadline = time.monotonic() + drain_seconds
        while self.ae.active_associations and time.monotonic() < deadline:
            time.sleep(0.05)
        for assoc in self.ae.active_associations:
            assoc.abort()
        self.server = None
