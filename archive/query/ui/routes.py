"""Serving the web UI at ``/ui/`` (and ``/`` redirecting there).

The files are what ``ui/`` (Vite, Preact, TypeScript) builds into ``static/``: ``index.html``
and content-hashed assets under ``assets/``. Hashed names never change content, so they are
cached for a year (``immutable``); ``index.html`` is revalidated on every load, so a new
release is picked up at once. Every UI response carries a Content-Security-Policy without
``'unsafe-inline'`` or ``'unsafe-eval'``: scripts and styles come from this origin only, so even
a DICOM value that slipped past the page's escaping could not run. Deep links
(``/ui/study/...``) answer ``index.html``; the application routes them itself.

These routes and ``/ui/config.json`` (what the page needs before it can sign in: the issuer and
client id, the roles claim, the idle time, the viewer URL; nothing about patients) need no token (:mod:`archive.auth.policy`);
the page reads everything else through the API, with the API's authentication.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

from aiohttp import web

from archive.query.context import SETTINGS
from archive.settings import Settings

STATIC = Path(__file__).resolve().parent / "static"
INDEX = "index.html"
IMMUTABLE = "public, max-age=31536000, immutable"
NO_CACHE = "no-cache"
_ASSET = re.compile(r"assets/[A-Za-z0-9_.-]+")  # one file under assets/, no other directory
TYPES = {".js": "text/javascript", ".mjs": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml", ".woff2": "font/woff2",
         ".png": "image/png", ".ico": "image/x-icon", ".json": "application/json", ".map": "application/json"}
NOT_BUILT = ("The web UI is not built in this installation. From a source checkout: `make ui` "
             "(needs Node.js 20 and npm), then restart.")


def content_security_policy(settings: Settings) -> str:
    """The page's CSP: this origin only; the sign-in provider may be called and posted to."""
    connect = ["'self'"]
    if settings.oidc_issuer:
        parts = urlsplit(settings.oidc_issuer)
        connect.append(f"{parts.scheme}://{parts.netloc}")
    # the issuer's origin: discovery and the token endpoint (connect-src); its end_session_endpoint
    # takes the sign-out as a form POST (form-action), so that the ID token never goes into a URL
    form = connect
    return "; ".join((
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data: blob:",
        # audio objects play from a WAV the page makes (blob:); pdf.js's worker is a file of
        # this origin, which script-src 'self' already covers (CSP3 worker-src falls back to it)
        "media-src blob:",
        "font-src 'self'",
        f"connect-src {' '.join(connect)}",
        "manifest-src 'self'",
        "base-uri 'none'",
        f"form-action {' '.join(form)}",
        "frame-ancestors 'none'",
        "object-src 'none'",
    ))


R = TypeVar("R", bound=web.StreamResponse)


def _secure(response: R, settings: Settings) -> R:
    response.headers["Content-Security-Policy"] = content_security_policy(settings)
    response.headers["Referrer-Policy"] = "no-referrer"  # a search query never leaves in a Referer
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Cross-Origin-Opener-Policy"] = "same-origin"
    return response


def _settings(request: web.Request) -> Settings:
    return request.app.get(SETTINGS) or Settings()


async def root(request: web.Request) -> web.Response:
    raise web.HTTPFound("/ui/")


async def page(request: web.Request) -> web.StreamResponse:
    """``/ui/``, a deep link under it (the page), or one hashed asset."""
    tail = request.match_info.get("tail", "")
    settings = _settings(request)
    if tail.startswith("assets/"):
        if not _ASSET.fullmatch(tail) or not (STATIC / tail).is_file():
            raise web.HTTPNotFound(text="no such UI asset")
        path = STATIC / tail
        response = web.FileResponse(path, headers={
            "Cache-Control": IMMUTABLE, "Content-Type": TYPES.get(path.suffix, "application/octet-stream")})
        return _secure(response, settings)
    index = STATIC / INDEX
    if not index.is_file():
        return _secure(web.Response(status=503, text=NOT_BUILT, headers={"Cache-Control": NO_CACHE}), settings)
    return _secure(web.Response(body=index.read_bytes(), content_type="text/html", charset="utf-8",
                                headers={"Cache-Control": NO_CACHE}), settings)


async def config(request: web.Request) -> web.Response:
    """What the page needs before its first API call (no patient data, no secret)."""
    settings = _settings(request)
    oidc = None
    if settings.oidc_issuer:
        oidc = {"issuer": settings.oidc_issuer, "client_id": settings.ui_oidc_client_id or None,
                "roles_claim": settings.oidc_roles_claim, "idle_minutes": settings.ui_idle_minutes}
    body = {"oidc": oidc, "viewer_url": settings.ui_viewer_url or None}
    return _secure(web.json_response(body, headers={"Cache-Control": NO_CACHE}), settings)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/", root)
    app.router.add_get("/ui", root)
    app.router.add_get("/ui/config.json", config)
    app.router.add_get("/ui/{tail:.*}", page)
