"""Thin pynetdicom event handlers: each calls one service and maps the result."""

from __future__ import annotations

import logging
import threading
import weakref
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom.events import Event

from archive import metrics
from archive.compat import pynetdicom as pynetdicom_compat
from archive.core.audit import AuditTrail, StudyTally
from archive.ingest.service import Received
from archive.scp import audit
from archive.scp.access import AccessPolicy
from archive.scp.portal import Portal
from archive.scp.status import status_dataset
from archive.scp.tls import peer_subject
from archive.scp.store import Store

log = logging.getLogger(__name__)


class Tallies:
    """The audit tally of each association being served (each on its own thread)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tallies: weakref.WeakKeyDictionary[Any, StudyTally] = weakref.WeakKeyDictionary()

    def of(self, assoc: Any) -> StudyTally:
        with self._lock:
            return self._tallies.setdefault(assoc, StudyTally())

    def pop(self, assoc: Any) -> StudyTally | None:
        with self._lock:
            return self._tallies.pop(assoc, None)


def handle_store(event: Event, store: Store, portal: Portal, tallies: Tallies) -> Dataset:
    """EVT_C_STORE: the spooled dataset -> the one C-STORE path (archive.scp.store) -> status."""
    request: Any = event.request
    received = Received(
        dataset_path=event.dataset_path,
        transfer_syntax_uid=str(event.context.transfer_syntax),
        source_aet=event.assoc.requestor.ae_title,
        affected_sop_class_uid=str(request.AffectedSOPClassUID) if request.AffectedSOPClassUID else None,
        affected_sop_instance_uid=str(request.AffectedSOPInstanceUID or "") or None,
    )
    return status_dataset(portal.run(store(received, str(event.context.abstract_syntax), tallies.of(event.assoc),
                                           str(event.assoc.requestor.address))))


def handle_requested(event: Event, policy: AccessPolicy, trail: AuditTrail, aet: str) -> None:
    """EVT_REQUESTED: reject, with A-ASSOCIATE-RJ, peers the access policy does not admit (AE
    title, network, and over TLS the client certificate's subject)."""
    assoc = event.assoc
    primitive: Any = assoc.requestor.primitive
    calling = str(primitive.calling_ae_title).strip()
    address = str(assoc.requestor.address)
    rejection = policy.admit(calling, address, peer_subject(pynetdicom_compat.peer_certificate(assoc)))
    if rejection is None:
        metrics.ASSOCIATIONS.labels("accepted").inc()
        return
    metrics.ASSOCIATIONS.labels("rejected").inc()
    log.warning("association rejected", extra={"calling_aet": calling, "peer": address, "reason": rejection.why})
    audit.rejected(trail, rejection.why, rejection.result == 0x02, calling, address, aet)
    pynetdicom_compat.reject(assoc, rejection.result, rejection.source, rejection.reason)


def handle_open(event: Event) -> None:
    metrics.ACTIVE_ASSOCIATIONS.inc()


def handle_close(event: Event, tallies: Tallies, trail: AuditTrail, aet: str) -> None:
    """EVT_CONN_CLOSE (released or aborted): the audit records of what the association stored."""
    metrics.ACTIVE_ASSOCIATIONS.dec()
    tally = tallies.pop(event.assoc)
    if tally:
        requestor = event.assoc.requestor
        audit.association_ended(trail, tally, str(requestor.ae_title), str(requestor.address), aet)
