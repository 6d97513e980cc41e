"""Every HTTP route of the query service, and the application state their handlers read.

:func:`add_routes` is called once by the composition root (:mod:`archive.runtime`):
it stores the backends under the keys of :mod:`archive.query.context`, then mounts
DICOMweb (its route table: :mod:`archive.query.dicomweb.routes`), the search API,
the OpenAPI document that describes them all, and the web UI (:mod:`archive.query.ui`).
"""

from __future__ import annotations

from aiohttp import web

from archive.core.audit import AuditTrail, NoAudit
from archive.core.events import EventSink
from archive.core.ports import Catalog, ObjectStore, SearchIndex
from archive.ingest.service import IngestService
from archive.query import openapi
from archive.query import audit as http_audit
from archive.ops.delete import DeleteService
from archive.query import changes
from archive.query import forwarding as forwarding_api
from archive.query.forwarding import FORWARDING, Forwarding
from archive.query.context import CATALOG, DELETES, INGEST, MAX_LIMIT, OBJECTS, SEARCH, SETTINGS, STORE
from archive.query.dicomweb import routes as dicomweb
from archive.query.objects import ObjectCache
from archive.query.search import api as search_api
from archive.query.ui import routes as ui
from archive.scp.spool import process_spool
from archive.settings import Settings


def add_routes(app: web.Application, catalog: Catalog, max_limit: int, search: SearchIndex | None = None, *,
               store: ObjectStore | None = None, ingest: IngestService | None = None,
               settings: Settings | None = None, audit: AuditTrail | None = None,
               forwarding: Forwarding | None = None, events: EventSink | None = None) -> None:
    """Every route of the query service; the services that need a backend are served when it is
    given: the search API with ``search``, WADO frames, rendering and WADO-URI with ``store``,
    STOW-RS with ``ingest``, DELETE with ``store`` and ``search``; the change feed always."""
    settings = settings or Settings()
    app[SETTINGS] = settings
    app[CATALOG] = catalog
    app[MAX_LIMIT] = max_limit  # QIDO-RS page size
    app[http_audit.AUDIT] = audit or NoAudit()
    app.middlewares.append(http_audit.middleware)
    if store is not None:
        app[STORE] = store
        app[OBJECTS] = _object_cache(app, store, settings)
    if ingest is not None:
        app[INGEST] = ingest
    if store is not None and search is not None:
        app[DELETES] = DeleteService(catalog, search, store, app[http_audit.AUDIT], events)
    dicomweb.add_routes(app)
    app.router.add_get("/api/changes", changes.changes)
    if forwarding is not None:
        app[FORWARDING] = forwarding
        app.router.add_get("/api/forwarding", forwarding_api.status)
        app.router.add_post("/api/studies/{study}/send", forwarding_api.send)
    if search is not None:
        app[SEARCH] = search
        app.router.add_get("/api/search", search_api.search)
        app.router.add_get("/api/openapi.json", openapi.openapi_json)
    ui.add_routes(app)  # the web UI; it reads everything through the routes above


def _object_cache(app: web.Application, store: ObjectStore, settings: Settings) -> ObjectCache:
    """Objects read back for WADO, in this process's spool directory; emptied with the application."""
    cache = ObjectCache(store, process_spool(settings.data_dir), settings.object_cache_bytes)

    async def clear(_: web.Application) -> None:
        cache.clear()

    app.on_cleanup.append(clear)
    return cache
