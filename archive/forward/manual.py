"""Manual send: a forward job (rule "manual") for every stored instance of a study or series,
on the destination's queue, as a rule's jobs are (``dicom-archive send``,
``POST /api/studies/{study}/send``)."""

from __future__ import annotations

import time

from archive.core.levels import Level
from archive.core.ports import Catalog
from archive.core.query import Query, SingleValue
from archive.core.routing import ForwardJob
from archive.forward.router import QueueFor

MAX_INSTANCES = 1_000_000


async def send_study(catalog: Catalog, queue_for: QueueFor, destination: str, study_uid: str,
                     series_uid: str | None = None) -> int:
    """Queue the instances (UIDs validated by the caller); how many (0: nothing matched)."""
    matchers = [SingleValue("StudyInstanceUID", study_uid)]
    if series_uid:
        matchers.append(SingleValue("SeriesInstanceUID", series_uid))
    instances = await catalog.locate(Query(Level.IMAGE, tuple(matchers), limit=MAX_INSTANCES))
    if not instances:
        return 0
    queue = await queue_for(destination)
    now = time.time()
    for inst in instances:
        await queue.publish(ForwardJob.of_instance(inst, destination, None, now).to_bytes())
    return len(instances)
