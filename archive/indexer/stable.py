"""Study-stable detection, shared by every indexer (no timer in one process).

Each indexed batch touches its studies (archive.core.ports.StudyStability): due once no new
instance was indexed for ARCHIVE_STUDY_STABLE_SECONDS (the change feed's ``stable`` entries) or
a stable rule's ``stable_seconds``. Every indexer sweeps once a second: the feed's due studies
are written as ``stable`` and forgotten in one catalog transaction (once each), and each stable
rule's due studies are claimed under a lease, their matching instances queued for the rule's
destinations, then released (a crash in between lets the lease run out: sent again, the
forwarder's ledger skips what arrived). A study that receives more instances later is stable again.
"""

from __future__ import annotations

import asyncio
import logging
import time

from archive import metrics
from archive.core.errors import BackendUnavailable
from archive.core.events import Event, EventSink, EventType, NoEvents
from archive.core.ports import StudyStability
from archive.core.retry import pause
from archive.forward.router import Router

log = logging.getLogger(__name__)

SWEEP_SECONDS = 1.0
LEASE_SECONDS = 300.0


class StableSweeper:
    def __init__(self, stability: StudyStability, router: Router | None, events: EventSink | None = None, *,
                 interval: float = SWEEP_SECONDS, lease: float = LEASE_SECONDS) -> None:
        self.stability = stability
        self.events: EventSink = events or NoEvents()
        self.router = router
        self.interval = interval
        self.lease = lease

    async def run(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            try:
                await self.sweep(time.time())
            except BackendUnavailable as exc:
                log.warning("study-stable sweep: backend unavailable", extra={"reason": str(exc)})
            except Exception as exc:
                log.error("study-stable sweep failed; continuing", extra={"error": type(exc).__name__})
            await pause(stopping, self.interval)

    async def sweep(self, now: float) -> None:
        studies = await self.stability.record_stable(now)
        if studies:
            metrics.STUDIES_STABLE.inc(len(studies))
            log.info("studies stable", extra={"study_uids": studies[:20], "count": len(studies)})
            try:  # the feed has them already (committed): an event lost to a broker outage stays lost
                await self.events.publish([Event(EventType.STUDY_STABLE, now, study) for study in studies])
            except BackendUnavailable as exc:
                log.warning("study.stable events not published", extra={"reason": str(exc), "count": len(studies)})
        if self.router is None:
            return
        for rule in self.router.rules.current().stable_rules:
            claimed = await self.stability.claim_stable(rule.watcher, now, self.lease)
            done = []
            for study, due in claimed:
                queued = await self.router.route_study(rule, study)
                log.info("stable study queued for forwarding", extra={"rule": rule.name, "study_uid": study,
                                                                      "jobs": queued})
                done.append((study, due))
            await self.stability.release_stable(rule.watcher, done)
