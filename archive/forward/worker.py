"""The forwarder: one consumer per configured peer, each on the destination's own queue.

For a batch of jobs (at most ARCHIVE_FORWARD_BATCH): the ledger says which instances were sent
there already with the same checksum (acknowledged, not sent again); the others are streamed
from the object store into spool files (checksum verified) and sent on one association; the
outcomes go to the ledger, then the jobs are settled: sent -> ack; a failure status -> back to
the queue with backoff, dead-lettered after ARCHIVE_FORWARD_ATTEMPTS deliveries; deleted
meanwhile -> ack ("gone").

A destination that cannot be reached (connection refused, association rejected or aborted) has
its jobs in hand returned to the queue and is then probed with C-ECHO, backing off to a minute,
before anything more is taken from its queue: an outage costs each job at most one attempt,
holds nothing else up (every destination has its own queue and consumer, the indexer only
publishes), and ends with the queue drained in order.

Delivery is at least once. The window in which an instance can reach a destination twice is
between the peer's C-STORE response and the ledger write after the batch: a crash there (at most
one batch, ARCHIVE_FORWARD_BATCH instances, usually well under a second) re-sends that batch.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

from archive import metrics
from archive.ae_config import AEConfig
from archive.core.audit import Action, AuditTrail, EventKind, StudyTally, record_all
from archive.core.events import Event, EventSink, EventType, NoEvents
from archive.core.errors import BackendUnavailable, ObjectNotFound, PoisonMessage
from archive.core.identity import Principal, PrincipalKind
from archive.core.ports import Delivery, ForwardLedger, ForwardRecord, MessageQueue, ObjectStore
from archive.core.retry import Backoff, pause, retrying
from archive.core.routing import ForwardJob
from archive.forward.router import QueueFor
from archive.forward.send import DicomSender, Item, Result, Unreachable, instance_of
from archive.forward.stow import WebSender
from archive.forward.webhooks import WebhookDelivery
from archive.forward.targets import Target, targets
from archive.query.objects import RetrieveError, spool
from archive.settings import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")

BACKEND_DOWN = Backoff(first=0.2, cap=30.0)
REFUSED = Backoff(first=2.0, cap=300.0)  # a job refused by the peer: 2 s, 4 s, ... 5 min
PEER_DOWN = Backoff(first=1.0, cap=60.0)  # probing an unreachable destination
RETURN_DELAY = 1.0  # jobs in hand when the destination went away


class Sender(Protocol):
    async def send(self, items: Sequence[Item]) -> list[Result]:
        """A result per item it got to; Unreachable when nothing could be sent."""

    async def reachable(self) -> bool: ...

    async def close(self) -> None: ...


class DestinationForwarder:
    def __init__(self, target: Target, sender: Sender, queue: MessageQueue, store: ObjectStore,
                 ledger: ForwardLedger, settings: Settings, spool_dir: Path, stopping: asyncio.Event,
                 audit: AuditTrail, events: EventSink | None = None) -> None:
        self.target = target
        self.events: EventSink = events or NoEvents()
        self.sender = sender
        self.audit = audit
        self._us = Principal(PrincipalKind.AE, settings.aet, socket.gethostname())
        self._them = Principal(PrincipalKind.AE, target.name, target.host)
        self.queue = queue
        self.store = store
        self.ledger = ledger
        self.settings = settings
        self.spool_dir = spool_dir
        self._stopping = stopping
        self._next_depth = 0.0

    @property
    def name(self) -> str:
        return self.target.name

    async def run(self) -> None:
        # every series a panel or an alert reads exists from the start, at 0 (a rate sees the first jobs)
        for outcome in ("sent", "already_sent", "failed", "gone"):
            metrics.FORWARDED.labels(self.name, outcome)
        metrics.FORWARD_UNREACHABLE.labels(self.name)
        metrics.FORWARD_SECONDS.labels(self.name)
        metrics.FORWARD_QUEUED.labels(self.name)
        where = self.target.dicom.address if self.target.dicom is not None else self.target.url
        log.info("forwarding started", extra={"destination": self.name, "address": where})
        while not self._stopping.is_set():
            try:
                await self._depth()
                deliveries = await self.queue.receive(self.settings.forward_batch, 1.0)
                if deliveries:
                    await self.handle(deliveries)
            except Unreachable as exc:
                metrics.FORWARD_UNREACHABLE.labels(self.name).inc()
                log.warning("destination unreachable; its jobs wait in its queue",
                            extra={"destination": self.name, "reason": str(exc)})
                await self._wait_reachable()
            except BackendUnavailable as exc:
                log.warning("backend unavailable", extra={"destination": self.name, "reason": str(exc)})
                await self._sleep(1.0)
            except Exception as exc:
                log.error("forwarder loop error; continuing", extra={"destination": self.name,
                                                                     "error": type(exc).__name__})
                await self._sleep(1.0)
        await self.sender.close()
        log.info("forwarding stopped", extra={"destination": self.name})

    async def _sleep(self, seconds: float) -> None:
        await pause(self._stopping, seconds)

    async def _depth(self) -> None:
        now = time.monotonic()
        if now < self._next_depth:
            return
        self._next_depth = now + 5.0
        depth = await self.queue.depth()
        metrics.FORWARD_READY.labels(self.name).set(depth.ready)
        metrics.FORWARD_DEAD.labels(self.name).set(depth.dead)

    async def _wait_reachable(self) -> None:
        attempt = 0
        while not self._stopping.is_set():
            attempt += 1
            await self._sleep(PEER_DOWN.delay(attempt))
            try:
                if await self.sender.reachable():
                    log.info("destination reachable again", extra={"destination": self.name})
                    return
            except Exception as exc:  # a TLS context that fails, a name that does not resolve
                log.warning("destination probe failed", extra={"destination": self.name,
                                                               "error": type(exc).__name__})
            metrics.FORWARD_UNREACHABLE.labels(self.name).inc()  # each failed probe: a long outage keeps counting
            try:
                await self._depth()  # the queue gauges stay current while the destination is down
            except BackendUnavailable:
                pass

    async def handle(self, deliveries: Sequence[Delivery]) -> None:
        """Send, record and settle one batch (every delivery is settled, or left to the lease when
        this process stops while the backends are down)."""
        jobs: list[tuple[Delivery, ForwardJob]] = []
        for delivery in deliveries:
            try:
                jobs.append((delivery, ForwardJob.from_bytes(delivery.body)))
            except PoisonMessage as exc:
                log.error("unusable forward job; dead-lettered after the attempts",
                          extra={"destination": self.name, "reason": str(exc)[:200]})
                await delivery.retry(RETURN_DELAY)
        if not jobs:
            return
        metrics.FORWARD_OLDEST.labels(self.name).set(max(0.0, time.time() - min(j.queued_at for _, j in jobs)))
        try:
            done = await self._retry_backends(self.ledger.delivered, self.name,
                                              [j.sop_instance_uid for _, j in jobs])
        except BackendUnavailable:
            return  # stopping: unacked, redelivered later
        records: list[ForwardRecord] = []
        settle: list[tuple[Delivery, ForwardJob, str]] = []  # outcome: sent | already_sent | failed | gone | again
        items: list[Item] = []
        by_uid: dict[str, tuple[Delivery, ForwardJob]] = {}
        try:
            for delivery, job in jobs:
                if done.get(job.sop_instance_uid) == job.sha256 or job.sop_instance_uid in by_uid:
                    settle.append((delivery, job, "already_sent"))
                    continue
                try:
                    path = await spool(self.store, instance_of(job), self.spool_dir)
                except ObjectNotFound:
                    records.append(self._record(job, "gone", "deleted before it was sent", delivery))
                    settle.append((delivery, job, "gone"))
                    continue
                except RetrieveError as exc:
                    records.append(self._record(job, "failed", str(exc), delivery))
                    settle.append((delivery, job, "failed"))
                    continue
                by_uid[job.sop_instance_uid] = (delivery, job)
                items.append(Item(job, path))
            results: list[Result] = []
            if items:
                started = time.perf_counter()
                try:
                    results = await self.sender.send(items)
                except Unreachable:
                    for delivery, _job in by_uid.values():
                        await delivery.retry(RETURN_DELAY)
                    by_uid.clear()
                    await self._settle(settle, records)
                    raise
                finally:
                    metrics.FORWARD_SECONDS.labels(self.name).observe(time.perf_counter() - started)
        finally:
            for item in items:
                item.path.unlink(missing_ok=True)
        for result in results:
            delivery, job = by_uid.pop(result.job.sop_instance_uid)
            outcome = "sent" if result.sent else "failed"
            records.append(self._record(job, outcome, result.detail, delivery))
            settle.append((delivery, job, outcome))
        for delivery, job in by_uid.values():  # the association broke before these
            settle.append((delivery, job, "again"))
        await self._settle(settle, records)

    async def _settle(self, settle: list[tuple[Delivery, ForwardJob, str]], records: list[ForwardRecord]) -> None:
        try:
            await self._retry_backends(self.ledger.record_forwards, records)
        except BackendUnavailable:
            return  # stopping before the ledger took them: unacked, sent again (the window above)
        tally = StudyTally()
        for delivery, job, outcome in settle:
            if outcome in ("sent", "failed"):
                tally.add(job.study_uid, job.patient_id, job.sop_class_uid, ok=outcome == "sent")
            try:
                if outcome in ("sent", "already_sent", "gone"):
                    await delivery.ack()
                elif outcome == "failed":
                    await delivery.retry(REFUSED.delay(delivery.delivery_count))
                else:
                    await delivery.retry(RETURN_DELAY)
            except BackendUnavailable as exc:
                log.warning("could not settle a forward job; it comes back", extra={"reason": str(exc)})
            if outcome != "again":
                metrics.FORWARDED.labels(self.name, outcome).inc()
            if outcome == "failed":
                last = delivery.delivery_count >= self.settings.forward_attempts
                log.warning("forward refused" + ("; dead-lettered" if last else "; will retry"),
                            extra={"destination": self.name, "sop_instance_uid": job.sop_instance_uid,
                                   "study_uid": job.study_uid, "attempt": delivery.delivery_count})
        # PS3.15 A.5.3.7: DICOM Instances Transferred, per study and outcome, the archive sending
        record_all(self.audit, tally.events(EventKind.INSTANCES_TRANSFERRED, self._us, action=Action.READ,
                                            service=self.settings.aet, peer=self._them, detail="forward refused"))
        await self._publish(settle)

    async def _publish(self, settle: list[tuple[Delivery, ForwardJob, str]]) -> None:
        """forward.succeeded / forward.failed, one event per study and outcome of the batch."""
        counts: dict[tuple[str, EventType], int] = {}
        for _, job, outcome in settle:
            kind = {"sent": EventType.FORWARD_SUCCEEDED, "failed": EventType.FORWARD_FAILED}.get(outcome)
            if kind is not None:
                counts[(job.study_uid, kind)] = counts.get((job.study_uid, kind), 0) + 1
        now = time.time()
        try:
            await self.events.publish([Event(kind, now, study, destination=self.name, instances=n)
                                       for (study, kind), n in counts.items()])
        except BackendUnavailable as exc:  # the ledger has the outcomes
            log.warning("forward events not published", extra={"destination": self.name, "reason": str(exc)})

    def _record(self, job: ForwardJob, outcome: str, detail: str, delivery: Delivery) -> ForwardRecord:
        return ForwardRecord(self.name, job.sop_instance_uid, job.study_uid, job.series_uid, job.rule, job.sha256,
                             outcome, detail, time.time(), delivery.delivery_count)

    async def _retry_backends(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        result: T = await retrying(BACKEND_DOWN, BackendUnavailable, give_up=self._stopping.is_set,
                                   sleep=self._sleep)(fn, *args)
        return result


class Forwarder:
    """One consumer per destination: every configured one (DICOM peers, DICOMweb entries) and every
    DICOMweb URL the rules name (new ones of a reloaded rules file start their own)."""

    def __init__(self, names: Callable[[], list[str]], config: AEConfig, queue_for: QueueFor, store: ObjectStore,
                 ledger: ForwardLedger, settings: Settings, audit: AuditTrail, events: EventSink | None = None,
                 webhook_queue: QueueFor | None = None) -> None:
        self.names = names
        self.events = events
        self.webhook_queue = webhook_queue
        self.config = config
        self.queue_for = queue_for
        self.store = store
        self.ledger = ledger
        self.settings = settings
        self.audit = audit
        self.spool_dir = Path(settings.data_dir) / "spool" / "forward"
        self._stopping = asyncio.Event()
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def stop(self) -> None:
        self._stopping.set()

    def _sender(self, target: Target) -> Sender:
        if target.dicom is not None:
            return DicomSender(target.dicom, self.settings)
        return WebSender(target, self.settings.network_timeout)

    async def run(self) -> None:
        shutil.rmtree(self.spool_dir, ignore_errors=True)  # what a killed forwarder left
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        hooks = []
        if self.webhook_queue is not None:
            for url in self.settings.webhooks:
                delivery = WebhookDelivery(url, self.settings.webhook_secret, await self.webhook_queue(url),
                                           self._stopping, self.settings.network_timeout)
                hooks.append(asyncio.create_task(delivery.run(), name="webhook"))
        while not self._stopping.is_set():
            for target in targets(self.names(), self.config):
                if target.name in self._tasks:
                    continue
                try:
                    queue = await self.queue_for(target.name)
                except BackendUnavailable as exc:
                    log.warning("forward queue unavailable", extra={"destination": target.name, "reason": str(exc)})
                    continue
                worker = DestinationForwarder(target, self._sender(target), queue, self.store, self.ledger,
                                              self.settings, self.spool_dir, self._stopping, self.audit, self.events)
                self._tasks[target.name] = asyncio.create_task(worker.run(), name=f"forward-{target.name[:40]}")
            if not self._tasks and not hooks:
                log.warning("forwarder: no destinations (ARCHIVE_PEERS, ARCHIVE_AE_CONFIG, rules); waiting")
            await pause(self._stopping, 2.0)
        await asyncio.gather(*self._tasks.values(), *hooks, return_exceptions=True)
