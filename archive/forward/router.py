"""The indexer's hook: after a batch is committed, queue a forward job for every destination of
every rule that applies (never on the C-STORE path). The jobs are published before the index
messages are acknowledged, so a crash in between re-publishes them on redelivery; the
forwarder's ledger keeps that from sending an instance twice."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence

from archive import metrics
from archive.core.models import IndexMessage
from archive.core.ports import MessageQueue
from archive.core.routing import ForwardJob
from archive.forward.rules_file import RulesFile

QueueFor = Callable[[str], Awaitable[MessageQueue]]


class Router:
    def __init__(self, rules: RulesFile, queue_for: QueueFor) -> None:
        self.rules = rules
        self.queue_for = queue_for

    async def route(self, messages: Sequence[IndexMessage]) -> int:
        """Queue the jobs of ``messages``; how many. Raises BackendUnavailable when a queue does not
        take them (the caller keeps the batch and tries again)."""
        rules = self.rules.current()
        if not rules.rules:
            return 0
        now = time.time()
        by_destination: dict[str, list[ForwardJob]] = {}
        for message in messages:
            for job in rules.jobs(message, now):
                by_destination.setdefault(job.destination, []).append(job)
        for destination, jobs in by_destination.items():
            queue = await self.queue_for(destination)
            await asyncio.gather(*(queue.publish(job.to_bytes()) for job in jobs))
            metrics.FORWARD_QUEUED.labels(destination).inc(len(jobs))
        return sum(len(j) for j in by_destination.values())
