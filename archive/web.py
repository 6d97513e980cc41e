"""HTTP pieces every role serves: /healthz, /readyz, /metrics, and error mapping.

The authentication middleware (:mod:`archive.auth.access`) is handed in by the composition
root and runs inside the error mapping, before any handler; ``/metrics`` is on the HTTP port
(admin role) unless ARCHIVE_METRICS_PORT gives it a port of its own (:func:`metrics_app`).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest, multiprocess

from archive import metrics
from archive.core.audit import AuditEvent, AuditTrail, EventKind, Outcome, Subtype
from archive.core.errors import BackendUnavailable, ObjectNotFound
from archive.core.identity import Principal, PrincipalKind
from archive.core.ports import Backend, MessageQueue
from archive.core.query import InvalidQuery

log = logging.getLogger(__name__)
BACKENDS = web.AppKey("backends", list[Backend])
QUEUE = web.AppKey("queue", MessageQueue)  # its depth goes into the metrics at each scrape
DATA_DIR = web.AppKey("data_dir", Path)  # its free space goes into the metrics at each scrape
# Who made the request (set by the authentication middleware); a typed request key (aiohttp 3.14+).
PRINCIPAL = web.RequestKey("principal", Principal)


def principal_of(request: web.Request) -> Principal | None:
    """The caller the authentication middleware identified (None before it ran, or without it)."""
    return request.get(PRINCIPAL)


AUDIT = web.AppKey("audit", AuditTrail)  # the process's audit trail (set by the composition root)


def audit_denied(request: web.Request, status: int, detail: str, who: Principal | None = None) -> None:
    """The audit record of a refused HTTP request (PS3.15 A.5.3): a 401 is a failed User
    Authentication (login), a 403 a Security Alert (use of a restricted function). ``who``: the
    caller if known (a valid token without the role), else anonymous at the client's address."""
    trail = request.app.get(AUDIT)
    if trail is None:
        return
    caller = who or principal_of(request) or Principal(PrincipalKind.OPEN, "anonymous", request.remote or "")
    if status == 401:
        event = AuditEvent(EventKind.USER_AUTHENTICATION, caller, Outcome.MINOR_FAILURE, subtype=Subtype.LOGIN,
                           service=request.path, detail=detail)
    else:
        event = AuditEvent(EventKind.SECURITY_ALERT, caller, Outcome.MINOR_FAILURE,
                           subtype=Subtype.USE_OF_RESTRICTED_FUNCTION, service=request.path, detail=detail)
    trail.record(event)


READY_TIMEOUT = 3.0
# The longest request line (method, URL, version) the HTTP listeners read; aiohttp's default is
# 8190 bytes. The OpenAPI document allows a search `q` of 1024 characters, up to 12 bytes each
# percent-encoded, beside filters; QIDO-RS UID lists of a few hundred UIDs; with room to spare.
# A longer line is refused (400) before routing.
MAX_REQUEST_LINE = 64 * 1024

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# The one table from errors to HTTP statuses.
HTTP_STATUS: tuple[tuple[type[BaseException], int], ...] = (
    (InvalidQuery, 400),
    (ObjectNotFound, 404),
    (BackendUnavailable, 503),
)


RESPONSE_STARTED = web.RequestKey("response_started", bool)  # a response's headers went out (or are about to)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except Exception as exc:
        if request.get(RESPONSE_STARTED):
            # A streamed answer (multipart) has begun: no status can follow it; a second response would
            # be read as the first one's body. Cut the connection, so that the client sees it incomplete.
            log.error("request failed after its response began",
                      extra={"path": request.path, "error": type(exc).__name__})
            raise ConnectionResetError("response cut short") from None
        if not isinstance(exc, web.HTTPException):
            return _error_response(request, exc)
        if exc.status < 400 or exc.content_type == "application/json":
            raise
        # aiohttp's own (no route 404, 405 with Allow, 413 over client_max_size): JSON as every other error
        headers = {k: v for k, v in exc.headers.items() if k.lower() not in ("content-type", "content-length")}
        return web.json_response({"error": exc.text or exc.reason}, status=exc.status, headers=headers)


def _error_response(request: web.Request, exc: Exception) -> web.Response:
    for kind, status in HTTP_STATUS:
        if isinstance(exc, kind):
            return web.json_response({"error": str(exc)}, status=status)
    # Unexpected: log the type only (driver errors can quote patient data), answer 500.
    log.error("request failed", extra={"path": request.path, "error": type(exc).__name__})
    return web.json_response({"error": "internal error"}, status=500)


async def nosniff(request: web.Request, response: web.StreamResponse) -> None:
    """Browsers take every response for what its Content-Type says (JSON stays JSON, never HTML)."""
    response.headers.setdefault("X-Content-Type-Options", "nosniff")


async def mark_started(request: web.Request, response: web.StreamResponse) -> None:
    request[RESPONSE_STARTED] = True


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    backends = request.app[BACKENDS]

    async def check(backend: Backend) -> tuple[str, str]:
        try:
            await asyncio.wait_for(backend.ping(), READY_TIMEOUT)
            return backend.name, "ok"
        except Exception as exc:  # any failure means not ready
            return backend.name, f"unavailable: {type(exc).__name__}: {exc}"[:300]

    results = dict(await asyncio.gather(*(check(b) for b in backends)))
    ready = all(v == "ok" for v in results.values())
    return web.json_response({"ready": ready, "backends": results}, status=200 if ready else 503)


async def metrics_endpoint(request: web.Request) -> web.Response:
    if QUEUE in request.app:
        try:
            await metrics.record_queue_depth(request.app[QUEUE])
        except Exception as exc:  # the gauges say NaN; /readyz says why
            log.warning("queue depth unavailable for /metrics", extra={"error": type(exc).__name__})
    if DATA_DIR in request.app:
        metrics.record_free_space(request.app[DATA_DIR])
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # every process of this command
        body = generate_latest(registry)
    else:
        body = generate_latest()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def base_app(backends: Sequence[Backend], queue: MessageQueue | None = None, *,
             auth: Middleware | None = None, with_metrics: bool = True,
             data_dir: Path | None = None) -> web.Application:
    """Health, readiness and (``with_metrics``) metrics; ``queue`` (the role's index queue) is
    counted into the metrics, and so is ``data_dir``'s free space; ``auth``: the authentication middleware."""
    app = web.Application(middlewares=[error_middleware, *([auth] if auth is not None else [])],
                          client_max_size=1024**2)
    app.on_response_prepare.append(nosniff)
    app.on_response_prepare.append(mark_started)
    app[BACKENDS] = list(backends)
    if queue is not None:
        app[QUEUE] = queue
    if data_dir is not None:
        app[DATA_DIR] = data_dir
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    if with_metrics:
        app.router.add_get("/metrics", metrics_endpoint)
    return app


def metrics_app(queue: MessageQueue | None = None, data_dir: Path | None = None) -> web.Application:
    """``/metrics`` alone, without a token: the ARCHIVE_METRICS_PORT listener (for Prometheus)."""
    app = web.Application(middlewares=[error_middleware])
    if queue is not None:
        app[QUEUE] = queue
    if data_dir is not None:
        app[DATA_DIR] = data_dir
    app.router.add_get("/metrics", metrics_endpoint)
    return app
