"""DELETE on a study, series or instance URL (not in PS3.18; as Microsoft's DICOM service offers it).

Admin only (:mod:`archive.auth.policy`). 204 once the instances are gone from the catalog, the
search index and the object store; 404 when the catalog holds nothing under the URL. The order
of the steps and what a crash between them leaves: :mod:`archive.ops.delete`.
"""

from __future__ import annotations

from aiohttp import web

from archive.core.changes import Deletion
from archive.query import audit as http_audit
from archive.query.context import DELETES
from archive.query.dicomweb.request import http_error, scope


async def delete(request: web.Request) -> web.Response:
    _, matchers = scope(request)  # 400 for a path UID that is not one
    uids = [getattr(m, "value") for m in matchers]
    deletion = Deletion(*uids)
    deleted = await request.app[DELETES].delete(deletion, http_audit.caller(request), service=request.path)
    if not deleted.instances:
        raise http_error(web.HTTPNotFound, "no such instances in the archive")
    return web.Response(status=204)
