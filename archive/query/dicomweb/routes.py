"""The DICOMweb route table: every ``/dicom-web`` and ``/wado`` route and the handler that answers it.

Routing only; the handlers live in their modules. What the handlers read from the
application (catalog, settings, object store, ingest service) is set by
:func:`archive.query.routes.add_routes` before this runs; the state that belongs to
DICOMweb alone (CORS, the rendering pool, the STOW-RS spool) is set up here, first.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

from aiohttp import web

from archive.query.context import DELETES, INGEST, SETTINGS, STORE
from archive.query.dicomweb import bulkdata, cors, delete, metadata, pixels, qido, stow, wado, wado_uri

DICOMWEB = "/dicom-web"
STUDY = DICOMWEB + "/studies/{study}"
SERIES = STUDY + "/series/{series}"
INSTANCE = SERIES + "/instances/{instance}"


def add_routes(app: web.Application) -> None:
    """QIDO-RS and WADO-RS retrieve, metadata and bulk data always; frames, rendered,
    thumbnails and WADO-URI when the application has an object store (STORE); STOW-RS
    when it has the ingest service (INGEST); DELETE when it has the delete service (DELETES)."""
    cors.install(app)  # preflight and CORS headers for every route, errors included
    objects, ingest = STORE in app, INGEST in app
    if objects:
        _render_pool(app)
    if ingest:
        app[stow.SPOOL] = stow.Spool(app[SETTINGS].data_dir)
    r = app.router

    # QIDO-RS (PS3.18 10.6)
    r.add_get(DICOMWEB + "/studies", qido.studies)
    r.add_get(DICOMWEB + "/series", qido.series)
    r.add_get(DICOMWEB + "/instances", qido.instances)
    r.add_get(STUDY + "/series", qido.series)
    r.add_get(STUDY + "/instances", qido.instances)
    r.add_get(SERIES + "/instances", qido.instances)

    # WADO-RS retrieve and metadata (PS3.18 10.4.1.1.1, 10.4.1.1.2), bulk data (10.4.1.1.5)
    for path in (STUDY, SERIES, INSTANCE):
        r.add_get(path, wado.retrieve)
        r.add_get(path + "/metadata", metadata.metadata)
    r.add_get(INSTANCE + "/bulkdata/{path:" + bulkdata.PATH_PATTERN + "}", bulkdata.bulkdata)

    if objects:
        # WADO-RS frames (10.4.1.1.5), rendered (10.4.1.1.3) and thumbnails (10.4.1.1.4)
        r.add_get(INSTANCE + "/frames/{frames}", pixels.frames)
        r.add_get(INSTANCE + "/rendered", pixels.rendered)
        r.add_get(INSTANCE + "/frames/{frames}/rendered", pixels.rendered)
        r.add_get(INSTANCE + "/thumbnail", pixels.instance_thumbnail)
        r.add_get(INSTANCE + "/frames/{frames}/thumbnail", pixels.instance_thumbnail)
        r.add_get(SERIES + "/thumbnail", pixels.group_thumbnail)
        r.add_get(STUDY + "/thumbnail", pixels.group_thumbnail)
        r.add_get(SERIES + "/rendered", pixels.group_rendered)
        r.add_get(STUDY + "/rendered", pixels.group_rendered)
        # WADO-URI (PS3.18 Chapter 9)
        r.add_get("/wado", wado_uri.wado)
        r.add_get(DICOMWEB + "/wado", wado_uri.wado)

    if ingest:
        # STOW-RS (PS3.18 10.5)
        r.add_post(DICOMWEB + "/studies", stow.store_instances)
        r.add_post(STUDY, stow.store_instances)

    if DELETES in app:
        # delete (not in PS3.18; admin only): archive.query.dicomweb.delete
        for path in (STUDY, SERIES, INSTANCE):
            r.add_delete(path, delete.delete)


def _render_pool(app: web.Application) -> None:
    """The thread pool frames and renderings are decoded on; shut down with the application."""
    pool = ThreadPoolExecutor(max_workers=os.cpu_count() or 2, thread_name_prefix="render")
    app[pixels.POOL] = pool

    async def close(_: web.Application) -> None:
        pool.shutdown(wait=False, cancel_futures=True)

    app.on_cleanup.append(close)
