"""The association's receive buffer (archive.scp.asyncio_engine.stream) on a real loopback
connection, on both event loops the roles can run: bytes in order across the buffer's
compactions, flow control, the silence timeout, the peer's end. Then the message's spool
file (archive.scp.asyncio_engine.message), written from views of that buffer."""

from __future__ import annotations

import asyncio
import hashlib
import random
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import uvloop

from archive.scp.asyncio_engine.message import Message
from archive.scp.asyncio_engine.stream import CAPACITY, HIGH_WATER, Closed, PduStream

LOOPS = {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


def run(loop_name: str, body: Callable[[PduStream, socket.socket], Awaitable[Any]]) -> Any:
    """``body(stream, peer)``: ``stream`` on the accepting end, ``peer`` a blocking socket."""

    async def main() -> Any:
        ours, peer = _tcp_pair()
        try:
            loop = asyncio.get_running_loop()
            _, stream = await loop.connect_accepted_socket(PduStream, sock=ours)
            try:
                return await asyncio.wait_for(body(stream, peer), 30)
            finally:
                stream.close()
        finally:
            peer.close()

    loop = LOOPS[loop_name]()
    try:
        return loop.run_until_complete(main())
    finally:
        loop.close()


def _tcp_pair() -> tuple[socket.socket, socket.socket]:
    """Both ends of a loopback TCP connection, as the receiver gets them (ours non-blocking)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        peer = socket.create_connection(listener.getsockname())
        ours, _ = listener.accept()
    ours.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    ours.setblocking(False)
    return ours, peer


async def send(peer: socket.socket, data: bytes) -> None:
    await asyncio.to_thread(peer.sendall, data)


@pytest.fixture(params=sorted(LOOPS))
def loop_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_records_arrive_whole_and_in_order_across_compactions(loop_name: str) -> None:
    rng = random.Random(7)
    records = [rng.randbytes(rng.choice([1, 6, 12, 500, 16384, 40000, 65536])) for _ in range(300)]
    wire = b"".join(len(r).to_bytes(4, "big") + r for r in records)
    assert len(wire) > 10 * CAPACITY

    async def body(stream: PduStream, peer: socket.socket) -> list[bytes]:
        sender = asyncio.create_task(send(peer, wire))
        got = []
        for _ in records:
            size = int.from_bytes(await stream.read(4, 5.0), "big")
            record = bytearray()
            while len(record) < size:  # as a dataset fragment is taken: whatever is there
                if not stream.buffered:
                    await stream.wait(1, 5.0)
                view = stream.take(size - len(record))
                assert 0 < len(view) <= size - len(record)
                record += view
            got.append(bytes(record))
        await sender
        return got

    assert run(loop_name, body) == records


def test_reading_pauses_while_the_buffer_is_full_and_loses_nothing(loop_name: str) -> None:
    wire = random.Random(3).randbytes(8 * CAPACITY)

    async def body(stream: PduStream, peer: socket.socket) -> bytes:
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 << 10)
        sender = asyncio.create_task(send(peer, wire))
        while stream.buffered < HIGH_WATER:  # fill it without taking anything
            await stream.wait(min(stream.buffered + 1, HIGH_WATER), 5.0)
        # the sender is held back by the kernel's buffers, not by ours growing
        assert not sender.done()
        assert stream.buffered <= CAPACITY
        got = bytearray()
        while len(got) < len(wire):
            if not stream.buffered:
                await stream.wait(1, 5.0)
            got += stream.take(len(wire) - len(got))
        await sender
        return bytes(got)

    assert run(loop_name, body) == wire


def test_a_silent_peer_times_out_and_a_later_shorter_timeout_is_kept(loop_name: str) -> None:
    async def body(stream: PduStream, peer: socket.socket) -> None:
        sender = asyncio.create_task(send(peer, b"x" * 6))
        await stream.wait(6, 60.0)  # a long timeout's timer is left behind
        await sender
        stream.take(6)
        waiting = asyncio.create_task(stream.wait(1, 0.2))
        done, _ = await asyncio.wait([waiting], timeout=10)  # not after the 60 s one
        assert done and isinstance(waiting.exception(), TimeoutError)

    run(loop_name, body)


def test_rearm_counts_the_silence_from_then(loop_name: str) -> None:
    async def body(stream: PduStream, peer: socket.socket) -> float:
        loop = asyncio.get_running_loop()
        started = loop.time()
        rearmed: list[float] = []

        def rearm() -> None:
            rearmed.append(loop.time())
            stream.rearm(0.5)

        loop.call_later(0.3, rearm)
        with pytest.raises(TimeoutError):
            await stream.wait(1, 0.5)
        assert rearmed
        return loop.time() - started

    assert run(loop_name, body) >= 0.75  # 0.3 + 0.5, less the loop's clock resolution


def test_no_timeout_without_one(loop_name: str) -> None:
    async def body(stream: PduStream, peer: socket.socket) -> bytes:
        loop = asyncio.get_running_loop()
        loop.call_later(0.3, peer.sendall, b"late")
        return await stream.read(4, None)

    assert run(loop_name, body) == b"late"


def test_the_peer_closing_mid_read_ends_the_wait(loop_name: str) -> None:
    async def body(stream: PduStream, peer: socket.socket) -> None:
        peer.sendall(b"abc")
        peer.shutdown(socket.SHUT_WR)
        with pytest.raises(Closed):
            await stream.read(6, 5.0)
        assert stream.buffered == 3  # what came is still there
        await stream.send(b"still writable", 5.0)  # a half-closed peer can be told why (A-ABORT)
        assert peer.recv(64) == b"still writable"

    run(loop_name, body)


def test_drain_until_closed_returns_by_closed_or_timeout(loop_name: str) -> None:
    async def body(stream: PduStream, peer: socket.socket) -> None:
        peer.sendall(b"junk" * 1000)
        peer.shutdown(socket.SHUT_WR)
        with pytest.raises(Closed):
            await stream.drain_until_closed(5.0)
        assert stream.buffered == 0

    run(loop_name, body)


def test_drain_until_closed_is_bounded_in_all_by_its_timeout(loop_name: str) -> None:
    async def body(stream: PduStream, peer: socket.socket) -> float:
        loop = asyncio.get_running_loop()
        trickle: list[asyncio.TimerHandle] = []

        def again() -> None:
            peer.sendall(b"x")
            trickle[:] = [loop.call_later(0.05, again)]  # far more often than the timeout

        again()
        started = loop.time()
        try:
            with pytest.raises(TimeoutError):
                await stream.drain_until_closed(0.5)
        finally:
            trickle[0].cancel()
        return loop.time() - started

    assert run(loop_name, body) < 10  # without the bound: the test's own 30 s limit


def test_a_send_to_a_peer_that_does_not_read_times_out(loop_name: str) -> None:
    async def body(stream: PduStream, peer: socket.socket) -> None:
        with pytest.raises(TimeoutError):
            while True:
                await stream.send(b"\0" * 65536, 0.3)

    run(loop_name, body)


def test_a_read_larger_than_the_buffer_is_refused(loop_name: str) -> None:
    async def body(stream: PduStream, peer: socket.socket) -> None:
        with pytest.raises(ValueError):
            await stream.wait(HIGH_WATER + 1, 1.0)

    run(loop_name, body)


def test_writes_wait_for_a_peer_that_does_not_read_and_fail_once_it_is_gone(loop_name: str) -> None:
    async def body(stream: PduStream, peer: socket.socket) -> None:
        blocked = asyncio.create_task(_send_forever(stream))
        done, _ = await asyncio.wait([blocked], timeout=0.5)
        assert not done  # held back by the peer, not buffered without end
        peer.close()
        with pytest.raises((ConnectionError, OSError)):
            await blocked

    run(loop_name, body)


async def _send_forever(stream: PduStream) -> None:
    while True:
        await stream.send(b"\0" * 65536, None)


# The message's spool file: fragments come as views of the buffer, used before it changes


def test_fragments_are_written_in_order_and_digested(tmp_path: Path) -> None:
    rng = random.Random(11)
    fragments = [rng.randbytes(rng.choice([1, 100, 16384, 70000])) for _ in range(3000)]
    message = Message()
    message.open(tmp_path, b"HEADER")
    buffer = bytearray()
    for fragment in fragments:
        buffer[:] = fragment  # the same memory reused, as the receive buffer is
        message.write(memoryview(buffer))
    spooled = message.spooled()
    path = message.close()
    body = b"HEADER" + b"".join(fragments)
    assert path.read_bytes() == body
    assert spooled is not None and spooled.size == len(body)
    assert spooled.sha256 == hashlib.sha256(body).hexdigest()


def test_without_a_header_nothing_is_digested(tmp_path: Path) -> None:
    message = Message()
    message.open(tmp_path, b"")  # the command's UIDs could not make one: prepare rebuilds it
    message.write(b"dataset")
    assert message.spooled() is None
    assert message.close().read_bytes() == b"dataset"


def test_discard_removes_the_spool_file(tmp_path: Path) -> None:
    message = Message()
    message.open(tmp_path, b"HEADER")
    message.write(b"x" * 1000)
    message.discard()
    assert list(tmp_path.iterdir()) == []
    message.discard()  # twice is harmless
