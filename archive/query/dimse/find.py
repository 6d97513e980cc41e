"""The C-FIND handler (PS3.4 C.4.1, Query/Retrieve Find).

A thin pynetdicom handler: the identifier becomes a plan of the query model
(:mod:`archive.query.dimse.identifier`), the catalog is read page by page on the
backends' event loop through the portal (:func:`find_page`), and each match goes
back as a Pending response until Success, Cancel or a failure status.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from pydicom.dataset import Dataset
from pynetdicom.events import Event

from archive import metrics
from archive.compat.pynetdicom import find_cancelled
from archive.core.errors import BackendUnavailable
from archive.core.models import DicomJson
from archive.core.ports import Catalog
from archive.core.query import InvalidQuery, Query
from archive.query.dimse import audit
from archive.query.dimse.identifier import FindPlan, IdentifierError, plan_find, response
from archive.query.objects import RetrieveError
from archive.scp.portal import Portal
from archive.scp.status import status_dataset
from archive.settings import Settings

if TYPE_CHECKING:
    from archive.query.dimse.service import QueryRetrieve

log = logging.getLogger(__name__)

PAGE = 500  # catalog rows fetched per round trip while answering a C-FIND

# PS3.4 C.4.1.1.4 / C.4.2.1.5 / C.4.3.1.4
PENDING, PENDING_UNSUPPORTED_KEYS = 0xFF00, 0xFF01
CANCELLED, SUCCESS = 0xFE00, 0x0000
OUT_OF_RESOURCES, IDENTIFIER_MISMATCH, UNABLE_TO_PROCESS = 0xA700, 0xA900, 0xC000


async def find_page(catalog: Catalog, plan: FindPlan, offset: int) -> tuple[list[DicomJson], int | None]:
    """Matches from ``offset`` on (at least one page's worth unless exhausted) and the next offset."""
    accepted: list[DicomJson] = []
    page = plan.query.limit
    while True:
        q = plan.query
        rows = await catalog.find(Query(q.level, q.matchers, q.return_keys, q.include_all, q.fuzzy, page, offset))
        offset += len(rows)
        accepted += [r for r in rows if plan.accepts(r)]
        if len(rows) < page:
            return accepted, None
        if accepted:
            return accepted, offset


def _failure(exc: BaseException) -> Dataset:
    if isinstance(exc, IdentifierError):
        return status_dataset(IDENTIFIER_MISMATCH, str(exc))
    if isinstance(exc, InvalidQuery):
        return status_dataset(UNABLE_TO_PROCESS, str(exc))
    if isinstance(exc, (BackendUnavailable, TimeoutError)):
        return status_dataset(OUT_OF_RESOURCES, "Archive backend unavailable; retry later")
    return status_dataset(UNABLE_TO_PROCESS, "Unexpected error while querying")


def log_failure(what: str, event: Event, exc: BaseException) -> None:
    known = isinstance(exc, (InvalidQuery, BackendUnavailable, TimeoutError, RetrieveError))
    # An invalid query's message quotes the value (a birth date, a name): log only what names
    # the key; the requester gets the whole message in its Error Comment.
    quotes_value = isinstance(exc, InvalidQuery) and not isinstance(exc, IdentifierError)
    reason = str(exc).split(":", 1)[0] + ": invalid value" if quotes_value else str(exc)
    log.log(logging.WARNING if known else logging.ERROR, f"{what} failed", exc_info=not known,
            extra={"calling_aet": event.assoc.requestor.ae_title, "reason": reason[:200],
                   "error": type(exc).__name__})


def handle_find(event: Event, qr: QueryRetrieve, portal: Portal, settings: Settings) -> Iterator[Any]:
    """EVT_C_FIND (PS3.4 C.4.1.2): pending responses, then success, cancel or failure."""
    started = time.perf_counter()
    model = str(event.request.AffectedSOPClassUID)
    level, sent, outcome = "?", 0, "success"
    try:
        plan = plan_find(event.identifier, model, page=PAGE)
        level = plan.query.level.value
        pending = PENDING_UNSUPPORTED_KEYS if plan.unsupported else PENDING
        offset: int | None = 0
        while offset is not None:
            results, offset = portal.run(find_page(qr.catalog, plan, offset), timeout=settings.query_timeout)
            for result in results:
                if find_cancelled(event, settings.query_timeout):  # C-CANCEL-FIND-RQ (PS3.4 C.4.1.2.3)
                    outcome = "cancelled"
                    yield CANCELLED, None
                    return
                if sent >= settings.find_max_matches:
                    outcome = "capped"
                    yield status_dataset(OUT_OF_RESOURCES, f"More than {settings.find_max_matches} matches; narrow the query"), None
                    return
                yield pending, response(plan, result, settings.aet)
                sent += 1
        yield SUCCESS, None
    except Exception as exc:
        outcome = "failed"
        log_failure("C-FIND", event, exc)
        yield _failure(exc), None
    finally:
        metrics.QUERIES.labels("cfind", level, outcome).inc()
        metrics.QUERY_SECONDS.labels("cfind").observe(time.perf_counter() - started)
        log.info("C-FIND", extra={"calling_aet": event.assoc.requestor.ae_title, "qr_level": level,
                                  "matches": sent, "outcome": outcome})
        audit.queried(qr.audit, event, settings.aet, failed=outcome == "failed")
