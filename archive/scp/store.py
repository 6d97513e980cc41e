"""The one C-STORE path of both receiver engines: the received dataset -> ingest -> Status.

Each engine receives the dataset into a spool file its own way, then calls :func:`store`:
the command's SOP Class must be the abstract syntax of its presentation context, the ingest
service prepares (parse, check, on a worker thread) and commits (object store, then queue;
within ARCHIVE_STORE_TIMEOUT), and the outcome or error becomes a Status through
:mod:`archive.scp.status` (PS3.4 B.2.3). Failures are logged (UIDs and AE titles, never
patient data); every C-STORE is counted and timed. ``prepare`` is how the engine runs
IngestService.prepare off the event loop: the asyncio engine fsyncs the spool file beside it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Protocol

from archive import metrics
from archive.ae_config import Permission
from archive.core.audit import StudyTally
from archive.core.records import text_value
from archive.ingest.service import IngestService, Prepared, Received
from archive.scp.access import AccessPolicy
from archive.scp.status import NOT_AUTHORIZED, OUTCOME_STATUS, SOP_CLASS_NOT_NEGOTIATED, Status, status_for_error

log = logging.getLogger(__name__)

Prepare = Callable[[Received], Awaitable[Prepared]]


class Store(Protocol):
    """(received, abstract syntax of its context, the association's audit tally, the requestor's
    address) -> Status"""

    def __call__(self, received: Received, abstract_syntax: str, tally: StudyTally | None = None,
                 address: str = "") -> Coroutine[Any, Any, Status]: ...


async def store(received: Received, abstract_syntax: str, tally: StudyTally | None = None, address: str = "", *,
                ingest: IngestService, prepare: Prepare, timeout: float, access: AccessPolicy | None = None) -> Status:
    """Archive one C-STORE's dataset; ``abstract_syntax`` is that of the context it came on.

    A calling AE without the store permission (``access``, ARCHIVE_AE_CONFIG) is refused unstored
    with 0x0124 Refused: Not Authorized (PS3.7 Annex C), whichever engine received it.
    ``tally`` counts the instance under its study and patient (from the index message's
    metadata) for the association's audit record (PS3.15 A.5.3.7), emitted when it ends.
    """
    started = time.perf_counter()
    prepared: Prepared | None = None
    try:
        if access is not None and not access.authorize(received.source_aet, address, Permission.STORE):
            status = NOT_AUTHORIZED
        elif received.affected_sop_class_uid != abstract_syntax:
            status = SOP_CLASS_NOT_NEGOTIATED  # not stored, not even parsed
            log.warning("C-STORE refused", extra={
                "calling_aet": received.source_aet, "sop_instance_uid": (received.affected_sop_instance_uid or "")[:64],
                "sop_class_uid": (received.affected_sop_class_uid or "")[:64], "abstract_syntax": abstract_syntax,
                "status": f"0x{status.code:04X}"})
        else:
            prepared = await prepare(received)
            async with asyncio.timeout(timeout or None):
                result = await ingest.commit(prepared)
            status = OUTCOME_STATUS[result.outcome]
    except Exception as exc:
        status = status_for_error(exc)
        level = logging.ERROR if status.label == "internal_error" else logging.WARNING
        log.log(level, "C-STORE failed", exc_info=status.label == "internal_error", extra={
            "calling_aet": received.source_aet, "sop_instance_uid": (received.affected_sop_instance_uid or "")[:64],
            "status": f"0x{status.code:04X}", "reason": str(exc)[:200]})
    metrics.STORES.labels(status.label).inc()
    metrics.STORE_SECONDS.observe(time.perf_counter() - started)
    if tally is not None and prepared is not None:  # (unparsed data names no study)
        described = prepared.description
        tally.add(described.study_uid, text_value(described.metadata, "00100020") or "", described.sop_class_uid,
                  ok=status.code == 0 or status.code >> 12 == 0xB)
    return status


def prepare_pool(max_associations: int, engine: str) -> concurrent.futures.ThreadPoolExecutor:
    """Worker threads for IngestService.prepare: as many as associations, 2 to 16."""
    return concurrent.futures.ThreadPoolExecutor(max_workers=max(2, min(16, max_associations)),
                                                 thread_name_prefix=f"{engine}-scp-prepare")


def prepare_in(pool: concurrent.futures.Executor, ingest: IngestService) -> Prepare:
    """Run IngestService.prepare on ``pool``."""
    async def prepare(received: Received) -> Prepared:
        return await asyncio.get_running_loop().run_in_executor(pool, ingest.prepare, received)
    return prepare
