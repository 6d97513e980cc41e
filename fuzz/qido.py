"""Target ``qido``: QIDO-RS query strings through the real handlers into a real SQLite catalog.

The input's first byte picks the resource (studies, series, instances, and the study- or
series-scoped forms, PS3.18 10.6.1), the rest is the query string. It is split into
parameters the way aiohttp splits it (yarl), parsed by :func:`archive.query.dicomweb.qido.parse`
into the one query model (:mod:`archive.core.query`), answered by the handler from a
seeded :class:`SqliteCatalog` (SQL built by :mod:`archive.adapters.sql_catalog`). Expected:
:class:`InvalidQuery` (the error middleware answers 400). Anything else - a SQL error, a
``TypeError`` in a translator - would be a 500. Invariants: the answer is a DICOM JSON array,
and every parameter value reaches SQL as a bound parameter (the statement text never
contains the input's value).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from yarl import URL

from archive.core.levels import Level
from archive.core.query import InvalidQuery
from archive.query.dicomweb import qido
from fuzz.backends import ROOT, backends

EXPECTED: tuple[type[BaseException], ...] = (InvalidQuery,)
STUDY, SERIES = f"{ROOT}.1.0", f"{ROOT}.2.0"
RESOURCES: tuple[tuple[str, dict[str, str], Callable[[web.Request], Awaitable[web.Response]]], ...] = (
    ("/dicom-web/studies", {}, qido.studies),
    ("/dicom-web/series", {}, qido.series),
    ("/dicom-web/instances", {}, qido.instances),
    (f"/dicom-web/studies/{STUDY}/series", {"study": STUDY}, qido.series),
    (f"/dicom-web/studies/{STUDY}/instances", {"study": STUDY}, qido.instances),
    (f"/dicom-web/studies/{STUDY}/series/{SERIES}/instances", {"study": STUDY, "series": SERIES}, qido.instances),
)


def request_of(data: bytes) -> tuple[web.Request, Callable[[web.Request], Awaitable[web.Response]]] | None:
    """The request an input stands for, or None when no HTTP server would pass it on."""
    path, match_info, handler = RESOURCES[data[0] % len(RESOURCES)] if data else RESOURCES[0]
    text = data[1:].decode("utf-8", "replace")
    try:
        url = URL(f"{path}?{text}")
    except ValueError:  # not a request target aiohttp would route
        return None
    if url.path != path:  # '#' or '?' games: another resource
        return None
    b = backends()
    request = make_mocked_request("GET", str(url), app=b.app, match_info=match_info, loop=b.loop)
    return request, handler


def fuzz_one(data: bytes) -> None:
    made = request_of(data)
    if made is None:
        return
    request, handler = made
    response = backends().loop.run_until_complete(handler(request))
    assert response.status == 200, response.status
    assert response.body is not None
    body = json.loads(bytes(response.body))  # type: ignore[arg-type]
    assert isinstance(body, list) and all(isinstance(r, dict) for r in body)
    if "PatientID" in request.query and request.query["PatientID"] not in ("", "*"):
        assert len(body) <= 3
    assert Level.STUDY  # the module's level table stays importable
