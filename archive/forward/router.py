"""The indexer's hook: after a batch is committed, queue a forward job for every destination of
every ``trigger: instance`` rule that applies (never on the C-STORE path), and note the studies of
``trigger: stable`` rules as pending (archive.indexer.stable sends them once they are quiet).

The jobs are published before the index messages are acknowledged, so a crash in between
re-publishes them on redelivery; the forwarder's ledger keeps that from sending an instance twice.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Sequence

from archive import metrics
from archive.core.levels import Level
from archive.core.matching import all_match
from archive.core.models import IndexMessage
from archive.core.ports import Catalog, MessageQueue, StablePending
from archive.core.query import Query, SingleValue
from archive.core.routing import ForwardJob, Rule
from archive.forward.rules_file import RulesFile

QueueFor = Callable[[str], Awaitable[MessageQueue]]
MAX_STUDY_INSTANCES = 1_000_000


class Router:
    def __init__(self, rules: RulesFile, queue_for: QueueFor, catalog: Catalog | None = None) -> None:
        self.rules = rules
        self.queue_for = queue_for
        self.catalog = catalog
        for destination in rules.current().destinations:  # series at 0 from the start
            metrics.FORWARD_QUEUED.labels(destination)

    async def route(self, messages: Sequence[IndexMessage]) -> int:
        """Queue the jobs of ``messages``; how many. Raises BackendUnavailable when a queue does not
        take them (the caller keeps the batch and tries again)."""
        rules = self.rules.current()
        if not rules.rules:
            return 0
        now = time.time()
        jobs = [job for message in messages for job in rules.jobs(message, now)]
        await self.publish(jobs)
        return len(jobs)

    def stable_due(self, messages: Sequence[IndexMessage], now: float) -> list[StablePending]:
        """The (stable rule, study) pairs these messages make pending: due once quiet for the rule's time."""
        return [StablePending(rule.watcher, message.study_uid, now + rule.stable_seconds)
                for rule in self.rules.current().stable_rules for message in messages if rule.applies(message)]

    async def publish(self, jobs: Sequence[ForwardJob]) -> None:
        by_destination: dict[str, list[ForwardJob]] = {}
        for job in jobs:
            by_destination.setdefault(job.destination, []).append(job)
        for destination, batch in by_destination.items():
            queue = await self.queue_for(destination)
            await asyncio.gather(*(queue.publish(job.to_bytes()) for job in batch))
            metrics.FORWARD_QUEUED.labels(destination).inc(len(batch))

    async def route_study(self, rule: Rule, study_uid: str) -> int:
        """A stable study of ``rule``: queue its instances that the rule's conditions match; how many
        (the calling AE condition was checked when the study was made pending)."""
        assert self.catalog is not None
        query = Query(Level.IMAGE, (SingleValue("StudyInstanceUID", study_uid),), limit=MAX_STUDY_INSTANCES)
        instances = await self.catalog.locate(query)
        metadata = {m.sop_instance_uid: m.json for m in await self.catalog.metadata(query)} if rule.matchers else {}
        now = time.time()
        jobs = [ForwardJob.of_instance(inst, destination, rule, now)
                for inst in instances
                if not rule.matchers or all_match(rule.matchers, json.loads(metadata.get(inst.sop_instance_uid, "{}")))
                for destination in rule.destinations]
        await self.publish(jobs)
        return len(jobs)
