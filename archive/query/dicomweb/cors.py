"""CORS (the Fetch standard's CORS protocol) for viewers served from another origin.

``ARCHIVE_CORS_ORIGINS`` lists the allowed origins (``*`` for any, the
default). Preflight requests (OPTIONS with Access-Control-Request-Method) are
answered by a middleware before routing matters; every response to a request
with an allowed Origin gets Access-Control-Allow-Origin and the headers a
DICOMweb client must read (ETag, Warning, Content-Location, ...) exposed.
Errors get the headers too (they are added when any response is prepared), so
a viewer can read a 404 or 406 instead of an opaque network error.
"""

from __future__ import annotations

from aiohttp import web

from archive.query.context import SETTINGS
from archive.web import Handler

METHODS = "GET, HEAD, POST, DELETE, OPTIONS"
EXPOSED = "ETag, Warning, Content-Type, Content-Length, Content-Location, Location, Retry-After"
DEFAULT_HEADERS = "Accept, Authorization, Content-Type, If-None-Match, If-Modified-Since, Range"
MAX_AGE = "600"
ALLOWED = web.AppKey("cors_origins", tuple)


def _allow_origin(app: web.Application, origin: str | None) -> str | None:
    allowed: tuple[str, ...] = app.get(ALLOWED, ())
    if not origin or not allowed:
        return None
    if "*" in allowed:
        return "*"
    return origin if origin in allowed else None


@web.middleware
async def preflight(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.method != "OPTIONS" or "Access-Control-Request-Method" not in request.headers:
        return await handler(request)
    origin = _allow_origin(request.app, request.headers.get("Origin"))
    if origin is None:
        return web.json_response({"error": "origin not allowed"}, status=403)
    requested = request.headers.get("Access-Control-Request-Headers", "")
    return web.Response(status=204, headers={
        "Access-Control-Allow-Methods": METHODS,
        "Access-Control-Allow-Headers": requested or DEFAULT_HEADERS,
        "Access-Control-Max-Age": MAX_AGE,
    })  # Allow-Origin is added by on_prepare like on every response


async def on_prepare(request: web.Request, response: web.StreamResponse) -> None:
    origin = _allow_origin(request.app, request.headers.get("Origin"))
    if origin is None:
        return
    response.headers["Access-Control-Allow-Origin"] = origin
    response.headers["Access-Control-Expose-Headers"] = EXPOSED
    if origin != "*":
        response.headers.add("Vary", "Origin")


def install(app: web.Application) -> None:
    """Add the preflight middleware and the response hook (once; before the app starts)."""
    if ALLOWED in app:
        return
    app[ALLOWED] = tuple(app[SETTINGS].cors_origins)
    app.middlewares.append(preflight)
    app.on_response_prepare.append(on_prepare)
