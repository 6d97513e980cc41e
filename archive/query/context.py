"""What the query service's HTTP handlers reach through the aiohttp application.

Typed application keys (house style: ``web.AppKey``), shared by DICOMweb, the search
API and the OpenAPI document; set once by :func:`archive.query.routes.add_routes`
from the composition root.
"""

from __future__ import annotations

from aiohttp import web

from archive.core.ports import Catalog, ObjectStore, SearchIndex
from archive.ingest.service import IngestService
from archive.ops.delete import DeleteService
from archive.query.objects import ObjectCache
from archive.settings import Settings

CATALOG = web.AppKey("catalog", Catalog)
SEARCH = web.AppKey("search", SearchIndex)
STORE = web.AppKey("store", ObjectStore)  # WADO: objects are read from here
INGEST = web.AppKey("ingest", IngestService)  # STOW-RS: the same ingest path as C-STORE
SETTINGS = web.AppKey("settings", Settings)
MAX_LIMIT = web.AppKey("max_limit", int)
DELETES = web.AppKey("deletes", DeleteService)  # DELETE on DICOMweb URLs
OBJECTS = web.AppKey("objects", ObjectCache)  # objects read by frames, rendering, bulk data


def public_root(request: web.Request) -> str:
    """The root of the URLs we hand out: ARCHIVE_PUBLIC_URL, else the request's scheme and host."""
    settings = request.app.get(SETTINGS)
    return settings.public_url.rstrip("/") if settings and settings.public_url else f"{request.scheme}://{request.host}"
