"""A child process for the queue crash tests; the test kills it with SIGKILL.

    python -m tests.contract.queue_crash_helper publish '<spec json>' COUNT
        publishes b"seq-<n>" from 4 concurrent tasks and prints "confirmed <n>" after each
        publish returned (flushed at once), so the parent knows what must survive the kill.
    python -m tests.contract.queue_crash_helper consume '<spec json>' COUNT
        receives COUNT messages, prints "claimed <body>" for each, then "holding" and sleeps
        without settling them.

spec: {"kind": "sqlite", "path": ..., "lease_seconds": ...} or {"kind": "amqp", "url": ..., "queue": ...}
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from archive.adapters.amqp_queue import AmqpQueue
from archive.adapters.sqlite_queue import SqliteQueue
from archive.core.ports import Delivery, MessageQueue


def open_queue(spec: dict[str, Any]) -> MessageQueue:
    if spec["kind"] == "sqlite":
        return SqliteQueue(
            Path(spec["path"]), delivery_limit=spec.get("delivery_limit", 5),
            lease_seconds=spec.get("lease_seconds", 300.0),
        )
    return AmqpQueue(spec["url"], spec["queue"], delivery_limit=spec.get("delivery_limit", 5))


async def publish(queue: MessageQueue, count: int) -> None:
    numbers = iter(range(count))

    async def worker() -> None:
        for n in numbers:
            await queue.publish(b"seq-%d" % n)
            sys.stdout.write(f"confirmed {n}\n")
            sys.stdout.flush()

    await asyncio.gather(*(worker() for _ in range(4)))


async def consume(queue: MessageQueue, count: int) -> None:
    held: list[Delivery] = []
    while len(held) < count:
        deliveries = await queue.receive(count - len(held), timeout=10)
        if not deliveries:
            break
        held.extend(deliveries)
        for delivery in deliveries:
            sys.stdout.write(f"claimed {delivery.body.decode()} {delivery.delivery_count}\n")
    sys.stdout.write("holding\n")
    sys.stdout.flush()
    await asyncio.sleep(3600)  # never settles: the parent kills us


async def main(mode: str, spec: dict[str, Any], count: int) -> None:
    queue = open_queue(spec)
    await queue.migrate()
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    if mode == "publish":
        await publish(queue, count)
    else:
        await consume(queue, count)
    await queue.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])))
