"""The indexer: consume index messages in batches and write catalog and search.

- Acks only after the catalog commit and the search write both succeeded.
- Transient failures (a backend down) keep the batch and retry it with jittered
  exponential backoff; the messages stay unacknowledged, so nothing is lost if
  the indexer dies meanwhile, and no delivery attempt is burnt while waiting.
- Any other failure is isolated to its message (the batch is split), which is
  given back to the queue; after the delivery limit the queue dead-letters it.
- While messages keep coming, a batch smaller than ``batch_size`` waits ``linger`` for more
  (fewer, larger transactions; acks of a batch go together, one queue transaction embedded).
- Upserts are keyed on SOP Instance UID, so redeliveries never duplicate.
- With forwarding rules, the jobs of the committed instances are queued before the ack.
- A message received before its instance's tombstone (a delete) is dropped by the catalog
  upsert and kept out of the search index too, then acknowledged.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

from archive import metrics
from archive.core.changes import STABLE_FEED, ChangeAction
from archive.core.events import Event, EventSink, EventType, NoEvents
from archive.core.errors import BackendUnavailable, PoisonMessage
from archive.core.flatten import flatten
from archive.core.models import IndexMessage
from archive.core.retry import Backoff, pause, retrying
from archive.core.ports import Catalog, Delivery, MessageQueue, SearchIndex, StablePending, StudyStability
from archive.core.records import CatalogEntry
from archive.forward.router import Router
from archive.indexer.stable import StableSweeper

log = logging.getLogger(__name__)

POISON_RETRY_DELAY = 1.0
FLOWING_SECONDS = 1.0  # a batch within this long of the one before lingers (ARCHIVE_INDEXER_LINGER)
BACKEND_DOWN = Backoff(first=0.2, cap=30.0)  # a batch waits, unacknowledged, until the backends answer


@dataclass
class _Item:
    delivery: Delivery
    message: IndexMessage


class Indexer:
    def __init__(
        self,
        queue: MessageQueue,
        catalog: Catalog,
        search: SearchIndex,
        *,
        batch_size: int = 200,
        receive_timeout: float = 0.5,
        linger: float = 0.0,
        router: Router | None = None,
        stability: StudyStability | None = None,
        stable_seconds: float = 60.0,
        events: EventSink | None = None,
    ) -> None:
        self.queue = queue
        self.catalog = catalog
        self.search = search
        self.batch_size = batch_size
        self.receive_timeout = receive_timeout
        self.linger = linger
        self._flowing_until = 0.0  # messages received before this (monotonic) time: linger
        self.router = router
        self.stability = stability
        self.stable_seconds = stable_seconds
        self.events: EventSink = events or NoEvents()
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        """Ask the loop to finish its current batch and return."""
        self._stopping.set()

    async def run(self) -> None:
        sweeper = None
        if self.stability is not None:
            sweeper = asyncio.create_task(StableSweeper(self.stability, self.router, self.events).run(self._stopping),
                                          name="study-stable")
        try:
            await self._consume()
        finally:
            if sweeper is not None:
                await sweeper

    async def _consume(self) -> None:
        log.info("indexer started", extra={"queue": self.queue.name, "catalog": self.catalog.name,
                                           "search": self.search.name})
        while not self._stopping.is_set():
            try:
                deliveries = await self._next_batch()
                if deliveries:
                    await self.handle(deliveries)
            except BackendUnavailable as exc:
                log.warning("queue unavailable", extra={"reason": str(exc)})
                await self._sleep(1.0)
            except Exception as exc:
                # Never let the loop die silently: unacked messages come back; keep going.
                # Logged by type only (driver messages can quote values).
                log.error("indexer loop error; continuing", extra={"error": type(exc).__name__})
                await self._sleep(1.0)
        log.info("indexer stopped")

    async def _next_batch(self) -> list[Delivery]:
        """What is waiting; while messages keep coming and that is less than a batch, also what arrives
        within ``linger``. While instances trickle in, batches grow from a few messages to dozens: fewer
        transactions for the same instances, each searchable up to ``linger`` later. The first message
        after a quiet second is written at once (one instance stored and looked at is not delayed)."""
        deliveries = await self.queue.receive(self.batch_size, self.receive_timeout)
        if not deliveries:
            return deliveries
        now = time.monotonic()
        flowing, self._flowing_until = now < self._flowing_until, now + FLOWING_SECONDS
        if not flowing or len(deliveries) >= self.batch_size or self.linger <= 0:
            return deliveries
        await self._sleep(self.linger)
        try:
            deliveries += await self.queue.receive(self.batch_size - len(deliveries), 0)
        except BackendUnavailable as exc:  # what is claimed already is written
            log.warning("queue unavailable", extra={"reason": str(exc)})
        except Exception as exc:  # the same: never leave claimed messages unhandled until their lease ends
            log.error("queue receive failed; writing what was received", extra={"error": type(exc).__name__})
        return deliveries

    async def _sleep(self, seconds: float) -> None:
        await pause(self._stopping, seconds)

    async def handle(self, deliveries: Sequence[Delivery]) -> None:
        items: list[_Item] = []
        for delivery in deliveries:
            try:
                items.append(_Item(delivery, IndexMessage.from_bytes(delivery.body)))
            except PoisonMessage as exc:
                await self._poison(delivery, None, exc)
        if items:
            await self._write_with_retry(items)

    async def _write_with_retry(self, items: list[_Item]) -> None:
        def kept(attempt: int, delay: float, exc: BaseException | None) -> None:
            metrics.INDEX_FAILURES.labels("transient").inc()
            log.warning("backend unavailable, batch kept for retry",
                        extra={"reason": str(exc), "attempt": attempt, "retry_in": round(delay, 2),
                               "batch": len(items)})

        try:
            await retrying(BACKEND_DOWN, BackendUnavailable, give_up=self._stopping.is_set, sleep=self._sleep,
                           on_retry=kept)(self._write, items)
        except BackendUnavailable:
            return  # stopping: unacked, the queue redelivers them to the next indexer
        except Exception as exc:
            if len(items) > 1:
                # Isolate the bad message(s): write one by one.
                for item in items:
                    await self._write_with_retry([item])
                return
            await self._poison(items[0].delivery, items[0].message, exc)
            return
        # together: the embedded queue commits the batch's acks in one transaction
        await asyncio.gather(*(self._ack(item.delivery) for item in items))

    async def _write(self, items: list[_Item]) -> None:
        started = time.perf_counter()
        # Last message per SOP Instance UID wins within a batch.
        latest: dict[str, IndexMessage] = {}
        for item in items:
            latest[item.message.sop_instance_uid] = item.message
        messages = list(latest.values())
        fresh = [m for m in messages if not m.rebuild]
        rebuilt = [m for m in messages if m.rebuild]  # verify --repair: derived data only
        written = await self._store(fresh, changes=True) + await self._store(rebuilt, changes=False)
        done = time.time()
        if fresh:
            await self._after_commit(done, written)
        metrics.INDEX_BATCH_SECONDS.observe(time.perf_counter() - started)
        for m in messages:
            metrics.TIME_TO_SEARCHABLE.observe(max(0.0, done - m.received_at))
        metrics.INDEXED.inc(len(messages))  # last: a scrape that counts the batch sees its other metrics too

    async def _store(self, messages: list[IndexMessage], *, changes: bool) -> list[tuple[IndexMessage, str]]:
        """Catalog (with change-feed entries when ``changes``) then search index; each message written
        with its action (created, updated, unchanged), those of deleted instances left out."""
        if not messages:
            return []
        entries = [CatalogEntry.from_message(m) for m in messages]
        outcome = await (self.catalog.upsert(entries) if changes else self.catalog.upsert(entries, changes=False))
        if outcome.dropped:
            # late or redelivered messages of deleted instances: their tombstones keep them out
            log.info("index messages of deleted instances dropped",
                     extra={"sop_instance_uids": outcome.dropped[:20], "count": len(outcome.dropped)})
            dropped = set(outcome.dropped)
            messages = [m for m in messages if m.sop_instance_uid not in dropped]
        now = time.time()
        await self.search.upsert([flatten(m, indexed_at=now) for m in messages])
        action = {uid: ChangeAction.CREATED.value for uid in outcome.created} | {
            uid: ChangeAction.UPDATED.value for uid in outcome.updated}
        return [(m, action.get(m.sop_instance_uid, "unchanged")) for m in messages]

    async def _after_commit(self, done: float, written: list[tuple[IndexMessage, str]]) -> None:
        """Events, forwarding rules and study-stable notes of newly received instances (not rebuilds)."""
        messages = [m for m, _ in written if not m.rebuild]
        # every instance written, also an identical one again (a re-send, or a redelivery after a crash
        # before this publish): at least once
        await self.events.publish([Event(EventType.INSTANCE_STORED, done, m.study_uid, m.series_uid, m.sop_instance_uid,
                                         action=action) for m, action in written if not m.rebuild])
        if self.router is not None:  # after the commit, before the ack (archive.forward.router)
            await self.router.route(messages)
        if self.stability is not None and messages:  # archive.indexer.stable
            pending = [StablePending(STABLE_FEED, study, done + self.stable_seconds)
                       for study in dict.fromkeys(m.study_uid for m in messages)]
            if self.router is not None:
                pending += self.router.stable_due(messages, done)
            await self.stability.touch_studies(pending)

    async def _ack(self, delivery: Delivery) -> None:
        try:
            await delivery.ack()
        except BackendUnavailable as exc:
            # The message will be delivered again; the upserts are idempotent.
            log.warning("ack failed; message will be redelivered", extra={"reason": str(exc)})

    async def _poison(self, delivery: Delivery, message: IndexMessage | None, exc: Exception) -> None:
        metrics.INDEX_FAILURES.labels("poison").inc()
        log.error(
            "index message failed; returned to the queue (dead-lettered after the delivery limit)",
            extra={
                "sop_instance_uid": message.sop_instance_uid if message else None,
                "study_uid": message.study_uid if message else None,
                "delivery_count": delivery.delivery_count,
                "error": type(exc).__name__,
            },
        )
        try:
            await delivery.retry(POISON_RETRY_DELAY)
        except BackendUnavailable as err:
            log.warning("could not return message to the queue", extra={"reason": str(err)})
