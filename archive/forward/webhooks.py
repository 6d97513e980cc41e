"""Webhooks: the archive's events POSTed to configured URLs, signed, with retries.

Each webhook URL has its own durable queue (a SQLite file embedded, ``<ARCHIVE_QUEUE_NAME>.webhook.
<digest>`` on RabbitMQ) that event sources publish to; the forwarder role delivers it: up to 100
events per request as ``{"events": [...]}`` (application/json), with
``X-Archive-Signature: sha256=<hex HMAC-SHA256 of the body with ARCHIVE_WEBHOOK_SECRET>`` when a
secret is set, and ``X-Archive-Delivery`` (the attempt). A 2xx answer acknowledges the events; any
other answer or a network error returns them with backoff (2 s doubling to 5 min), to the queue's
dead letters after ARCHIVE_FORWARD_ATTEMPTS deliveries. At least once: a receiver deduplicates by
the event's content if it must.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging

import aiohttp

from archive import metrics
from archive.core.errors import BackendUnavailable
from archive.core.ports import Delivery, MessageQueue
from archive.core.retry import Backoff, pause

log = logging.getLogger(__name__)

BATCH = 100
REFUSED = Backoff(first=2.0, cap=300.0)


def signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


class WebhookDelivery:
    def __init__(self, url: str, secret: str, queue: MessageQueue, stopping: asyncio.Event, timeout: float) -> None:
        self.url = url
        self.secret = secret
        self.queue = queue
        self._stopping = stopping
        self.timeout = aiohttp.ClientTimeout(total=timeout)

    async def run(self) -> None:
        log.info("webhook delivery started", extra={"webhook": self.url})
        async with aiohttp.ClientSession(timeout=self.timeout) as session:
            while not self._stopping.is_set():
                try:
                    deliveries = await self.queue.receive(BATCH, 1.0)
                    if deliveries:
                        await self._deliver(session, deliveries)
                except BackendUnavailable as exc:
                    log.warning("webhook queue unavailable", extra={"webhook": self.url, "reason": str(exc)})
                    await self._sleep(1.0)
                except Exception as exc:
                    log.error("webhook loop error; continuing", extra={"webhook": self.url, "error": type(exc).__name__})
                    await self._sleep(1.0)

    async def _sleep(self, seconds: float) -> None:
        await pause(self._stopping, seconds)

    async def _deliver(self, session: aiohttp.ClientSession, deliveries: list[Delivery]) -> None:
        events = []
        for d in deliveries:
            try:
                events.append(json.loads(d.body))
            except ValueError:
                events.append({"type": "unreadable"})
        body = json.dumps({"events": events}, separators=(",", ":")).encode("utf-8")
        attempt = max(d.delivery_count for d in deliveries)
        headers = {"Content-Type": "application/json", "X-Archive-Delivery": str(attempt)}
        if self.secret:
            headers["X-Archive-Signature"] = signature(self.secret, body)
        try:
            async with session.post(self.url, data=body, headers=headers) as response:
                ok = 200 <= response.status < 300
                detail = f"HTTP {response.status}"
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            ok, detail = False, type(exc).__name__
        metrics.WEBHOOK_DELIVERIES.labels("delivered" if ok else "failed").inc()
        if not ok:
            log.warning("webhook delivery failed; will retry", extra={"webhook": self.url, "reason": detail,
                                                                      "attempt": attempt, "events": len(events)})
        for d in deliveries:
            try:
                if ok:
                    await d.ack()
                else:
                    await d.retry(REFUSED.delay(d.delivery_count))
            except BackendUnavailable as exc:
                log.warning("could not settle a webhook event", extra={"reason": str(exc)})
