"""The distributed message queue: a RabbitMQ quorum queue with manual acks and a dead-letter queue.

Topology (``migrate``): the durable quorum queue ``<queue>`` with a delivery limit, dead-lettering
at-least-once through the direct exchange ``archive.dlx`` to the durable classic queue
``<queue>.dead`` (classic so that browsing it with get + requeue never counts towards a
delivery limit). Messages are published to the default exchange with the queue name as routing
key, persistent and ``mandatory``, on a channel with publisher confirms: ``publish`` returns only
after the broker's basic.ack, i.e. once the quorum queue has the message on a majority of its
replicas; a basic.return (unroutable: the queue does not exist) or basic.nack raises.

Delivery counts: RabbitMQ's ``x-delivery-limit`` counts *returns*: with limit L a message is
delivered L + 1 times before it is dead-lettered, and ``x-delivery-count`` (0-based, absent on a
first delivery to a consumer) counts earlier returns. The port counts deliveries, so the queue
is declared with ``x-delivery-limit = delivery_limit - 1`` and ``delivery_count`` is the header
plus one. A connection or channel closed with unacked messages returns them (RabbitMQ 3.10 counts
that as a return too).

The connection is aio-pika's robust connection: after a broker restart it reconnects and restores
the consumer. Deliveries received on a channel that has since closed cannot be acked or nacked
(their delivery tags died with it); the broker redelivers them, so a failed settle is logged and
swallowed. At-least-once plus an idempotent indexer makes that safe.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import aiormq.exceptions
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustChannel, AbstractRobustConnection

from archive.core.errors import BackendUnavailable, ConfigError
from archive.core.ports import DeadLetter, Delivery, QueueDepth

log = logging.getLogger(__name__)

DLX = "archive.dlx"
DELIVERY_LIMIT_REASON = "delivery limit reached"  # the same words as the embedded queue
_BROKER_ERRORS = (aio_pika.exceptions.AMQPError, ConnectionError, OSError, RuntimeError, TimeoutError)


def delivery_count(message: AbstractIncomingMessage) -> int:
    """Deliveries so far, this one included (1 on the first)."""
    header = (message.headers or {}).get("x-delivery-count")
    if isinstance(header, int) and not isinstance(header, bool):
        return header + 1  # earlier returns, 0-based; RabbitMQ 3.10 omits it on a first consume
    return 2 if message.redelivered else 1


def _is_stale(message: AbstractIncomingMessage) -> bool:
    try:
        message.channel  # raises once the channel that delivered it has closed
    except aio_pika.exceptions.ChannelInvalidStateError:
        return True
    return False


class AmqpDelivery:
    """A message held unacknowledged by this consumer; ``ack`` or ``retry`` settles it once."""

    def __init__(self, owner: AmqpQueue, message: AbstractIncomingMessage) -> None:
        self.body = message.body
        self.delivery_count = delivery_count(message)
        self.message = message
        self._owner = owner
        self._settled = False

    def _settle(self) -> None:
        if self._settled:
            raise RuntimeError("message is already settled")
        self._settled = True

    async def ack(self) -> None:
        self._settle()
        await self._owner._settle(self.message, ack=True)

    async def retry(self, delay: float) -> None:
        """Return the message after ``delay`` seconds, without blocking the caller.

        The message stays unacknowledged (and counts against the prefetch) meanwhile; should
        this process die first, the broker returns it anyway.
        """
        self._settle()
        if delay <= 0:
            await self._owner._settle(self.message, ack=False)
        else:
            self._owner._later(delay, self.message)


class AmqpQueue:
    """The MessageQueue on RabbitMQ (>= 3.10) at ``url``, queue ``queue`` (see ``migrate``).

    ``prefetch`` bounds the unacked messages this consumer holds (basic.qos); ``confirm_timeout``
    bounds every broker round trip, so that during an outage ``publish`` fails with
    BackendUnavailable instead of hanging; ``reconnect_interval`` paces the robust reconnects.
    One object belongs to one event loop.
    """

    name = "amqp"

    def __init__(
        self,
        url: str,
        queue: str = "archive.index",
        delivery_limit: int = 5,
        prefetch: int = 64,
        *,
        confirm_timeout: float = 10.0,
        reconnect_interval: float = 1.0,
    ) -> None:
        if delivery_limit < 1:
            raise ConfigError(f"queue delivery_limit must be >= 1, not {delivery_limit}")
        self.url = url
        self.queue = queue
        self.dead_queue = f"{queue}.dead"
        self.delivery_limit = delivery_limit
        self.prefetch = prefetch
        self.confirm_timeout = confirm_timeout
        self.reconnect_interval = reconnect_interval
        self._conn: AbstractRobustConnection | None = None
        self._publish_channel: AbstractRobustChannel | None = None
        self._consume_channel: AbstractRobustChannel | None = None
        self._buffer: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
        self._held: set[AbstractIncomingMessage] = set()  # buffered or handed out, not settled
        self._retries: set[asyncio.Task[None]] = set()
        self._lock = asyncio.Lock()

    def _queue_arguments(self) -> dict[str, Any]:
        return {
            "x-queue-type": "quorum",
            "x-delivery-limit": self.delivery_limit - 1,  # counts returns, see module docstring
            "x-dead-letter-exchange": DLX,
            "x-dead-letter-routing-key": self.dead_queue,
            # Dead letters are confirmed by the dead-letter queue before they leave this one
            # (RabbitMQ >= 3.10; at-least-once dead-lettering requires reject-publish overflow).
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
        }

    # connection and channels

    async def _connection(self) -> AbstractRobustConnection:
        if self._conn is None:
            async with self._lock:
                if self._conn is None:
                    try:
                        self._conn = await asyncio.wait_for(
                            aio_pika.connect_robust(self.url, reconnect_interval=self.reconnect_interval),
                            self.confirm_timeout,
                        )
                    except _BROKER_ERRORS as exc:
                        raise BackendUnavailable("queue", f"cannot connect to RabbitMQ: {exc!r}") from exc
        return self._conn

    async def _publisher(self) -> AbstractRobustChannel:
        if self._publish_channel is None:
            conn = await self._connection()
            async with self._lock:
                if self._publish_channel is None:
                    channel = await conn.channel(publisher_confirms=True, on_return_raises=True)
                    self._publish_channel = channel
        assert self._publish_channel is not None
        return self._publish_channel

    @contextlib.asynccontextmanager
    async def _channel(self, what: str) -> AsyncIterator[aio_pika.abc.AbstractChannel]:
        """A short-lived channel; broker errors become ConfigError / BackendUnavailable."""
        conn = await self._connection()
        channel: aio_pika.abc.AbstractChannel | None = None
        try:
            async with asyncio.timeout(self.confirm_timeout):
                channel = await conn.channel(publisher_confirms=False)
                yield channel
        except aiormq.exceptions.ChannelPreconditionFailed as exc:
            raise ConfigError(
                f"RabbitMQ refuses {what}: {exc}. A queue keeps the arguments it was declared with; "
                f"delete {self.queue!r} and {self.dead_queue!r} (after draining them) or choose another queue name"
            ) from exc
        except aiormq.exceptions.ChannelNotFoundEntity as exc:
            raise ConfigError(f"RabbitMQ {what}: {exc}; run migrate() first") from exc
        except _BROKER_ERRORS as exc:
            raise BackendUnavailable("queue", f"{what}: {exc!r}") from exc
        finally:
            if channel is not None and not channel.is_closed:
                with contextlib.suppress(*_BROKER_ERRORS):
                    await channel.close()

    # Backend

    async def migrate(self) -> None:
        async with self._channel(f"declaring queue {self.queue!r}") as channel:
            dlx = await channel.declare_exchange(DLX, aio_pika.ExchangeType.DIRECT, durable=True)
            dead = await channel.declare_queue(self.dead_queue, durable=True, arguments={"x-queue-type": "classic"})
            await dead.bind(dlx, routing_key=self.dead_queue)
            await channel.declare_queue(self.queue, durable=True, arguments=self._queue_arguments())
        log.info("queue %s declared (delivery limit %d, dead letters to %s)", self.queue, self.delivery_limit, self.dead_queue)

    async def ping(self) -> None:
        async with self._channel(f"checking queue {self.queue!r}") as channel:
            raw = await channel.get_underlay_channel()
            await raw.queue_declare(self.queue, passive=True)

    async def close(self) -> None:
        for task in list(self._retries):
            task.cancel()  # still unacked: the broker returns them when the connection closes
        await asyncio.gather(*self._retries, return_exceptions=True)
        conn, self._conn = self._conn, None
        self._publish_channel = self._consume_channel = None
        self._held.clear()
        self._buffer = asyncio.Queue()
        if conn is not None:
            with contextlib.suppress(*_BROKER_ERRORS):
                await conn.close()

    # MessageQueue

    async def publish(self, body: bytes) -> None:
        message = aio_pika.Message(bytes(body), delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
        try:
            channel = await self._publisher()
            # One channel serves every concurrent publisher: confirms are per delivery tag.
            async with asyncio.timeout(self.confirm_timeout):
                await channel.default_exchange.publish(message, routing_key=self.queue, mandatory=True)
        except aio_pika.exceptions.DeliveryError as exc:  # basic.return or basic.nack
            raise BackendUnavailable("queue", f"message to {self.queue!r} not accepted: {exc}") from exc
        except _BROKER_ERRORS as exc:
            raise BackendUnavailable("queue", f"publish to {self.queue!r} not confirmed: {exc!r}") from exc

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        self._held.add(message)
        self._buffer.put_nowait(message)

    async def _consume(self) -> None:
        if self._consume_channel is not None:
            return
        conn = await self._connection()
        async with self._lock:
            if self._consume_channel is not None:
                return
            channel: AbstractRobustChannel | None = None
            try:
                async with asyncio.timeout(self.confirm_timeout):
                    channel = await conn.channel(publisher_confirms=False)
                    await channel.set_qos(prefetch_count=self.prefetch)  # basic.qos, restored on reconnect
                    queue = await channel.declare_queue(self.queue, durable=True, arguments=self._queue_arguments())
                    await queue.consume(self._on_message, no_ack=False)
            except BaseException as exc:
                if channel is not None and not channel.is_closed:
                    with contextlib.suppress(*_BROKER_ERRORS):
                        await channel.close()
                if isinstance(exc, aiormq.exceptions.ChannelPreconditionFailed):
                    raise ConfigError(f"RabbitMQ refuses to consume from {self.queue!r}: {exc}; see migrate()") from exc
                if isinstance(exc, _BROKER_ERRORS):
                    raise BackendUnavailable("queue", f"cannot consume from {self.queue!r}: {exc!r}") from exc
                raise
            self._consume_channel = channel

    def _next_nowait(self) -> AbstractIncomingMessage | None:
        while not self._buffer.empty():
            message = self._buffer.get_nowait()
            if not _is_stale(message):
                return message
            self._held.discard(message)  # from a channel lost to a reconnect: redelivered anyway
        return None

    async def receive(self, max_messages: int, timeout: float) -> list[Delivery]:
        if max_messages < 1:
            return []
        await self._consume()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(timeout, 0.0)
        first = self._next_nowait()
        while first is None:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return []
            try:
                message = await asyncio.wait_for(self._buffer.get(), remaining)
            except TimeoutError:
                return []
            if _is_stale(message):
                self._held.discard(message)
            else:
                first = message
        out: list[Delivery] = [AmqpDelivery(self, first)]
        while len(out) < max_messages and (more := self._next_nowait()) is not None:
            out.append(AmqpDelivery(self, more))
        return out

    async def _settle(self, message: AbstractIncomingMessage, *, ack: bool) -> None:
        self._held.discard(message)
        try:
            if ack:
                await message.ack()
            else:
                await message.nack(requeue=True)  # counts towards x-delivery-limit
        except (aio_pika.exceptions.ChannelInvalidStateError, *_BROKER_ERRORS) as exc:
            log.warning(
                "queue %s: %s failed (%r); the channel that delivered it is gone, "
                "so the broker delivers the message again", self.queue, "ack" if ack else "retry", exc,
            )

    def _later(self, delay: float, message: AbstractIncomingMessage) -> None:
        async def run() -> None:
            await asyncio.sleep(delay)
            await self._settle(message, ack=False)

        task = asyncio.get_running_loop().create_task(run())
        self._retries.add(task)
        task.add_done_callback(self._retries.discard)

    async def depth(self) -> QueueDepth:
        """Broker counts (ready messages) plus the messages this consumer holds unacked.

        AMQP 0.9.1 reports only ready messages; unacked messages held by *other* consumer
        processes are not counted (the management API would have them).
        """
        async with self._channel(f"counting queue {self.queue!r}") as channel:
            # Straight to the protocol: aio-pika's robust channel answers a passive
            # declare of a known queue from its cache, with stale counts.
            raw = await channel.get_underlay_channel()
            main = await raw.queue_declare(self.queue, passive=True)
            dead = await raw.queue_declare(self.dead_queue, passive=True)
        held = sum(1 for message in self._held if not _is_stale(message))
        return QueueDepth(ready=int(main.message_count or 0) + held, dead=int(dead.message_count or 0))

    async def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """The first ``limit`` dead letters, left in place.

        Browsing is basic.get without ack, then the channel closes and the broker requeues them
        in their original order. Meanwhile they are invisible to other readers of the dead-letter
        queue, and they come back flagged redelivered.
        """
        letters: list[DeadLetter] = []
        async with self._channel(f"reading dead letters of {self.queue!r}") as channel:
            dead = await channel.declare_queue(self.dead_queue, passive=True)
            while len(letters) < limit:
                message = await dead.get(no_ack=False, fail=False)
                if message is None:
                    break
                letters.append(self._dead_letter(message))
            # closing the channel requeues everything fetched
        return letters

    async def replay(self, limit: int = 100) -> int:
        """basic.get from the dead-letter queue, publish (confirmed) to the queue, then ack."""
        moved = 0
        async with self._channel(f"replaying dead letters of {self.queue!r}") as channel:
            dead = await channel.declare_queue(self.dead_queue, passive=True)
            while moved < limit:
                message = await dead.get(no_ack=False, fail=False)
                if message is None:
                    break
                await self.publish(message.body)  # confirmed before the dead letter goes
                await message.ack()
                moved += 1
        if moved:
            log.info("replayed %d dead-lettered messages to %s", moved, self.queue)
        return moved

    def _dead_letter(self, message: AbstractIncomingMessage) -> DeadLetter:
        headers = message.headers or {}
        reason = str(headers.get("x-first-death-reason", "unknown"))
        count = headers.get("x-delivery-count")
        if reason == "delivery_limit":
            return DeadLetter(message.body, self.delivery_limit, DELIVERY_LIMIT_REASON)
        deliveries = count + 1 if isinstance(count, int) else 1
        return DeadLetter(message.body, deliveries, reason)  # "rejected", "expired", "maxlen"
