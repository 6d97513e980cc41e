"""Associations for services this engine does not serve go, socket and all, to pynetdicom.

The receiver peeks at each A-ASSOCIATE-RQ (MSG_PEEK: nothing is consumed). If it proposes an
abstract syntax the engine does not serve (it serves Verification, and Storage and the Find
models where it was given their services), the connection is handed to a :class:`Handover`
(the pynetdicom server of `serve` or of the `query` role, which hosts C-MOVE, C-GET and
commitment), which reads the request itself. PS3.8 9.3.2 for the request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import select
import socket
from collections.abc import Callable
from typing import Any, Protocol

from archive.scp.asyncio_engine import pdu

log = logging.getLogger(__name__)

_POLLRDHUP = getattr(select, "POLLRDHUP", 0x2000)  # Linux: the peer closed its writing side
ARTIM_CAP = 30.0  # the peek's timeout when ARCHIVE_ACSE_TIMEOUT is 0 (no timeout elsewhere)


class Handover(Protocol):
    """The server that takes associations asking for services this engine does not serve."""

    def take(self, connection: socket.socket, peer: Any) -> None:
        """Serve ``connection``, whose A-ASSOCIATE-RQ is still unread in the socket."""

    def active(self) -> int:
        """Associations it is serving now (they count against the same cap)."""


async def hand_over(conn: socket.socket, address: Any, handover: Handover, *, acse_timeout: float,
                    room: Callable[[], bool], serves: frozenset[str]) -> bool:
    """Give ``conn`` to ``handover`` if its request asks for a service not in ``serves`` (abstract
    syntaxes) and ``room()`` says there is room under the association cap (over it, our own
    association answers A-ASSOCIATE-RJ). True if the connection is no longer ours (taken, or closed trying).

    Raises TimeoutError if no request came within the ARTIM timeout (PS3.8 9.1.5); the
    caller then closes the connection.
    """
    try:
        request = await peek_associate_rq(conn, acse_timeout or ARTIM_CAP)
    except TimeoutError:
        with contextlib.suppress(OSError):
            conn.recv(pdu.MAX_ASSOCIATE_RQ + 6)  # read what came, so that closing is not a reset
        raise
    except Exception:  # our association reports what is wrong with the request
        return False
    others = request is not None and any(cx.abstract_syntax not in serves for cx in request.contexts)
    if not others or not room():
        return False
    conn.setblocking(True)
    try:
        handover.take(conn, address)  # it reads the request itself
    except Exception:
        log.exception("could not hand the association over")
        conn.close()
    return True


async def peek_associate_rq(conn: socket.socket, timeout: float) -> pdu.AssociateRQ | None:
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
                try:
                    length = pdu.associate_rq_length(data[:6])
                except pdu.ProtocolError:
                    return None  # the association reports it
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
