"""Query/Retrieve over DIMSE: C-FIND, C-MOVE and C-GET handlers (PS3.4 Annex C).

Thin pynetdicom handlers: each parses the identifier into the query model,
asks :class:`QueryRetrieve` (which runs on the backends' event loop through the
portal) and yields responses. ``serve`` adds this service to the receiver's AE;
the `query` role runs it on its own port.
"""

from __future__ import annotations

import logging
import select
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import evt
from pynetdicom.events import Event
from pynetdicom.presentation import build_context
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from archive import metrics
from archive.core.errors import BackendUnavailable
from archive.core.levels import Level
from archive.core.models import DicomJson
from archive.core.ports import Catalog, ObjectStore
from archive.core.query import InvalidQuery, Query, Universal
from archive.core.records import CatalogInstance
from archive.query import retrieve
from archive.query.find import FindPlan, IdentifierError, plan_find, response
from archive.scp.portal import Portal
from archive.scp.server import DimseService, storage_contexts
from archive.settings import Settings

log = logging.getLogger(__name__)

PAGE = 500  # catalog rows fetched per round trip while answering a C-FIND
BACKLOG = 64  # C-FIND responses (two P-DATA primitives each) queued to pynetdicom's reactor at most
MAX_SUBOPERATIONS = 65535  # Number of ... Sub-operations are US (PS3.7 C.4.2.1.2)
UNIQUE_KEY = {
    Level.PATIENT: "PatientID",
    Level.STUDY: "StudyInstanceUID",
    Level.SERIES: "SeriesInstanceUID",
    Level.IMAGE: "SOPInstanceUID",
}

# PS3.4 C.4.1.1.4 / C.4.2.1.5 / C.4.3.1.4
PENDING, PENDING_UNSUPPORTED_KEYS = 0xFF00, 0xFF01
CANCELLED, SUCCESS = 0xFE00, 0x0000
OUT_OF_RESOURCES, IDENTIFIER_MISMATCH, UNABLE_TO_PROCESS = 0xA700, 0xA900, 0xC000


class QueryRetrieve:
    """The backend side of C-FIND/C-MOVE/C-GET; its coroutines run on the backends' loop."""

    def __init__(self, catalog: Catalog, store: ObjectStore, spool_dir: Path) -> None:
        self.catalog = catalog
        self.store = store
        self.spool_dir = spool_dir

    async def find_page(self, plan: FindPlan, offset: int) -> tuple[list[DicomJson], int | None]:
        """Matches from ``offset`` on (at least one page's worth unless exhausted) and the next offset."""
        accepted: list[DicomJson] = []
        page = plan.query.limit
        while True:
            q = plan.query
            rows = await self.catalog.find(
                Query(q.level, q.matchers, q.return_keys, q.include_all, q.fuzzy, page, offset)
            )
            offset += len(rows)
            accepted += [r for r in rows if plan.accepts(r)]
            if len(rows) < page:
                return accepted, None
            if accepted:
                return accepted, offset

    async def locate(self, plan: FindPlan) -> list[CatalogInstance]:
        level = plan.query.level
        key = UNIQUE_KEY[level]
        # PS3.4 C.4.2.2.1: a retrieve names the unique key(s) of its level
        if not any(m.keyword == key and not isinstance(m, Universal) for m in plan.query.matchers):
            raise IdentifierError(f"a {level.value} level retrieve needs {key}")
        query = Query(level, plan.query.matchers, limit=MAX_SUBOPERATIONS + 1)
        return await self.catalog.locate(query)

    async def spool(self, instance: CatalogInstance) -> Path:
        return await retrieve.spool(self.store, instance, self.spool_dir)


def status_dataset(code: int, comment: str = "") -> Dataset:
    ds = Dataset()
    ds.Status = code
    if comment:
        ds.ErrorComment = comment[:64]
    return ds


def _failure(exc: BaseException) -> Dataset:
    if isinstance(exc, IdentifierError):
        return status_dataset(IDENTIFIER_MISMATCH, str(exc))
    if isinstance(exc, InvalidQuery):
        return status_dataset(UNABLE_TO_PROCESS, str(exc))
    if isinstance(exc, (BackendUnavailable, TimeoutError)):
        return status_dataset(OUT_OF_RESOURCES, "Archive backend unavailable; retry later")
    return status_dataset(UNABLE_TO_PROCESS, "Unexpected error while querying")


def _log_failure(what: str, event: Event, exc: BaseException) -> None:
    known = isinstance(exc, (InvalidQuery, BackendUnavailable, TimeoutError, retrieve.RetrieveError))
    # An invalid query's message quotes the value (a birth date, a name): log only what names
    # the key; the requester gets the whole message in its Error Comment.
    quotes_value = isinstance(exc, InvalidQuery) and not isinstance(exc, IdentifierError)
    reason = str(exc).split(":", 1)[0] + ": invalid value" if quotes_value else str(exc)
    log.log(logging.WARNING if known else logging.ERROR, f"{what} failed", exc_info=not known,
            extra={"calling_aet": event.assoc.requestor.ae_title, "reason": reason[:200],
                   "error": type(exc).__name__})


def _cancelled(event: Event, wait: float) -> bool:
    """Whether the requestor sent C-CANCEL-FIND-RQ; the SCP then stops at once (PS3.4 C.4.1.2.3).

    pynetdicom's reactor thread reads the socket only when it has no response left to send, and
    yielded responses queue up for it without limit: a handler faster than the reactor left a
    C-CANCEL unread until every match was queued (all 308 of a query came back). So once the
    requestor has sent something, queue nothing more until the reactor has read it; and keep at
    most BACKLOG responses queued, or the reactor, starved of the GIL, sends none of them.
    """
    dul = event.assoc.dul
    sock = dul.socket.socket if dul.socket is not None else None
    deadline = time.monotonic() + wait
    while event.assoc.is_established and time.monotonic() < deadline:
        if event.is_cancelled:
            return True
        if dul.to_provider_queue.qsize() < 2 * BACKLOG and not (sock is not None and _readable(sock)):
            return False
        time.sleep(0.001)  # the reactor sends what is queued, then reads what came
    return event.is_cancelled


def _readable(sock: socket.socket) -> bool:
    try:
        return bool(select.select([sock], [], [], 0)[0])
    except (OSError, ValueError):  # closed under us: the reactor ends the association
        return False


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
            results, offset = portal.run(qr.find_page(plan, offset), timeout=settings.store_timeout)
            for result in results:
                if _cancelled(event, settings.store_timeout):  # C-CANCEL-FIND-RQ (PS3.4 C.4.1.2.3)
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
        _log_failure("C-FIND", event, exc)
        yield _failure(exc), None
    finally:
        metrics.QUERIES.labels("cfind", level, outcome).inc()
        metrics.QUERY_SECONDS.labels("cfind").observe(time.perf_counter() - started)
        log.info("C-FIND", extra={"calling_aet": event.assoc.requestor.ae_title, "level": level,
                                  "matches": sent, "outcome": outcome})


def _suboperations(event: Event, instances: list[CatalogInstance], qr: QueryRetrieve, portal: Portal,
                   timeout: float) -> Iterator[Any]:
    """(status, dataset) per instance; each spooled file is removed once sent."""
    previous: Path | None = None
    try:
        for instance in instances:
            if previous is not None:
                previous.unlink(missing_ok=True)
                previous = None
            if event.is_cancelled:  # C-CANCEL (PS3.4 C.4.2.2.3, C.4.3.2.3)
                yield CANCELLED, None
                return
            try:
                previous = portal.run(qr.spool(instance), timeout=timeout)
                yield PENDING, retrieve.StoredInstance(previous, instance)
            except Exception as exc:
                _log_failure("retrieve sub-operation", event, exc)
                yield PENDING, retrieve.Unreadable(instance, str(exc))
    finally:
        if previous is not None:
            previous.unlink(missing_ok=True)


def _locate(event: Event, qr: QueryRetrieve, portal: Portal, timeout: float) -> list[CatalogInstance]:
    plan = plan_find(event.identifier, str(event.request.AffectedSOPClassUID))
    instances = portal.run(qr.locate(plan), timeout=timeout)
    if len(instances) > MAX_SUBOPERATIONS:
        raise InvalidQuery(f"more than {MAX_SUBOPERATIONS} instances; retrieve a smaller set")
    return instances


def handle_move(event: Event, qr: QueryRetrieve, portal: Portal, settings: Settings) -> Iterator[Any]:
    """EVT_C_MOVE (PS3.4 C.4.2.2): to configured peers only; 0xA801 for any other destination."""
    destination = (event.move_destination or "").strip()
    peer = settings.peer(destination)
    if peer is None:
        log.warning("C-MOVE to an unknown destination refused",
                    extra={"calling_aet": event.assoc.requestor.ae_title, "destination": destination[:16]})
        metrics.QUERIES.labels("cmove", "?", "unknown_destination").inc()
        yield None, None  # pynetdicom answers 0xA801 Move Destination unknown
        return
    instances = _locate(event, qr, portal, settings.store_timeout)  # raising here: 0xC514
    retrieve.ORIGINATOR.aet = event.assoc.requestor.ae_title
    log.info("C-MOVE", extra={"calling_aet": event.assoc.requestor.ae_title, "destination": peer.aet,
                              "instances": len(instances)})
    metrics.QUERIES.labels("cmove", "-", "started").inc()
    yield peer.host, peer.port, {"contexts": retrieve.store_contexts(instances)}
    yield len(instances)
    yield from _suboperations(event, instances, qr, portal, settings.store_timeout)


def handle_get(event: Event, qr: QueryRetrieve, portal: Portal, settings: Settings) -> Iterator[Any]:
    """EVT_C_GET (PS3.4 C.4.3.2): C-STORE sub-operations on the requestor's own association."""
    instances = _locate(event, qr, portal, settings.store_timeout)  # raising here: 0xC413
    log.info("C-GET", extra={"calling_aet": event.assoc.requestor.ae_title, "instances": len(instances)})
    metrics.QUERIES.labels("cget", "-", "started").inc()
    yield len(instances)
    yield from _suboperations(event, instances, qr, portal, settings.store_timeout)


def handle_sop_extended(event: Event) -> dict[str, bytes]:
    """SOP Class Extended Negotiation (PS3.4 C.5.1, PS3.7 D.3.3.5): what we support of what is asked.

    C-FIND: relational queries (byte 1) and combined date-time range matching (byte 2) yes;
    fuzzy semantic person-name matching (byte 3) and timezone adjustment (byte 4) no.
    C-MOVE/C-GET: relational retrieval (byte 1) no; a retrieve names unique keys.
    """
    answers: dict[str, bytes] = {}
    for uid, info in (event.app_info or {}).items():  # type: ignore[attr-defined]
        uid = str(uid)
        supported: tuple[int, ...]
        if uid in FIND_MODELS:
            supported = (1, 1, 0, 0)
        elif uid in MOVE_MODELS or uid in GET_MODELS:
            supported = (0,)
        else:
            continue
        asked = bytes(info or b"")
        answers[uid] = bytes(min(a, s) for a, s in zip(asked, supported)) or b"\x00"
    return answers


FIND_MODELS = (PatientRootQueryRetrieveInformationModelFind, StudyRootQueryRetrieveInformationModelFind)
MOVE_MODELS = (PatientRootQueryRetrieveInformationModelMove, StudyRootQueryRetrieveInformationModelMove)
GET_MODELS = (PatientRootQueryRetrieveInformationModelGet, StudyRootQueryRetrieveInformationModelGet)


def query_retrieve_service(qr: QueryRetrieve, portal: Portal, settings: Settings) -> DimseService:
    """C-ECHO, C-FIND, C-MOVE and C-GET for Patient Root and Study Root.

    The storage contexts let a C-GET requestor take the SCP role for the
    instances it retrieves (SCP/SCU Role Selection).
    """
    syntaxes = ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"]
    models = [build_context(m, syntaxes) for m in (*FIND_MODELS, *MOVE_MODELS, *GET_MODELS, Verification)]
    args = [qr, portal, settings]
    return DimseService(
        contexts=(*models, *storage_contexts(retrieve_roles=True)),
        handlers=(
            (evt.EVT_C_FIND, handle_find, args),
            (evt.EVT_C_MOVE, handle_move, args),
            (evt.EVT_C_GET, handle_get, args),
            (evt.EVT_SOP_EXTENDED, handle_sop_extended),
        ),
    )

