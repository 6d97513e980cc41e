"""The query service's HTTP routes (QIDO-RS under /dicom-web)."""

from __future__ import annotations

import time

from aiohttp import web
from pydicom.datadict import tag_for_keyword

from archive import metrics
from archive.core.levels import Level
from archive.core.models import DicomJson
from archive.core.ports import Catalog, ObjectStore, SearchIndex
from archive.core.query import Query
from archive.ingest.service import IngestService
from archive.query import openapi
from archive.query.dicomweb import pixels as wado_pixels
from archive.query.dicomweb import qido, stow, wado, wado_uri
from archive.query.search import api as search_api
from archive.query.context import CATALOG, INGEST, MAX_LIMIT, OBJECTS, SEARCH, SETTINGS, STORE, dicomweb_base
from archive.query.objects import ObjectCache
from archive.scp.spool import process_spool
from archive.settings import Settings

DICOM_JSON = "application/dicom+json"


def _tag(keyword: str) -> str:
    tag = tag_for_keyword(keyword)
    return f"{tag:08X}" if tag is not None else keyword


def _shape(result: DicomJson, query: Query, base_url: str, scope: dict[str, str]) -> DicomJson:
    """Keep the required, matched and included attributes; add RetrieveURL."""
    study = result.get("0020000D", {}).get("Value", [None])[0]
    series = result.get("0020000E", {}).get("Value", [None])[0]
    url = f"{base_url}/studies/{study}"
    if query.level in (Level.SERIES, Level.IMAGE) and series:
        url += f"/series/{series}"
    if query.level is Level.IMAGE:
        url += f"/instances/{result.get('00080018', {}).get('Value', [''])[0]}"
    result = dict(result)
    result["00081190"] = {"vr": "UR", "Value": [url]}
    result.setdefault("00080056", {"vr": "CS", "Value": ["ONLINE"]})
    if query.include_all:
        return dict(sorted(result.items()))
    wanted = {_tag(k) for k in qido.REQUIRED[query.level]}
    # PS3.18 10.6.3.3: a query not scoped to a study (series) also returns that level's attributes
    if query.level in (Level.SERIES, Level.IMAGE) and "StudyInstanceUID" not in scope:
        wanted |= {_tag(k) for k in qido.REQUIRED[Level.STUDY]}
    if query.level is Level.IMAGE and "SeriesInstanceUID" not in scope:
        wanted |= {_tag(k) for k in qido.REQUIRED[Level.SERIES]}
    wanted |= {_tag(m.keyword) for m in query.matchers}
    wanted |= {_tag(k) for k in query.return_keys}
    return {tag: value for tag, value in sorted(result.items()) if tag in wanted}


async def _answer(request: web.Request, level: Level, scope: dict[str, str]) -> web.Response:
    started = time.perf_counter()
    query = qido.parse(level, list(request.query.items()), scope=scope, max_limit=request.app[MAX_LIMIT])
    # Ask for one more than the page to know whether the result was truncated.
    results = await request.app[CATALOG].find(
        Query(query.level, query.matchers, query.return_keys, query.include_all, query.fuzzy,
              query.limit + 1, query.offset)
    )
    truncated = len(results) > query.limit
    results = results[: query.limit]
    base = dicomweb_base(request)
    body = [_shape(r, query, base, scope) for r in results]
    headers = {}
    if truncated:
        # PS3.18 8.3.4.4: tell the client there are more results than returned
        headers["Warning"] = '299 dicom-archive "There are additional results that can be requested"'
    metrics.QUERIES.labels("qido", level.value, "200").inc()
    metrics.QUERY_SECONDS.labels("qido").observe(time.perf_counter() - started)
    return web.json_response(body, content_type=DICOM_JSON, headers=headers)


async def studies(request: web.Request) -> web.Response:
    return await _answer(request, Level.STUDY, {})


async def series(request: web.Request) -> web.Response:
    scope = {"StudyInstanceUID": request.match_info["study"]} if "study" in request.match_info else {}
    return await _answer(request, Level.SERIES, scope)


async def instances(request: web.Request) -> web.Response:
    scope = {}
    if "study" in request.match_info:
        scope["StudyInstanceUID"] = request.match_info["study"]
    if "series" in request.match_info:
        scope["SeriesInstanceUID"] = request.match_info["series"]
    return await _answer(request, Level.IMAGE, scope)


def add_routes(app: web.Application, catalog: Catalog, max_limit: int, search: SearchIndex | None = None, *,
               store: ObjectStore | None = None, ingest: IngestService | None = None,
               settings: Settings | None = None) -> None:
    """Every route of the query service; the DICOMweb services that need a backend
    (``store`` for WADO, ``ingest`` for STOW-RS) are served when it is given."""
    if search is not None:  # the JSON search API under /api
        app[SEARCH] = search
        search_api.add_routes(app, search)
        openapi.add_routes(app)
    app[CATALOG] = catalog
    app[MAX_LIMIT] = max_limit
    app[SETTINGS] = settings or Settings()
    wado.add_routes(app)  # WADO-RS retrieve, metadata, bulkdata (the store below); CORS on every route
    if store is not None:
        app[STORE] = store
        cache = ObjectCache(store, process_spool(app[SETTINGS].data_dir), app[SETTINGS].object_cache_bytes)
        app[OBJECTS] = cache

        async def _clear(_: web.Application) -> None:
            cache.clear()

        app.on_cleanup.append(_clear)
        wado_pixels.add_routes(app)  # frames, rendered, thumbnails
        wado_uri.add_routes(app)  # /wado?requestType=WADO
    if ingest is not None:
        app[INGEST] = ingest
        stow.add_routes(app)
    r = app.router
    r.add_get("/dicom-web/studies", studies)
    r.add_get("/dicom-web/series", series)
    r.add_get("/dicom-web/instances", instances)
    r.add_get("/dicom-web/studies/{study}/series", series)
    r.add_get("/dicom-web/studies/{study}/instances", instances)
    r.add_get("/dicom-web/studies/{study}/series/{series}/instances", instances)
