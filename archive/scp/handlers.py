"""Thin pynetdicom event handlers: each calls one service and maps the result."""

from __future__ import annotations

import logging
import time
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import evt
from pynetdicom.events import Event

from archive import metrics
from archive.ingest.service import IngestService, Received
from archive.scp.access import AccessPolicy
from archive.scp.portal import Portal
from archive.scp.status import OUTCOME_STATUS, Status, status_for_error

log = logging.getLogger(__name__)


def _status_dataset(status: Status) -> Dataset:
    ds = Dataset()
    ds.Status = status.code
    if status.comment and status.code != 0:
        ds.ErrorComment = status.comment[:64]
    return ds


def handle_store(event: Event, ingest: IngestService, portal: Portal, timeout: float) -> Dataset:
    """EVT_C_STORE: spooled dataset -> object store + queue -> status."""
    started = time.perf_counter()
    request: Any = event.request
    calling = event.assoc.requestor.ae_title
    sop_uid = str(request.AffectedSOPInstanceUID or "")
    try:
        received = Received(
            dataset_path=event.dataset_path,
            transfer_syntax_uid=str(event.context.transfer_syntax),
            source_aet=calling,
            affected_sop_class_uid=str(request.AffectedSOPClassUID) if request.AffectedSOPClassUID else None,
            affected_sop_instance_uid=sop_uid or None,
        )
        prepared = ingest.prepare(received)
        result = portal.run(ingest.commit(prepared), timeout=timeout)
        status = OUTCOME_STATUS[result.outcome]
    except Exception as exc:
        status = status_for_error(exc)
        level = logging.ERROR if status.label in ("internal_error",) else logging.WARNING
        log.log(
            level,
            "C-STORE failed",
            exc_info=status.label == "internal_error",
            extra={"calling_aet": calling, "sop_instance_uid": sop_uid[:64],
                   "status": f"0x{status.code:04X}", "reason": str(exc)[:200]},
        )
    metrics.STORES.labels(status.label).inc()
    metrics.STORE_SECONDS.observe(time.perf_counter() - started)
    return _status_dataset(status)


def handle_requested(event: Event, policy: AccessPolicy) -> None:
    """EVT_REQUESTED: reject peers outside the allow-lists with A-ASSOCIATE-RJ."""
    assoc = event.assoc
    primitive: Any = assoc.requestor.primitive
    calling = str(primitive.calling_ae_title).strip()
    address = str(assoc.requestor.address)
    rejection = policy.check(calling, address)
    if rejection is None:
        metrics.ASSOCIATIONS.labels("accepted").inc()
        return
    metrics.ASSOCIATIONS.labels("rejected").inc()
    log.warning("association rejected", extra={"calling_aet": calling, "peer": address, "reason": rejection.why})
    assoc.acse.send_reject(rejection.result, rejection.source, rejection.reason)
    assoc.is_rejected = True
    assoc.is_established = False
    evt.trigger(assoc, evt.EVT_REJECTED, {})
    assoc.kill()


def handle_open(event: Event) -> None:
    metrics.ACTIVE_ASSOCIATIONS.inc()


def handle_close(event: Event) -> None:
    metrics.ACTIVE_ASSOCIATIONS.dec()
