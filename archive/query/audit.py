"""The audit records of the HTTP query service (PS3.15 A.5.3), one per study per request.

:func:`middleware` classifies each request by its route: QIDO-RS and the search API are a
Query (A.5.3.10: the path and the query string as received), STOW-RS is DICOM Instances
Transferred (A.5.3.7, action C), every other DICOMweb and WADO-URI route is DICOM Instances
Accessed (A.5.3.6: retrieve, metadata, bulk data, frames, rendered, thumbnails). A handler
that serves instances notes them (:func:`note`, one line, with the catalog rows it read
anyway: their patient IDs come with them), and when the handler is done the middleware
records one event per study and outcome. The caller is :func:`archive.web.principal_of`
the request; without authentication, ``anonymous`` at the client's address.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable, Iterable
from typing import Protocol

from aiohttp import web

from archive.core.audit import (
    Action, AuditEvent, EventKind, Outcome, QueryText, StudyTally, record_all,
)
from archive.core.identity import Principal, PrincipalKind
from archive.web import AUDIT, principal_of
TALLY = "archive.audit.tally"  # request key: what this request served, per study

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
QUERY_ENDINGS = ("/studies", "/series", "/instances")


class Served(Protocol):
    """A catalog row of an instance served (CatalogInstance, InstanceMetadata)."""

    @property
    def study_uid(self) -> str: ...

    @property
    def sop_class_uid(self) -> str: ...

    @property
    def patient_id(self) -> str: ...


def note(request: web.Request, instances: Iterable[Served], ok: bool = True) -> None:
    """The handler served (or, with ``ok=False``, failed to serve) these instances."""
    tally = request.get(TALLY)
    if isinstance(tally, StudyTally):
        for inst in instances:
            tally.add(inst.study_uid, inst.patient_id, inst.sop_class_uid, ok)


def tally_of(request: web.Request) -> StudyTally | None:
    tally = request.get(TALLY)
    return tally if isinstance(tally, StudyTally) else None


def caller(request: web.Request) -> Principal:
    """Who made the request: the authenticated principal, else anonymous at its address."""
    found = principal_of(request)
    if found is not None:
        return found
    address = request.remote or ""
    try:
        loopback = ipaddress.ip_address(address).is_loopback
    except ValueError:
        loopback = False
    return Principal(PrincipalKind.LOCAL if loopback else PrincipalKind.OPEN, "anonymous", address)


def _kind(request: web.Request) -> EventKind | None:
    route = request.match_info.route
    template = route.resource.canonical if route.resource is not None else ""
    if not (template.startswith("/dicom-web") or template in ("/wado", "/api/search")):
        return None
    if request.method == "POST":
        return EventKind.INSTANCES_TRANSFERRED  # STOW-RS
    if request.method != "GET":
        return None
    if template == "/api/search" or template.endswith(QUERY_ENDINGS):
        return EventKind.QUERY
    return EventKind.INSTANCES_ACCESSED


@web.middleware
async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    kind = _kind(request)
    if kind is None:
        return await handler(request)
    tally = StudyTally()
    request[TALLY] = tally
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        _record(request, kind, tally, status)


def _record(request: web.Request, kind: EventKind, tally: StudyTally, status: int) -> None:
    trail = request.app.get(AUDIT)
    if trail is None:
        return
    who, path = caller(request), request.path
    if kind is EventKind.QUERY:
        query = QueryText(request.query_string.encode("utf-8"), resource=path)
        trail.record(AuditEvent(kind, who, Outcome.SUCCESS if status < 400 else Outcome.MINOR_FAILURE,
                                service=path, query=query, detail="" if status < 400 else f"HTTP {status}"))
        return
    if status >= 400:  # what was noted and then failed (a stream cut, a backend down) failed
        failed = StudyTally()
        for study, _ in tally.drain():
            for sop_class, count in study.sop_classes:
                failed.add(study.study_uid, study.patient_id, sop_class, ok=False, count=count)
        tally = failed
    action = Action.CREATE if kind is EventKind.INSTANCES_TRANSFERRED else Action.READ
    record_all(trail, tally.events(kind, who, action=action, service=path, detail=f"HTTP {status}"))
