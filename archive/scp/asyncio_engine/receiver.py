"""The asyncio receiver: the listening socket, the accept loop, the association cap, drain/stop.

It serves C-ECHO, C-STORE (given an ingest service: the `scp` role and `serve`) and C-FIND
(given a find service: the `query` role and `serve`).

One task per association, no polling (:mod:`association`). Each connection's
A-ASSOCIATE-RQ is peeked at first when a :class:`~handover.Handover` is given: one asking for
other services goes to it (:mod:`handover`). Received datasets are prepared on worker
threads while their spool file is fsynced on another; the commit runs on the event loop.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import socket
from pathlib import Path
from typing import Any

from archive import metrics
from archive.core.audit import AuditTrail, NoAudit
from archive.core.errors import BackendUnavailable
from archive.ingest.service import IngestService, Prepared, Received
from archive.scp.access import AccessPolicy
from archive.scp.asyncio_engine.association import Association, AssociationContext
from archive.scp.asyncio_engine.handover import Handover, hand_over
from archive.scp.asyncio_engine.services import FindService
from archive.scp.asyncio_engine.stream import PduStream
from archive.scp.spool import process_spool
from archive.scp.store import prepare_pool, store
from archive.settings import Settings

log = logging.getLogger(__name__)


class AsyncioReceiver:
    """C-ECHO, C-STORE and C-FIND acceptor on asyncio streams (ARCHIVE_SCP_ENGINE=asyncio)."""

    def __init__(self, settings: Settings, ingest: IngestService | None, loop: asyncio.AbstractEventLoop | None = None,
                 *, check_called_aet: bool = False, handover: Handover | None = None,
                 access: AccessPolicy | None = None, audit: AuditTrail | None = None,
                 find: FindService | None = None, role: str = "scp") -> None:
        self.settings = settings
        self.audit = audit or NoAudit()
        self.ingest = ingest  # None: no Storage contexts
        self.find = find  # None: no Find contexts
        self.role = role  # for the log
        self.loop = loop
        self.check_called_aet = check_called_aet
        self.handover = handover  # without it, an association with other services gets those contexts refused
        self.policy = access if access is not None else AccessPolicy.from_settings(settings)
        self.active = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._listener: socket.socket | None = None
        self._acceptor: asyncio.Task[None] | None = None
        self._context: AssociationContext | None = None
        self._serves: frozenset[str] = frozenset()
        self._pool = prepare_pool(settings.max_associations, "asyncio")

    async def start(self, host: str | None = None, port: int | None = None, *, reuse_port: bool = False) -> int:
        settings = self.settings
        self.loop = self.loop or asyncio.get_running_loop()
        self._context = AssociationContext(
            aet=settings.aet, check_called_aet=self.check_called_aet, policy=self.policy, load=self.load,
            max_associations=settings.max_associations, max_pdu=settings.max_pdu,
            acse_timeout=settings.acse_timeout, network_timeout=settings.network_timeout,
            spool=process_spool(settings.data_dir),
            store=None if self.ingest is None else functools.partial(
                store, ingest=self.ingest, prepare=self._prepare, timeout=settings.store_timeout, access=self.policy),
            audit=self.audit, find=self.find,
        )
        self._serves = self._context.serves()  # what is handed over is the rest
        self._listener = _listen(host or settings.bind, settings.dicom_port if port is None else port, reuse_port)
        self._acceptor = asyncio.create_task(self._accept_loop(self._listener), name="dicom-acceptor")
        bound = int(self._listener.getsockname()[1])
        log.info("DICOM listening", extra={"aet": settings.aet, "port": bound, "role": self.role, "engine": "asyncio"})
        return bound

    async def _accept_loop(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, address = await loop.sock_accept(listener)
            except OSError as exc:  # out of file descriptors and the like: do not spin
                log.warning("accept failed: %s", exc)
                await asyncio.sleep(0.1)
                continue
            try:
                # Without it a DCMTK sender waits ~40 ms per instance (Nagle + delayed ACK).
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:  # reset before we got to it
                conn.close()
                continue
            task = asyncio.create_task(self._connection(conn, address))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def load(self) -> int:
        """Connections counted against ARCHIVE_MAX_ASSOCIATIONS: ours (also those still being
        looked at) and those handed over."""
        return self.active + (self.handover.active() if self.handover is not None else 0)

    async def _connection(self, conn: socket.socket, address: Any) -> None:
        self.active += 1
        owned = True  # until a server takes the socket
        try:
            if self.handover is not None:
                try:
                    if await hand_over(conn, address, self.handover, acse_timeout=self.settings.acse_timeout,
                                       room=lambda: self.load() <= self.settings.max_associations,
                                       serves=self._serves):
                        owned = False
                        return
                except TimeoutError:  # no request within ARTIM (PS3.8 9.1.5): close
                    log.info("association timed out", extra={"peer": str(address[0])})
                    return
            _, stream = await asyncio.get_running_loop().connect_accepted_socket(PduStream, sock=conn)
            owned = False  # the stream closes it
            await self._accept(stream)
        except OSError:
            pass
        finally:
            self.active -= 1
            if owned:
                conn.close()

    async def _accept(self, stream: PduStream) -> None:
        assert self._context is not None
        metrics.ACTIVE_ASSOCIATIONS.inc()
        try:
            await Association(self._context, stream).run()
        except Exception:  # never let one connection take the server down
            log.exception("association failed")
        finally:
            metrics.ACTIVE_ASSOCIATIONS.dec()

    async def _prepare(self, received: Received) -> Prepared:
        """IngestService.prepare on a worker thread; the store will fsync the spool file it
        links, so start that now, beside prepare (it then finds little left to do)."""
        loop = asyncio.get_running_loop()
        assert self.ingest is not None  # no Storage contexts without it
        early = (loop.run_in_executor(self._pool, _fsync, received.dataset_path)
                 if received.spooled and self.ingest.store.syncs_adoptable else None)
        failed: BaseException | None = None
        try:
            prepared = await loop.run_in_executor(self._pool, self.ingest.prepare, received)
        finally:
            if early is not None:
                await asyncio.wait([early])
                failed = early.exception()
        if failed is not None:  # Linux reports a writeback error to one fsync only: this one
            raise BackendUnavailable("object store", f"spool file not durable: {failed}") from failed
        return prepared

    async def stop(self, drain_seconds: float = 30.0) -> None:
        """Stop accepting, let running associations finish (up to a deadline), abort the rest."""
        if self._acceptor is not None:
            self._acceptor.cancel()
            await asyncio.wait([self._acceptor])
            self._acceptor = None
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=drain_seconds)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=5)
        self._pool.shutdown(wait=False)


def _listen(host: str, port: int, reuse_port: bool) -> socket.socket:
    family, kind, proto, _, address = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                                         flags=socket.AI_PASSIVE)[0]
    listener = socket.socket(family, kind, proto)
    try:
        if family == socket.AF_INET6:  # as asyncio does: IPv4 peers would show as ::ffff:a.b.c.d
            listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        listener.bind(address)
        listener.listen(128)
        listener.setblocking(False)
    except BaseException:
        listener.close()
        raise
    return listener


def _fsync(path: Path) -> None:
    """Flush a spool file ahead of the store's own fsync."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
