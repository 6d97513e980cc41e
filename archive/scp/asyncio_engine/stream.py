"""An association's connection: received bytes land in one buffer that the PDU loop reads in place.

A :class:`asyncio.BufferedProtocol` instead of asyncio's streams: the event loop receives
straight into :class:`PduStream`'s buffer, and the association takes PDU headers, command
sets and dataset fragments out of it (:meth:`PduStream.take`) without waiting whenever they
are already there. A dataset fragment is handed on as a view of the buffer, written to its
spool file and digested from there: no bytes object is made of it, and nothing waits on a
future per PDU. A ``StreamReader`` copied each fragment twice more (into its buffer, out of
it) and cost two awaits per PDU.

Timeouts count silence only: a wait for bytes that are not there yet fails after ``timeout``
seconds without any (one timer an association, re-armed, not one per wait).
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

CAPACITY = 256 << 10  # the receive buffer (uvloop's own reads are 256 KiB)
MIN_FREE = 64 << 10  # less room than this at the end: move what is left to the front
# Reading pauses while this much is buffered and not taken: a wait for more than this could
# never end, so no single read may ask for more (the largest is an A-ASSOCIATE-RQ, 64 KiB + 6).
HIGH_WATER = CAPACITY - MIN_FREE


class Closed(Exception):
    """The peer closed the connection (or it was lost) while bytes were still expected."""


class PduStream(asyncio.BufferedProtocol):
    """One connection's receive buffer, its flow control and the wait for bytes."""

    def __init__(self) -> None:
        self._buffer = bytearray(CAPACITY)
        self._view = memoryview(self._buffer)
        self._start = 0  # the first byte not taken
        self._end = 0  # one past the last byte received
        self._loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._wanted = 0
        self._deadline: float | None = None  # of the wait in progress; None: no timeout
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._eof = False
        self._lost: BaseException | None = None  # why the connection was lost, once it was
        self._reading_paused = False
        self._writing_paused = False
        self._drain: asyncio.Future[None] | None = None
        self._closed: asyncio.Future[None] = self._loop.create_future()

    # asyncio.BufferedProtocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def get_buffer(self, sizehint: int) -> memoryview:
        if CAPACITY - self._end < MIN_FREE and self._start:
            left = self._end - self._start
            self._buffer[:left] = self._view[self._start:self._end]
            self._start, self._end = 0, left
        return self._view[self._end:]

    def buffer_updated(self, nbytes: int) -> None:
        self._end += nbytes
        if self._end - self._start >= HIGH_WATER and not self._reading_paused and self.transport is not None:
            self._reading_paused = True
            self.transport.pause_reading()
        if self._waiter is not None and self._end - self._start >= self._wanted:
            self._wake()

    def eof_received(self) -> bool:
        self._eof = True
        self._wake()
        return True  # keep the transport open for what we still have to send (an A-ABORT, say)

    def connection_lost(self, exc: Exception | None) -> None:
        self._eof = True
        self._lost = exc if exc is not None else ConnectionResetError("connection closed")
        self._wake()
        if self._drain is not None and not self._drain.done():
            self._drain.set_exception(self._lost)
        if not self._closed.done():
            self._closed.set_result(None)

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    # reading

    @property
    def buffered(self) -> int:
        """Bytes received and not taken yet."""
        return self._end - self._start

    def take(self, n: int) -> memoryview:
        """The next ``n`` buffered bytes (at most :attr:`buffered`), as a view valid until the
        next ``await``: copy what must outlive it."""
        start = self._start
        end = min(start + n, self._end)
        view = self._view[start:end]
        self._start = end
        if self._start == self._end:
            self._start = self._end = 0
        if self._reading_paused and self._end - self._start < HIGH_WATER and self.transport is not None:
            self._reading_paused = False
            self.transport.resume_reading()
        return view

    async def wait(self, n: int, timeout: float | None) -> None:
        """Until ``n`` bytes are buffered; :class:`TimeoutError` after ``timeout`` s without
        them, :class:`Closed` (or the connection's error) if they cannot come any more."""
        if n > HIGH_WATER:
            raise ValueError(f"a read of {n} bytes exceeds the buffer")
        while self._end - self._start < n:
            if self._lost is not None and not isinstance(self._lost, ConnectionResetError):
                raise self._lost
            if self._eof:
                raise Closed("peer closed the connection")
            waiter = self._waiter = self._loop.create_future()
            self._wanted = n
            self._deadline = None
            if timeout is not None:
                self.rearm(timeout)
            try:
                await waiter
            finally:
                self._waiter = None
                self._deadline = None

    async def read(self, n: int, timeout: float | None) -> bytes:
        """The next ``n`` bytes, as :meth:`wait` and :meth:`take`."""
        if self._end - self._start < n:
            await self.wait(n, timeout)
        return bytes(self.take(n))

    def rearm(self, timeout: float) -> None:
        """Start the wait in progress's timeout again from now (a no-op when nothing waits)."""
        if self._waiter is None:
            return
        deadline = self._deadline = self._loop.time() + timeout
        if self._timer is not None and deadline < self._timer_at:  # a shorter timeout than the last wait's
            self._timer.cancel()
            self._timer = None
        if self._timer is None:
            self._timer_at = deadline
            self._timer = self._loop.call_at(deadline, self._expire)

    async def drain_until_closed(self, timeout: float) -> None:
        """Throw away what comes until the peer closes the connection: :class:`Closed` then, or
        :class:`TimeoutError` after ``timeout`` s in all (a trickle of bytes does not extend it)."""
        deadline = self._loop.time() + timeout
        while True:
            self.take(self.buffered)
            left = deadline - self._loop.time()
            if left <= 0:
                raise TimeoutError()
            await self.wait(1, left)

    def _expire(self) -> None:
        self._timer = None
        deadline, waiter = self._deadline, self._waiter
        if deadline is None or waiter is None or waiter.done():
            return
        if deadline > self._timer_at:  # re-armed meanwhile: wait on
            self._timer_at = deadline
            self._timer = self._loop.call_at(deadline, self._expire)
            return
        waiter.set_exception(TimeoutError())

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # writing and closing

    def write(self, data: bytes) -> None:
        """Queue ``data`` without waiting (an A-ABORT on the way out)."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    async def send(self, data: bytes, timeout: float | None) -> None:
        """Write ``data``; wait while the peer is not reading what we sent before, at most
        ``timeout`` s (:class:`TimeoutError`): a peer that sends and never reads holds nothing."""
        if self._lost is not None:
            raise self._lost
        assert self.transport is not None
        self.transport.write(data)
        if self._writing_paused:
            self._drain = self._loop.create_future()
            try:
                async with asyncio.timeout(timeout):
                    await self._drain
            finally:
                self._drain = None

    def peer(self) -> Any:
        return self.transport.get_extra_info("peername") if self.transport is not None else None

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    async def wait_closed(self) -> None:
        await self._closed
