"""An asyncio C-ECHO / C-STORE acceptor: one task per association, no polling.

Dataset fragments go straight from the socket into a spool file, after the File
Meta the stored object will have (built from the command's UIDs), so the spool file
can become the object without a copy. A hashing thread digests the fragments as they
arrive; once the last one is in, the spool file is fsynced on one worker thread while
the ingest service prepares it (parse, check) on another, and the commit runs on the
event loop; the response is a pre-encoded command set. The acceptor peeks at each
A-ASSOCIATE-RQ (MSG_PEEK, nothing consumed): an association that asks for other
services is handed, socket and all, to a pynetdicom server (``handover``). PS3.8 for
the Upper Layer, PS3.7 for DIMSE.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import hashlib
import logging
import os
import select
import socket
import tempfile
import time
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from pydicom.uid import AllTransferSyntaxes
from pynetdicom.presentation import AllStoragePresentationContexts

from archive import metrics
from archive.core.errors import BackendUnavailable
from archive.core.uids import uid_problem
from archive.ingest.describe import file_meta_bytes
from archive.ingest.service import IngestService, Received, Spooled
from archive.scp.spool import process_spool
from archive.scp.access import AccessPolicy, Rejection
from archive.scp.fast import pdu
from archive.scp.status import OUTCOME_STATUS, SUCCESS, Status, status_for_error
from archive.settings import Settings

log = logging.getLogger(__name__)

VERIFICATION = "1.2.840.10008.1.1"
SUPPORTED_ABSTRACT = frozenset({str(cx.abstract_syntax) for cx in AllStoragePresentationContexts} | {VERIFICATION})
SUPPORTED_TRANSFER = frozenset(str(ts) for ts in AllTransferSyntaxes)
UNRECOGNIZED_OPERATION = Status(0x0211, "unrecognized_operation", "Only C-ECHO and C-STORE are served here")
# PS3.8 9.3.4: rejected-transient, service-provider (presentation), local limit exceeded
BUSY = Rejection(0x02, 0x03, 0x02, "too many associations")
CALLED_AE_UNKNOWN = Rejection(0x01, 0x01, 0x07, "called AE title not recognized")
CHUNK = 1 << 20
HASH_BACKLOG = 4 << 20  # per association
_POLLRDHUP = getattr(select, "POLLRDHUP", 0x2000)  # Linux: the peer closed its writing side
ARTIM_CAP = 30.0  # the peek's timeout when ARCHIVE_ACSE_TIMEOUT is 0 (no timeout elsewhere)


class Handover(Protocol):
    """The server that takes associations asking for services this engine does not serve."""

    def take(self, connection: socket.socket, peer: Any) -> None:
        """Serve ``connection``, whose A-ASSOCIATE-RQ is still unread in the socket."""

    def active(self) -> int:
        """Associations it is serving now (they count against the same cap)."""


class _Closed(Exception):
    """The association is over (released, aborted or the peer went away)."""


class Association:
    """One association's state machine (PS3.8 9.2, Sta6 onwards)."""

    def __init__(self, scp: "FastStoreSCP", reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.scp = scp
        self.reader = reader
        self.writer = writer
        peer = writer.get_extra_info("peername")
        self.address = str(peer[0]) if peer else ""
        self.calling_aet = ""
        self.peer_max = 0
        self.contexts: dict[int, tuple[str, str]] = {}  # id -> (abstract, transfer syntax)
        self.message = _Message()
        self.established = False
        self._idle: asyncio.Timeout | None = None  # the network timeout of the PDU being read

    async def _read(self, n: int) -> bytes:
        try:
            return await self.reader.readexactly(n)
        except asyncio.IncompleteReadError:
            raise _Closed("peer closed the connection") from None

    async def _pdu_header(self, timeout: float) -> tuple[int, int]:
        async with asyncio.timeout(timeout or None):
            return pdu.pdu_header(await self._read(6))

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def run(self) -> None:
        try:
            if await self._associate():
                await self._serve()
        except pdu.ProtocolError as exc:
            log.warning("association aborted: %s", exc, extra={"calling_aet": self.calling_aet, "peer": self.address})
            with contextlib.suppress(Exception):
                await self.send(pdu.abort(2, exc.reason))
        except TimeoutError:
            log.info("association timed out", extra={"calling_aet": self.calling_aet, "peer": self.address})
            if self.established:  # Sta6: A-ABORT; ARTIM in Sta2 just closes (PS3.8 9.2, AA-2)
                with contextlib.suppress(Exception):
                    self.writer.write(pdu.abort(2, pdu.ABORT_NOT_SPECIFIED))
        except (_Closed, ConnectionError, OSError) as exc:
            log.info("association ended: %s", type(exc).__name__, extra={"calling_aet": self.calling_aet})
        except asyncio.CancelledError:  # stop() after the drain deadline
            with contextlib.suppress(Exception):
                self.writer.write(pdu.abort(2, pdu.ABORT_NOT_SPECIFIED))
            raise
        finally:
            self.message.discard()
            self.writer.close()
            try:
                await asyncio.wait_for(self.writer.wait_closed(), 5.0)
            except Exception:  # a peer that never reads does not keep the task alive
                self.writer.transport.abort()

    async def _associate(self) -> bool:
        """A-ASSOCIATE-RQ -> AC or RJ, within the ARTIM timeout (PS3.8 9.1.5)."""
        kind, length = await self._pdu_header(self.scp.settings.acse_timeout)
        if kind != pdu.A_ASSOCIATE_RQ:
            raise pdu.ProtocolError(f"expected A-ASSOCIATE-RQ, got PDU 0x{kind:02X}", pdu.ABORT_UNEXPECTED_PDU)
        if length > pdu.MAX_ASSOCIATE_RQ:
            raise pdu.ProtocolError(f"A-ASSOCIATE-RQ of {length} bytes")
        async with asyncio.timeout(self.scp.settings.acse_timeout or None):
            rq = pdu.parse_associate_rq(await self._read(length))
        self.calling_aet = rq.calling_aet
        rejection = self._rejection(rq)
        if rejection is not None:
            metrics.ASSOCIATIONS.labels("rejected").inc()
            log.warning("association rejected", extra={"calling_aet": rq.calling_aet, "peer": self.address,
                                                       "reason": rejection.why})
            await self.send(pdu.associate_rj(rejection.result, rejection.source, rejection.reason))
            await self._await_peer_close()
            return False
        results = []
        for cx in rq.contexts:
            if cx.abstract_syntax not in SUPPORTED_ABSTRACT:
                results.append((cx.context_id, pdu.ABSTRACT_SYNTAX_NOT_SUPPORTED, ""))
                continue
            syntax = next((ts for ts in cx.transfer_syntaxes if ts in SUPPORTED_TRANSFER), None)
            if syntax is None:
                results.append((cx.context_id, pdu.TRANSFER_SYNTAXES_NOT_SUPPORTED, ""))
                continue
            results.append((cx.context_id, pdu.CONTEXT_ACCEPTED, syntax))
            self.contexts[cx.context_id] = (cx.abstract_syntax, syntax)
        self.peer_max = rq.max_length
        metrics.ASSOCIATIONS.labels("accepted").inc()
        await self.send(pdu.associate_ac(rq, results, self.scp.settings.max_pdu))
        self.established = True
        return True

    async def _await_peer_close(self) -> None:
        """Sta13 after A-ASSOCIATE-RJ: the requestor closes the connection; ARTIM bounds the wait (PS3.8 9.2).

        Closing first can reset the connection before the requestor has read the rejection.
        """
        with contextlib.suppress(Exception):
            async with asyncio.timeout(min(self.scp.settings.acse_timeout or 5.0, 5.0)):
                while await self.reader.read(4096):
                    pass

    def _rejection(self, rq: pdu.AssociateRQ) -> Rejection | None:
        if not rq.protocol_version & 0x0001:  # PS3.8 9.3.4: protocol version not supported
            return Rejection(0x01, 0x02, 0x02, "protocol version not supported")
        if rq.application_context != pdu.APPLICATION_CONTEXT:
            return Rejection(0x01, 0x01, 0x02, "application context name not supported")
        if self.scp.check_called_aet and rq.called_aet != self.scp.settings.aet:
            return CALLED_AE_UNKNOWN
        rejection = self.scp.policy.check(rq.calling_aet, self.address)
        if rejection is not None:
            return rejection
        if self.scp.load() > self.scp.settings.max_associations:
            return BUSY
        return None

    async def _serve(self) -> None:
        """P-DATA-TF, A-RELEASE-RQ and A-ABORT until the association ends."""
        max_pdu = self.scp.settings.max_pdu
        cap = max_pdu + 6 if max_pdu else 0  # peers must respect our Maximum Length (PS3.8 D.1)
        message = self.message
        while True:
            kind, length = await self._pdu_header(self.scp.settings.network_timeout)
            if kind == pdu.P_DATA_TF:
                if cap and length > cap:
                    raise pdu.ProtocolError(f"P-DATA-TF of {length} bytes exceeds our maximum {max_pdu}")
                async with asyncio.timeout(self.scp.settings.network_timeout or None) as self._idle:
                    await self._p_data(length, message)
            elif kind == pdu.A_RELEASE_RQ:
                message.discard()
                await self._read(min(length, 4))
                await self.send(pdu.release_rp())
                return
            elif kind == pdu.A_ABORT:
                message.discard()
                raise _Closed("peer aborted")
            else:
                message.discard()
                reason = pdu.ABORT_UNEXPECTED_PDU if kind <= pdu.A_ABORT else pdu.ABORT_UNRECOGNIZED_PDU
                raise pdu.ProtocolError(f"unexpected PDU 0x{kind:02X}", reason)

    async def _p_data(self, length: int, message: "_Message") -> None:
        """Walk the PDVs of one P-DATA-TF without holding more than a chunk (PS3.8 9.3.5)."""
        remaining = length
        while remaining:
            if remaining < 6:
                raise pdu.ProtocolError("P-DATA-TF with a truncated PDV")
            item_length, context_id, control = pdu.pdv_header(await self._read(6))
            if item_length < 2 or item_length + 4 > remaining:
                raise pdu.ProtocolError("PDV length inconsistent with its PDU")
            remaining -= item_length + 4
            size = item_length - 2
            if context_id not in self.contexts:
                raise pdu.ProtocolError(f"PDV on presentation context {context_id}, not accepted")
            is_command, last = bool(control & 0x01), bool(control & 0x02)
            if is_command:
                if message.spool is not None or message.expect_dataset:
                    raise pdu.ProtocolError("command fragment while a dataset was expected")
                if message.command and context_id != message.context_id:
                    raise pdu.ProtocolError("command fragments on different presentation contexts")
                if len(message.command) + size > pdu.MAX_COMMAND:
                    raise pdu.ProtocolError("command set too large")
                message.context_id = context_id
                message.command += await self._read(size)
                if last:
                    message.parsed = pdu.decode_command(bytes(message.command))
                    if message.parsed.has_dataset:
                        message.expect_dataset = True
                        message.open(self.scp.spool, _stored_header(message.parsed, self.contexts[context_id][1]),
                                     self.scp.hasher)
                    else:
                        await self._dispatch(message)
            else:
                if not message.expect_dataset or context_id != message.context_id:
                    raise pdu.ProtocolError("dataset fragment without its command")
                await self._copy(size, message)
                if last:
                    await self._dispatch(message)

    async def _copy(self, size: int, message: "_Message") -> None:
        sink = message.spool
        while size:
            chunk = await self.reader.read(min(size, CHUNK))
            if not chunk:
                raise _Closed("peer closed the connection")
            if sink is not None:
                await message.write(chunk)
            size -= len(chunk)
            if self._idle is not None and self._idle.when() is not None:
                # the timeout is for silence, not for the whole of a large PDU
                self._idle.reschedule(asyncio.get_running_loop().time() + self.scp.settings.network_timeout)

    async def _dispatch(self, message: "_Message") -> None:
        command = message.parsed
        assert command is not None
        context_id = message.context_id
        abstract, syntax = self.contexts[context_id]
        if command.field == pdu.C_ECHO_RQ:  # PS3.7 9.3.5
            message.discard()  # a dataset it should not have had
            status = SUCCESS
            response = pdu.C_ECHO_RSP
        elif command.field == pdu.C_STORE_RQ:  # PS3.7 9.3.1
            if message.spool is None:
                raise pdu.ProtocolError("C-STORE-RQ without a dataset", pdu.ABORT_UNEXPECTED_PARAMETER)
            spooled = await message.spooled()
            path = message.close()
            try:
                status = await self.scp.store(path, syntax, self.calling_aet, command, spooled)
            finally:
                with contextlib.suppress(OSError):
                    os.unlink(path)
            response = pdu.C_STORE_RSP
        else:  # PS3.7 C: 0x0211 unrecognized operation
            message.discard()
            status, response = UNRECOGNIZED_OPERATION, command.field | 0x8000
        message.reset()
        rsp = pdu.encode_response(response, command.message_id, command.sop_class_uid or abstract,
                                  command.sop_instance_uid, status.code, status.comment)
        await self.send(pdu.p_data(context_id, rsp, self.peer_max))



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


async def _peek_associate_rq(conn: socket.socket, timeout: float) -> pdu.AssociateRQ | None:
    """The A-ASSOCIATE-RQ waiting in ``conn``, read with MSG_PEEK so that it stays there for
    whichever server takes the connection; None if the first PDU is something else."""
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(timeout or None):
        readable: asyncio.Future[None] = loop.create_future()

        def ready() -> None:
            if not readable.done():
                readable.set_result(None)

        loop.add_reader(conn.fileno(), ready)
        try:
            await readable
        finally:
            loop.remove_reader(conn.fileno())
        pause = 0.002
        while True:  # the request is almost always in the first segment; else look again shortly
            data = conn.recv(pdu.MAX_ASSOCIATE_RQ + 6, socket.MSG_PEEK)
            if not data:
                return None  # closed
            if len(data) >= 6:
                kind, length = pdu.pdu_header(data[:6])
                if kind != pdu.A_ASSOCIATE_RQ or length > pdu.MAX_ASSOCIATE_RQ:
                    return None
                if len(data) >= 6 + length:
                    return pdu.parse_associate_rq(data[6:6 + length])
            if _peer_closed(conn):
                return None  # a request that will never be complete: the association reports it
            await asyncio.sleep(pause)  # a slow or stalled requestor: look less and less often
            pause = min(pause * 2, 0.1)


def _peer_closed(conn: socket.socket) -> bool:
    """Has the peer shut down its side? (MSG_PEEK keeps returning the buffered bytes after it.)"""
    poller = select.poll()
    poller.register(conn, _POLLRDHUP | select.POLLHUP | select.POLLERR)
    return any(events & (_POLLRDHUP | select.POLLHUP | select.POLLERR) for _, events in poller.poll(0))


def _fsync(path: Path) -> None:
    """Flush a spool file ahead of the store's own fsync (which then finds little to do)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _stored_header(command: pdu.Command, syntax: str) -> bytes:
    """The File Meta a C-STORE's object will start with, if the command's UIDs can make one."""
    if command.field != pdu.C_STORE_RQ or uid_problem(command.sop_class_uid) or uid_problem(command.sop_instance_uid):
        return b""  # prepare() refuses the instance or rebuilds the header from the dataset
    return file_meta_bytes(command.sop_class_uid, command.sop_instance_uid, syntax)


class _Message:
    """The DIMSE message being received: command bytes, then a spool file."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.context_id = 0
        self.command = bytearray()
        self.parsed: pdu.Command | None = None
        self.expect_dataset = False
        self.spool: BinaryIO | None = None
        self.path: Path | None = None
        self.header = b""
        self.digest: hashlib._Hash | None = None
        self.size = 0
        self._hasher: concurrent.futures.Executor | None = None  # set with a header
        self._hashing: collections.deque[tuple[concurrent.futures.Future[None], int]] = collections.deque()
        self._backlog = 0  # bytes handed to the hasher and not digested yet

    def open(self, directory: Path, header: bytes, hasher: concurrent.futures.Executor) -> None:
        """Start the spool file; with a header, hash it all on ``hasher`` (one thread: in order)."""
        fd, name = tempfile.mkstemp(prefix="fast-", suffix=".dcm", dir=directory)
        self.spool, self.path = os.fdopen(fd, "wb"), Path(name)
        self.header = header
        if header:
            self.spool.write(header)
            self.digest, self.size, self._hasher = hashlib.sha256(header), len(header), hasher

    async def write(self, chunk: bytes) -> None:
        assert self.spool is not None
        self.spool.write(chunk)
        if self.digest is None or self._hasher is None:
            return
        self.size += len(chunk)
        self._hashing.append((self._hasher.submit(self.digest.update, chunk), len(chunk)))
        self._backlog += len(chunk)
        while self._backlog > HASH_BACKLOG:  # a large instance never waits in memory for the hasher
            future, size = self._hashing.popleft()
            self._backlog -= size
            await asyncio.wrap_future(future)

    async def spooled(self) -> Spooled | None:
        """The spool file as the object it will become, once every fragment is hashed."""
        if self.digest is None:
            return None
        while self._hashing:
            await asyncio.wrap_future(self._hashing.popleft()[0])
        self._backlog = 0
        return Spooled(self.header, self.size, self.digest.hexdigest())

    def close(self) -> Path:
        assert self.spool is not None and self.path is not None
        self.spool.close()
        return self.path

    def discard(self) -> None:
        if self.spool is not None and self.path is not None:
            self.spool.close()
            with contextlib.suppress(OSError):
                os.unlink(self.path)
        self.spool = None
        self.path = None


class FastStoreSCP:
    """C-ECHO and C-STORE acceptor on asyncio streams."""

    def __init__(self, settings: Settings, ingest: IngestService, loop: asyncio.AbstractEventLoop | None = None,
                 *, check_called_aet: bool = False, handover: Handover | None = None) -> None:
        self.settings = settings
        self.ingest = ingest
        self.loop = loop
        self.check_called_aet = check_called_aet
        self.handover = handover  # without it, an association with other services gets those contexts refused
        self.policy = AccessPolicy(settings.allowed_aets, settings.allowed_networks)
        self.spool = settings.data_dir / "spool"  # replaced by this process's own in start()
        self.active = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._listener: socket.socket | None = None
        self._acceptor: asyncio.Task[None] | None = None
        # one thread, so each message's fragments are digested in the order they came (and
        # off the event loop: hashing 0.5 MB takes ~0.3 ms, while the next fragments arrive)
        self.hasher = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="fast-scp-hash")
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=max(2, min(16, settings.max_associations)), thread_name_prefix="fast-scp-prepare")

    async def start(self, host: str | None = None, port: int | None = None, *, reuse_port: bool = False) -> int:
        self.spool = process_spool(self.settings.data_dir)
        self.loop = self.loop or asyncio.get_running_loop()
        self._listener = _listen(host or self.settings.bind, self.settings.dicom_port if port is None else port,
                                 reuse_port)
        self._acceptor = asyncio.create_task(self._accept_loop(self._listener), name="dicom-acceptor")
        bound = int(self._listener.getsockname()[1])
        log.info("DICOM listening", extra={"aet": self.settings.aet, "port": bound, "role": "scp", "engine": "asyncio"})
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
                    request = await _peek_associate_rq(conn, self.settings.acse_timeout or ARTIM_CAP)
                except TimeoutError:  # ARTIM expired before a request came (PS3.8 9.1.5): close
                    log.info("association timed out", extra={"peer": str(address[0])})
                    with contextlib.suppress(OSError):
                        conn.recv(pdu.MAX_ASSOCIATE_RQ + 6)  # read what came, so closing is not a reset
                    return
                except Exception:  # the association below reports what is wrong with it
                    request = None
                others = request is not None and any(cx.abstract_syntax not in SUPPORTED_ABSTRACT
                                                     for cx in request.contexts)
                # over the cap, the association below answers A-ASSOCIATE-RJ (BUSY)
                if others and self.load() <= self.settings.max_associations:
                    conn.setblocking(True)
                    owned = False
                    try:
                        self.handover.take(conn, address)  # it reads the request itself
                    except Exception:
                        log.exception("could not hand the association over")
                        conn.close()
                    return
            reader, writer = await asyncio.open_connection(sock=conn, limit=CHUNK)
            owned = False  # the stream closes it
            await self._accept(reader, writer)
        except OSError:
            pass
        finally:
            self.active -= 1
            if owned:
                conn.close()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        metrics.ACTIVE_ASSOCIATIONS.inc()
        try:
            await Association(self, reader, writer).run()
        except Exception:  # never let one connection take the server down
            log.exception("association failed")
        finally:
            metrics.ACTIVE_ASSOCIATIONS.dec()

    async def store(self, path: Path, syntax: str, calling_aet: str, command: pdu.Command,
                    spooled: Spooled | None = None) -> Status:
        """Spooled dataset -> object store + queue -> status (as handlers.handle_store)."""
        started = time.perf_counter()
        try:
            received = Received(path, syntax, calling_aet, command.sop_class_uid or None,
                                command.sop_instance_uid or None, spooled)
            loop = asyncio.get_running_loop()
            # the store will fsync the spool file it links: start that now, beside prepare
            early = loop.run_in_executor(self._pool, _fsync, path) if spooled and self.ingest.store.syncs_adoptable else None
            failed: BaseException | None = None
            try:
                prepared = await loop.run_in_executor(self._pool, self.ingest.prepare, received)
            finally:
                if early is not None:
                    await asyncio.wait([early])
                    failed = early.exception()
            if failed is not None:  # Linux reports a writeback error to one fsync only: this one
                raise BackendUnavailable("object store", f"spool file not durable: {failed}") from failed
            async with asyncio.timeout(self.settings.store_timeout or None):
                result = await self.ingest.commit(prepared)
            status = OUTCOME_STATUS[result.outcome]
        except Exception as exc:
            status = status_for_error(exc)
            level = logging.ERROR if status.label == "internal_error" else logging.WARNING
            log.log(level, "C-STORE failed", exc_info=status.label == "internal_error",
                    extra={"calling_aet": calling_aet, "sop_instance_uid": command.sop_instance_uid[:64],
                           "status": f"0x{status.code:04X}", "reason": str(exc)[:200]})
        metrics.STORES.labels(status.label).inc()
        metrics.STORE_SECONDS.observe(time.perf_counter() - started)
        return status

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
        self.hasher.shutdown(wait=False)
