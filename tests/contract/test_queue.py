"""The message-queue contract, run against the embedded SQLite queue and RabbitMQ.

At-least-once: nothing confirmed is lost (even when the publisher or a consumer is killed with
SIGKILL), nothing acked comes back, a message given back comes back with its delivery count
incremented, and one delivered ``delivery_limit`` times ends in the dead-letter queue.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aio_pika
import pytest
from prometheus_client import REGISTRY

from archive import metrics
from archive.adapters.amqp_queue import AmqpQueue
from archive.adapters.sqlite_queue import SqliteQueue
from archive.core.errors import BackendUnavailable, ConfigError
from archive.core.ports import Delivery, MessageQueue, QueueDepth
from tests.conftest import ROOT, free_port, service_setting

LIMIT = 3
LEASE = 1.0  # SqliteQueue lease: how long a crashed consumer's claim hides its messages

Factory = Callable[[], Awaitable[MessageQueue]]


class Backend:
    """How to open (more) queue objects on one test's queue, and the child-process spec."""

    def __init__(self, kind: str, spec: dict[str, Any]) -> None:
        self.kind = kind
        self.spec = spec
        self.opened: list[MessageQueue] = []

    async def open(self, **overrides: Any) -> MessageQueue:
        spec = {**self.spec, **overrides}
        queue: MessageQueue
        if self.kind == "sqlite":
            queue = SqliteQueue(Path(spec["path"]), delivery_limit=LIMIT, lease_seconds=LEASE, poll_interval=0.01)
        else:
            queue = AmqpQueue(spec["url"], spec["queue"], delivery_limit=LIMIT, prefetch=spec.get("prefetch", 64))
        self.opened.append(queue)
        await queue.migrate()
        return queue


async def delete_amqp_queues(url: str, *names: str) -> None:
    try:
        connection = await aio_pika.connect(url, timeout=5)
    except (aio_pika.exceptions.AMQPError, OSError):
        return  # the broker is gone; the test already failed for that
    try:
        channel = await connection.channel()
        for name in names:
            await channel.queue_delete(name)
    finally:
        await connection.close()


@pytest.fixture(params=["sqlite", "amqp"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path, unique: str) -> AsyncIterator[Backend]:
    if request.param == "sqlite":
        b = Backend("sqlite", {"kind": "sqlite", "path": str(tmp_path / "queue.db"), "lease_seconds": LEASE,
                               "delivery_limit": LIMIT})
    else:
        url = service_setting("ARCHIVE_QUEUE")
        b = Backend("amqp", {"kind": "amqp", "url": url, "queue": f"test.{unique}", "delivery_limit": LIMIT})
    yield b
    for queue in b.opened:
        await queue.close()
    if b.kind == "amqp":
        await delete_amqp_queues(b.spec["url"], b.spec["queue"], b.spec["queue"] + ".dead")


@pytest.fixture
async def queue(backend: Backend) -> MessageQueue:
    q = await backend.open()
    await q.migrate()  # idempotent: same arguments twice
    return q


async def drain(queue: MessageQueue, *, quiet: float = 0.3, batch: int = 50) -> list[bytes]:
    """Receive and ack until nothing arrives for ``quiet`` seconds."""
    bodies: list[bytes] = []
    while deliveries := await queue.receive(batch, timeout=quiet):
        bodies.extend(d.body for d in deliveries)
        await asyncio.gather(*(d.ack() for d in deliveries))
    return bodies


async def receive_one(queue: MessageQueue, timeout: float = 5.0) -> Delivery:
    deliveries = await queue.receive(1, timeout=timeout)
    assert len(deliveries) == 1, "expected a delivery"
    return deliveries[0]


async def test_round_trip(queue: MessageQueue) -> None:
    assert await queue.receive(10, timeout=0.05) == []
    await queue.publish(b"hello \x00 world")
    delivery = await receive_one(queue)
    assert delivery.body == b"hello \x00 world"
    assert delivery.delivery_count == 1
    assert (await queue.depth()).ready == 1  # in flight still counts
    await delivery.ack()
    with pytest.raises(RuntimeError):
        await delivery.ack()  # settled exactly once
    assert await queue.receive(10, timeout=0.3) == []
    assert await queue.depth() == QueueDepth(ready=0, dead=0)
    await queue.ping()


async def test_receive_waits_for_a_publish(queue: MessageQueue) -> None:
    receiving = asyncio.create_task(queue.receive(5, timeout=60))
    done, _ = await asyncio.wait({receiving}, timeout=0.2)
    assert not done, "receive returned with nothing published"  # it waits ...
    await queue.publish(b"late")
    deliveries = await asyncio.wait_for(receiving, 30)  # ... and wakes for the publish, not at its timeout
    assert [d.body for d in deliveries] == [b"late"]
    await deliveries[0].ack()


async def test_many_concurrent_publishers_nothing_lost_or_duplicated(queue: MessageQueue) -> None:
    total, tasks = 500, 8

    async def publisher(k: int) -> None:
        for i in range(k, total, tasks):
            await queue.publish(f"m-{i}".encode())

    await asyncio.gather(*(publisher(k) for k in range(tasks)))
    assert (await queue.depth()).ready == total
    bodies = await drain(queue, batch=40)
    assert len(bodies) == total  # no duplicate
    assert set(bodies) == {f"m-{i}".encode() for i in range(total)}  # nothing lost
    assert (await queue.depth()).ready == 0


async def test_retry_redelivers_with_count_incremented(queue: MessageQueue) -> None:
    await queue.publish(b"again")
    first = await receive_one(queue)
    assert first.delivery_count == 1
    await first.retry(0)
    second = await receive_one(queue)
    assert (second.body, second.delivery_count) == (b"again", 2)
    retried = time.monotonic()
    await second.retry(0.5)
    third = await receive_one(queue, timeout=5)
    assert time.monotonic() - retried >= 0.5  # not before the delay (a slow machine only makes it later)
    assert (third.body, third.delivery_count) == (b"again", 3)
    await third.ack()
    assert (await queue.depth()).ready == 0


async def test_delivery_limit_dead_letters(queue: MessageQueue) -> None:
    await queue.publish(b"poison")
    await queue.publish(b"fine")
    counts = []
    for _ in range(LIMIT):
        deliveries = await queue.receive(10, timeout=5)
        for d in deliveries:
            if d.body == b"fine":
                await d.ack()
            else:
                counts.append(d.delivery_count)
                await d.retry(0)
    assert counts == list(range(1, LIMIT + 1))
    assert await queue.receive(10, timeout=0.5) == []  # not delivered a (LIMIT + 1)th time
    deadline = time.monotonic() + 5  # RabbitMQ dead-letters asynchronously
    while (depth := await queue.depth()).dead != 1 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert depth.dead == 1 and depth.ready == 0
    letters = await queue.dead_letters()
    assert [(x.body, x.delivery_count, x.reason) for x in letters] == [(b"poison", LIMIT, "delivery limit reached")]
    assert await queue.dead_letters() == letters  # browsing leaves them in place
    assert (await queue.depth()).dead == 1


async def _dead_letter(queue: MessageQueue, body: bytes) -> None:
    await queue.publish(body)
    for _ in range(LIMIT):
        [delivery] = await queue.receive(1, timeout=5)
        assert delivery.body == body
        await delivery.retry(0)
    assert await queue.receive(1, timeout=0.3) == []  # the SQLite queue dead-letters on this claim
    deadline = time.monotonic() + 5  # RabbitMQ dead-letters asynchronously
    while (await queue.depth()).ready and time.monotonic() < deadline:
        await asyncio.sleep(0.05)


async def test_replay_moves_dead_letters_back_as_new_messages(queue: MessageQueue) -> None:
    await _dead_letter(queue, b"first")
    await _dead_letter(queue, b"second")
    assert await queue.depth() == QueueDepth(ready=0, dead=2)
    assert await queue.replay(limit=1) == 1  # oldest first
    assert await queue.depth() == QueueDepth(ready=1, dead=1)
    replayed = await receive_one(queue, timeout=5)
    assert (replayed.body, replayed.delivery_count) == (b"first", 1)  # a fresh delivery count
    await replayed.ack()
    assert await queue.replay() == 1
    assert await queue.replay() == 0
    again = await receive_one(queue, timeout=5)
    assert again.body == b"second"
    await again.ack()
    assert await queue.depth() == QueueDepth(ready=0, dead=0)


async def spawn(mode: str, spec: dict[str, Any], count: int) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.contract.queue_crash_helper", mode, json.dumps(spec), str(count),
        cwd=ROOT, stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 30)
    assert line == b"ready\n", line
    return proc


async def test_killed_publisher_loses_no_confirmed_message(backend: Backend, queue: MessageQueue) -> None:
    total = 5000
    proc = await spawn("publish", backend.spec, total)
    assert proc.stdout is not None
    confirmed: set[bytes] = set()
    while len(confirmed) < 300:
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        assert line.startswith(b"confirmed "), line
        confirmed.add(b"seq-" + line.split()[1])
    proc.send_signal(signal.SIGKILL)  # mid-way, with publishes in flight
    rest = await asyncio.wait_for(proc.stdout.read(), 30)  # what it printed before dying
    await proc.wait()
    confirmed.update(b"seq-" + line.split()[1] for line in rest.splitlines() if line.startswith(b"confirmed "))
    assert proc.returncode == -signal.SIGKILL
    assert len(confirmed) < total, "the child finished before the kill"
    bodies = await drain(queue, batch=200)
    assert len(bodies) == len(set(bodies))
    assert confirmed <= set(bodies), f"{len(confirmed - set(bodies))} confirmed messages lost"


async def test_consumer_receives_while_another_process_publishes(backend: Backend, queue: MessageQueue) -> None:
    total = 300
    proc = await spawn("publish", backend.spec, total)
    received: list[bytes] = []
    deadline = time.monotonic() + 30
    while len(received) < total and time.monotonic() < deadline:
        deliveries = await queue.receive(25, timeout=1)
        received.extend(d.body for d in deliveries)
        await asyncio.gather(*(d.ack() for d in deliveries))
    assert await asyncio.wait_for(proc.wait(), 30) == 0
    assert sorted(received) == sorted(b"seq-%d" % i for i in range(total))


async def test_killed_consumer_messages_are_delivered_again(backend: Backend, queue: MessageQueue) -> None:
    sent = {b"job-%d" % i for i in range(5)}
    for body in sorted(sent):
        await queue.publish(body)
    proc = await spawn("consume", backend.spec, len(sent))
    assert proc.stdout is not None
    claimed = set()
    while (line := await asyncio.wait_for(proc.stdout.readline(), 30)) != b"holding\n":
        assert line.startswith(b"claimed "), line
        claimed.add(line.split()[1])
    assert claimed == sent
    if backend.kind == "sqlite":
        assert await queue.receive(10, timeout=0.2) == []  # still leased to the child
    proc.send_signal(signal.SIGKILL)
    await proc.wait()
    redelivered: list[Delivery] = []
    deadline = time.monotonic() + LEASE + 5
    while len(redelivered) < len(sent) and time.monotonic() < deadline:
        redelivered += await queue.receive(10, timeout=0.5)
    assert {d.body for d in redelivered} == sent
    assert {d.delivery_count for d in redelivered} == {2}
    await asyncio.gather(*(d.ack() for d in redelivered))
    assert await drain(queue) == []


# ---- embedded queue only ---------------------------------------------------------------------


async def test_sqlite_claims_of_a_dead_consumer_are_released_before_the_lease(tmp_path: Path) -> None:
    """A consumer killed with kill -9 holds a 300 s lease; its claims come back in seconds."""
    path = tmp_path / "queue.db"
    queue = SqliteQueue(path, lease_seconds=300.0, poll_interval=0.01)
    await queue.migrate()
    sent = {b"held-%d" % i for i in range(3)}
    for body in sorted(sent):
        await queue.publish(body)
    proc = await spawn("consume", {"kind": "sqlite", "path": str(path), "lease_seconds": 300.0}, len(sent))
    assert proc.stdout is not None
    while (line := await asyncio.wait_for(proc.stdout.readline(), 30)) != b"holding\n":
        assert line.startswith(b"claimed "), line
    assert await queue.receive(10, timeout=0.2) == []  # the living child holds them
    proc.send_signal(signal.SIGKILL)
    await proc.wait()
    started = time.monotonic()
    redelivered: list[Delivery] = []
    while len(redelivered) < len(sent) and time.monotonic() - started < 10:
        redelivered += await queue.receive(10, timeout=0.5)
    assert {d.body for d in redelivered} == sent
    assert time.monotonic() - started < 10  # far below the 300 s lease
    await asyncio.gather(*(d.ack() for d in redelivered))
    await queue.close()


async def test_sqlite_publish_from_threads_and_processes_share_the_file(tmp_path: Path) -> None:
    path = tmp_path / "queue.db"
    shared = SqliteQueue(path, lease_seconds=LEASE)
    await shared.migrate()

    def thread_publisher(k: int) -> None:
        async def run() -> None:  # each thread its own event loop, as pynetdicom handlers would
            for i in range(50):
                await shared.publish(f"t{k}-{i}".encode())

        asyncio.run(run())

    threads = [threading.Thread(target=thread_publisher, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    other = SqliteQueue(path)  # a second connection, as another process would have
    await asyncio.gather(*(other.publish(f"o-{i}".encode()) for i in range(50)))
    for t in threads:
        await asyncio.to_thread(t.join)
    assert (await other.depth()).ready == 250
    bodies = await drain(other, batch=100)
    assert sorted(bodies) == sorted([f"t{k}-{i}".encode() for k in range(4) for i in range(50)]
                                    + [f"o-{i}".encode() for i in range(50)])
    await shared.close()
    await other.close()
    with pytest.raises(BackendUnavailable):
        await shared.publish(b"after close")


def test_sqlite_rejects_bad_settings(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        SqliteQueue(tmp_path / "q.db", synchronous="SOMETIMES")
    with pytest.raises(ConfigError):
        SqliteQueue(tmp_path / "q.db", delivery_limit=0)


# ---- RabbitMQ only -----------------------------------------------------------------------------


@pytest.fixture
def amqp_url() -> str:
    return service_setting("ARCHIVE_QUEUE")


async def test_amqp_unacked_messages_go_to_the_next_connection(amqp_url: str, unique: str) -> None:
    first = AmqpQueue(amqp_url, unique, delivery_limit=LIMIT)
    second = AmqpQueue(amqp_url, unique, delivery_limit=LIMIT)
    try:
        await first.migrate()
        for i in range(3):
            await first.publish(b"%d" % i)
        held: list[Delivery] = []
        while len(held) < 3:
            held += await first.receive(3, timeout=5)
        await first.close()  # without acking
        again: list[Delivery] = []
        while len(again) < 3 and (batch := await second.receive(3, timeout=5)):
            again += batch
        assert sorted(d.body for d in again) == [b"0", b"1", b"2"]
        assert {d.delivery_count for d in again} == {2}
        for d in again:
            await d.ack()
    finally:
        await first.close()
        await second.close()
        await delete_amqp_queues(amqp_url, unique, unique + ".dead")


async def test_amqp_redeclare_with_other_arguments_is_a_config_error(amqp_url: str, unique: str) -> None:
    queue = AmqpQueue(amqp_url, unique, delivery_limit=LIMIT)
    other = AmqpQueue(amqp_url, unique, delivery_limit=LIMIT + 1)
    try:
        await queue.migrate()
        with pytest.raises(ConfigError, match="PRECONDITION_FAILED"):
            await other.migrate()
        await queue.publish(b"still fine")  # the refusal did not break the first adapter
        assert (await queue.depth()).ready == 1
    finally:
        await queue.close()
        await other.close()
        await delete_amqp_queues(amqp_url, unique, unique + ".dead")


async def test_amqp_unroutable_publish_raises(amqp_url: str, unique: str) -> None:
    queue = AmqpQueue(amqp_url, unique)  # never migrated: no queue to route to
    try:
        with pytest.raises(BackendUnavailable, match="NO_ROUTE"):
            await queue.publish(b"nowhere")
        with pytest.raises(ConfigError):
            await queue.depth()
    finally:
        await queue.close()


class Proxy:
    """A TCP forwarder to the broker that the test can cut and restore, port unchanged."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def cut(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in list(self.writers):
            writer.transport.abort()
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self.writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self.writers -= {writer, up_writer}


async def test_amqp_survives_a_broker_outage(amqp_url: str, unique: str) -> None:
    url = aio_pika.connection.make_url(amqp_url)
    proxy = Proxy(url.host or "127.0.0.1", url.port or 5672)
    await proxy.start()
    proxied = str(url.with_port(proxy.port))
    queue = AmqpQueue(proxied, unique, delivery_limit=LIMIT, confirm_timeout=2.0, reconnect_interval=0.2)
    try:
        await queue.migrate()
        await queue.publish(b"before")
        in_flight = await receive_one(queue)
        assert in_flight.body == b"before"

        await proxy.cut()
        start = time.monotonic()
        with pytest.raises(BackendUnavailable):
            await queue.publish(b"during")
        # within its 2 s confirm timeout (with room for a loaded machine); waiting for the broker would hang here
        assert time.monotonic() - start < 6, "publish during an outage must fail fast"

        await proxy.start()
        deadline = time.monotonic() + 15
        while True:
            try:
                await queue.publish(b"after")
                break
            except BackendUnavailable:
                assert time.monotonic() < deadline, "no recovery after the broker came back"
                await asyncio.sleep(0.2)
        await in_flight.ack()  # its channel died: logged and swallowed, it comes again
        bodies = await drain(queue, quiet=1.0)
        assert b"before" in bodies and b"after" in bodies
        assert len(bodies) == len(set(bodies))
    finally:
        await queue.close()
        await proxy.cut()
        await delete_amqp_queues(amqp_url, unique, unique + ".dead")


def _gauge(name: str) -> float | None:
    return REGISTRY.get_sample_value(name)


async def test_queue_gauges_follow_the_queue(queue: MessageQueue) -> None:
    """archive_queue_ready_messages / archive_queue_dead_messages come from the queue at each scrape."""
    await queue.publish(b"one")
    await queue.publish(b"two")
    await metrics.record_queue_depth(queue)
    assert (_gauge("archive_queue_ready_messages"), _gauge("archive_queue_dead_messages")) == (2, 0)
    [first, second] = await queue.receive(2, timeout=5)
    await first.ack()
    await second.ack()
    await _dead_letter(queue, b"poison")
    await metrics.record_queue_depth(queue)
    assert (_gauge("archive_queue_ready_messages"), _gauge("archive_queue_dead_messages")) == (0, 1)


async def test_queue_gauges_are_nan_when_the_queue_does_not_answer(amqp_url: str, unique: str) -> None:
    """A gap in the graph, not the last value seen, while the broker is unreachable."""
    metrics.QUEUE_READY.set(7)  # what an earlier scrape saw
    parts = urlsplit(amqp_url)
    unreachable = parts._replace(netloc=f"{parts.username}:{parts.password}@127.0.0.1:{free_port()}").geturl()
    queue = AmqpQueue(unreachable, f"test.{unique}", delivery_limit=LIMIT)
    try:
        with pytest.raises(BackendUnavailable):
            await metrics.record_queue_depth(queue)
    finally:
        await queue.close()
    assert math.isnan(_gauge("archive_queue_ready_messages") or 0.0)
    assert math.isnan(_gauge("archive_queue_dead_messages") or 0.0)
