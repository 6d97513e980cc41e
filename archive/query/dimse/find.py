"""The C-FIND handler (PS3.4 C.4.1, Query/Retrieve Find).

The identifier becomes a plan of the query model (:mod:`archive.query.dimse.identifier`),
the catalog is read page by page (:func:`find_page`), and each match goes back as a Pending
response until Success, Cancel or a failure status (:func:`find_responses`). Both engines
send those responses: the asyncio engine awaits them on its event loop
(:mod:`archive.scp.asyncio_engine.association`), the pynetdicom handler (:func:`handle_find`)
reads them through the portal from its association thread.
"""

from __future__ import annotations

import asyncio
import io
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom.events import Event

from archive import metrics
from archive.ae_config import Permission
from archive.compat.pynetdicom import FIND_BACKLOG, find_cancelled
from archive.core.audit import QueryText
from archive.core.errors import BackendUnavailable
from archive.core.identity import Principal, PrincipalKind
from archive.core.models import DicomJson
from archive.core.ports import Catalog
from archive.core.query import InvalidQuery, Query
from archive.query.dimse import audit
from archive.query.dimse.identifier import (FIND_MODEL_UIDS, FindPlan, IdentifierError, extended_answer, plan_find,
                                            response, response_bytes)
from archive.query.objects import RetrieveError
from archive.scp.access import NOT_AUTHORIZED, AccessPolicy
from archive.scp.asyncio_engine.services import FindCall, FindResponse
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


def log_failure(what: str, calling_aet: str, exc: BaseException) -> None:
    known = isinstance(exc, (InvalidQuery, BackendUnavailable, TimeoutError, RetrieveError))
    # An invalid query's message quotes the value (a birth date, a name): log only what names
    # the key; the requester gets the whole message in its Error Comment.
    quotes_value = isinstance(exc, InvalidQuery) and not isinstance(exc, IdentifierError)
    reason = str(exc).split(":", 1)[0] + ": invalid value" if quotes_value else str(exc)
    log.log(logging.WARNING if known else logging.ERROR, f"{what} failed", exc_info=not known,
            extra={"calling_aet": calling_aet, "reason": reason[:200],
                   "error": type(exc).__name__})


@dataclass
class FindTally:
    """What one C-FIND came to, for its metrics, log line and audit record."""

    level: str = "?"
    sent: int = 0
    outcome: str = "success"  # success, cancelled, capped, failed
    started: float = field(default_factory=time.perf_counter)


@dataclass(frozen=True)
class Match:
    """A catalog row that answers the query, made into a response identifier by whichever engine sends it."""

    plan: FindPlan
    row: DicomJson
    aet: str

    def dataset(self) -> Dataset:
        return response(self.plan, self.row, self.aet)

    def encoded(self, implicit: bool) -> bytes:
        return response_bytes(self.plan, self.row, self.aet, implicit)


Response = tuple[Any, "Match | None"]  # (status code or status dataset, the match of a Pending one)


async def find_responses(qr: QueryRetrieve, settings: Settings, identifier: Callable[[], Dataset], model: str,
                         calling_aet: str, tally: FindTally) -> AsyncGenerator[Response, None]:
    """The responses to one C-FIND (PS3.4 C.4.1.2): Pending ones with a match each, the catalog
    read a page at a time, and last the final status (Success, the cap's Out of Resources or a
    failure). Both engines send them; the caller checks for C-CANCEL before each Pending one
    (:func:`cancelled_response`). ``identifier`` decodes the request's identifier (a failure is
    answered like any other)."""
    try:
        plan = plan_find(identifier(), model, page=PAGE)
        tally.level = plan.query.level.value
        pending = PENDING_UNSUPPORTED_KEYS if plan.unsupported else PENDING
        offset: int | None = 0
        while offset is not None:
            async with asyncio.timeout(settings.query_timeout or None):
                results, offset = await find_page(qr.catalog, plan, offset)
            for result in results:
                if tally.sent >= settings.find_max_matches:
                    tally.outcome = "capped"
                    yield status_dataset(OUT_OF_RESOURCES,
                                         f"More than {settings.find_max_matches} matches; narrow the query"), None
                    return
                yield pending, Match(plan, result, settings.aet)
                tally.sent += 1  # asked for the next one: this one went out
        yield SUCCESS, None
    except Exception as exc:
        tally.outcome = "failed"
        log_failure("C-FIND", calling_aet, exc)
        yield _failure(exc), None


def cancelled_response(tally: FindTally) -> Response:
    """The response that ends a C-FIND the requestor cancelled (PS3.4 C.4.1.2.3)."""
    tally.outcome = "cancelled"
    return CANCELLED, None


def find_done(tally: FindTally, qr: QueryRetrieve, settings: Settings, query: audit.FindRequest) -> None:
    """Metrics, the log line and the audit trail's Query record of a C-FIND that ended."""
    metrics.QUERIES.labels("cfind", tally.level, tally.outcome).inc()
    metrics.QUERY_SECONDS.labels("cfind").observe(time.perf_counter() - tally.started)
    log.info("C-FIND", extra={"calling_aet": query.who.name, "qr_level": tally.level,
                              "matches": tally.sent, "outcome": tally.outcome})
    audit.queried(qr.audit, query, settings.aet, failed=tally.outcome == "failed")


async def _next_responses(responses: AsyncIterator[Response], most: int) -> list[Response]:
    """Up to ``most`` responses (fewer only at the end): one portal round trip for a page's worth."""
    out: list[Response] = []
    async for item in responses:
        out.append(item)
        if len(out) >= most:
            break
    return out


def handle_find(event: Event, qr: QueryRetrieve, portal: Portal, settings: Settings) -> Iterator[Any]:
    """EVT_C_FIND on pynetdicom's thread: :func:`find_responses` read through the portal."""
    tally = FindTally()
    responses = find_responses(qr, settings, lambda: event.identifier, str(event.request.AffectedSOPClassUID),
                               event.assoc.requestor.ae_title, tally)
    try:
        while batch := portal.run(_next_responses(responses, FIND_BACKLOG), timeout=settings.query_timeout or None):
            for status, match in batch:
                if match is not None and find_cancelled(event, settings.query_timeout):  # C-CANCEL-FIND-RQ
                    yield cancelled_response(tally)
                    return
                yield status, match.dataset() if match is not None else None
    except Exception as exc:  # the portal's deadline
        tally.outcome = "failed"
        log_failure("C-FIND", event.assoc.requestor.ae_title, exc)
        yield _failure(exc), None
    finally:
        portal.run(responses.aclose(), timeout=5)
        find_done(tally, qr, settings, audit.find_request(event))


class AsyncioFind:
    """C-FIND for the asyncio engine (its :class:`~archive.scp.asyncio_engine.services.FindService`):
    the same responses as :func:`handle_find`, awaited on the engine's event loop, with the
    permission check pynetdicom's server makes through its guard (0x0124 Refused: Not Authorized)."""

    models: frozenset[str] = FIND_MODEL_UIDS
    # identifiers in explicit or implicit VR little endian (PS3.5 A.2, A.1)
    transfer_syntaxes: tuple[str, ...] = (str(ExplicitVRLittleEndian), str(ImplicitVRLittleEndian))

    def __init__(self, qr: QueryRetrieve, settings: Settings, access: AccessPolicy) -> None:
        self.qr, self.settings, self.access = qr, settings, access

    def extended(self, sop_class_uid: str, asked: bytes) -> bytes | None:
        return extended_answer(sop_class_uid, asked)

    async def responses(self, call: FindCall, cancelled: Callable[[], bool]) -> AsyncGenerator[FindResponse, None]:
        if not self.access.authorize(call.calling_aet, call.address, Permission.QUERY):
            metrics.QUERIES.labels("cfind", "-", "not_authorized").inc()
            yield FindResponse(NOT_AUTHORIZED, "Calling AE title may not query here")
            return
        implicit = call.transfer_syntax == ImplicitVRLittleEndian
        tally = FindTally()
        request = audit.FindRequest(Principal(PrincipalKind.AE, call.calling_aet, call.address),
                                    QueryText(call.identifier, call.sop_class_uid, call.transfer_syntax))
        final = False  # the final response went out: else the association broke off
        try:
            async for status, match in find_responses(
                    self.qr, self.settings, lambda: decode_identifier(call.identifier, implicit), call.sop_class_uid,
                    call.calling_aet, tally):
                if match is not None and cancelled():  # C-CANCEL-FIND-RQ (PS3.4 C.4.1.2.3)
                    final = True
                    yield _answer(cancelled_response(tally), implicit)
                    return
                try:
                    answer = _answer((status, match), implicit)
                except Exception as exc:  # a response that cannot be written: the query fails with a status
                    tally.outcome, final = "failed", True
                    log_failure("C-FIND", call.calling_aet, exc)
                    yield _answer((_failure(exc), None), implicit)
                    return
                final = match is None
                yield answer
        finally:
            if not final and tally.outcome == "success":
                tally.outcome = "failed"
            find_done(tally, self.qr, self.settings, request)


def decode_identifier(raw: bytes, implicit: bool) -> Dataset:
    """A C-FIND identifier as received (little endian: the syntaxes AsyncioFind accepts)."""
    return read_dataset(io.BytesIO(raw), implicit, True)


def _answer(response: Response, implicit: bool) -> FindResponse:
    status, match = response
    if isinstance(status, Dataset):
        code, comment = int(status.Status), str(status.get("ErrorComment", ""))
    else:
        code, comment = int(status), ""
    return FindResponse(code, comment, match.encoded(implicit) if match is not None else None)
