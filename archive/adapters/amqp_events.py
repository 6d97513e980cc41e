"""Events on RabbitMQ: the durable topic exchange ``archive.events``, the event type as routing key,
persistent messages on a channel with publisher confirms (``publish`` returns after the broker's
ack). Subscribers bind queues of their own (e.g. ``study.*``); an event no queue is bound for is
dropped by the broker, as a topic exchange does (not mandatory: it is not returned to us, which
cost the indexer and the broker a copy of every event while nobody listens)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import aio_pika
from aio_pika.abc import AbstractRobustChannel, AbstractRobustConnection

from archive.core.errors import BackendUnavailable
from archive.core.events import EXCHANGE, Event

_ERRORS = (aio_pika.exceptions.AMQPError, ConnectionError, OSError, RuntimeError, TimeoutError)


class AmqpEvents:
    name = "amqp-events"

    def __init__(self, url: str, *, exchange: str = EXCHANGE, confirm_timeout: float = 10.0) -> None:
        self.url = url
        self.exchange_name = exchange
        self.confirm_timeout = confirm_timeout
        self._conn: AbstractRobustConnection | None = None
        self._channel: AbstractRobustChannel | None = None
        self._exchange: aio_pika.abc.AbstractExchange | None = None
        self._lock = asyncio.Lock()

    async def _ready(self) -> aio_pika.abc.AbstractExchange:
        async with self._lock:
            if self._exchange is None:
                self._conn = await aio_pika.connect_robust(self.url, timeout=self.confirm_timeout)
                self._channel = await self._conn.channel(publisher_confirms=True)
                assert self._channel is not None
                self._exchange = await self._channel.declare_exchange(
                    self.exchange_name, aio_pika.ExchangeType.TOPIC, durable=True)
            return self._exchange

    async def migrate(self) -> None:
        try:
            await asyncio.wait_for(self._ready(), self.confirm_timeout)
        except _ERRORS as exc:
            raise BackendUnavailable("events", f"declaring exchange {self.exchange_name!r}: {exc}") from exc

    async def publish(self, events: Sequence[Event]) -> None:
        if not events:
            return
        try:
            exchange = await asyncio.wait_for(self._ready(), self.confirm_timeout)
            await asyncio.wait_for(asyncio.gather(*(
                exchange.publish(aio_pika.Message(e.to_bytes(), content_type="application/json",
                                                  delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                                 routing_key=e.type.value, mandatory=False) for e in events)), self.confirm_timeout)
        except _ERRORS as exc:
            raise BackendUnavailable("events", f"publishing to {self.exchange_name!r}: {exc}") from exc

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
        self._conn = self._channel = self._exchange = None
