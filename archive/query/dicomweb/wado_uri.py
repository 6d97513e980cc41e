"""WADO-URI for legacy clients (PS3.18 Chapter 9, the former Part 18 URI service).

``GET /wado?requestType=WADO&studyUID=..&seriesUID=..&objectUID=..`` (also under
``/dicom-web/wado``). ``contentType=application/dicom`` streams the stored object
(transfer syntax as stored, or decompressed to Explicit VR Little Endian);
``image/jpeg`` (the default) and ``image/png`` render one frame with rows,
columns, region, windowCenter/windowWidth, frameNumber and imageQuality, through the
rendering of :mod:`archive.query.dicomweb.pixels`.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Mapping
from pathlib import Path

from aiohttp import web
from pydicom import dcmread
from pydicom.uid import UID, ExplicitVRLittleEndian

from archive.core.errors import InvalidUID
from archive.core.query import InvalidQuery
from archive.core.records import CatalogInstance
from archive.core.uids import validate_uid
from archive.query.context import CATALOG, STORE
from archive.query.dicomweb.media import render
from archive.core.decode_limits import TooLargeToDecode, check_object
from archive.query.dicomweb.media.render import RenderOptions, Viewport
from archive.query.dicomweb.negotiation import NotAcceptable
from archive.query.dicomweb.request import http_error
from archive.query.dicomweb.pixels import image_response, parse_quality, parse_window, render_instance, run, spooled
from archive.query import audit

log = logging.getLogger(__name__)
DICOM = "application/dicom"
UNLIMITED = 1 << 20  # a viewport side when only rows or only columns is given
CONTENT_TYPES = (DICOM, render.JPEG, render.PNG)


def _required_uid(query: Mapping[str, str], name: str) -> str:
    # PS3.18 Chapter 9: studyUID, seriesUID and objectUID are required
    if name not in query:
        raise InvalidQuery(f"{name} is required")
    try:
        return validate_uid(query[name], name)
    except InvalidUID as exc:
        raise InvalidQuery(str(exc)) from None


def _content_type(query: Mapping[str, str]) -> str:
    """contentType: a list in order of preference; image/jpeg by default (PS3.18 Chapter 9)."""
    wanted = [t.split(";")[0].strip().lower() for t in query.get("contentType", render.JPEG).split(",")]
    for media in wanted:
        media = {"image/*": render.JPEG, "*/*": render.JPEG}.get(media, media)
        if media in CONTENT_TYPES:
            return media
    raise NotAcceptable(f"contentType {query.get('contentType')!r}: we serve {', '.join(CONTENT_TYPES)}")


def _positive(query: Mapping[str, str], name: str) -> int | None:
    text = query.get(name)
    if text is None:
        return None
    if not (text.isascii() and text.isdigit()) or int(text) < 1:  # isdigit() alone takes "²"
        raise InvalidQuery(f"{name}={text!r}: expected a positive integer")
    return int(text)


def _region(text: str | None) -> tuple[float, float, float, float] | None:
    """region=x1,y1,x2,y2 as fractions (0.0-1.0) of the image (PS3.18 Chapter 9)."""
    if text is None:
        return None
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 4 or not all(0.0 <= v <= 1.0 for v in values) or values[0] >= values[2] \
            or values[1] >= values[3]:
        raise InvalidQuery(f"region={text!r}: expected x1,y1,x2,y2 with 0 <= x1 < x2 <= 1, 0 <= y1 < y2 <= 1")
    return values[0], values[1], values[2], values[3]


def _render_options(query: Mapping[str, str], media: str) -> RenderOptions:
    if ("windowCenter" in query) != ("windowWidth" in query):
        raise InvalidQuery("windowCenter and windowWidth go together")
    window = None
    if "windowCenter" in query:
        window = parse_window(query["windowCenter"], query["windowWidth"], name="windowCenter/windowWidth")
    rows, columns = _positive(query, "rows"), _positive(query, "columns")
    viewport = Viewport(columns or UNLIMITED, rows or UNLIMITED) if rows or columns else None
    return RenderOptions(media, parse_quality(query.get("imageQuality")), window, viewport,
                         _region(query.get("region")))


def _decompressed(path: Path) -> bytes:
    """The object decompressed to Explicit VR Little Endian, transferSyntax's default (PS3.18 Chapter 9)."""
    ds = dcmread(path)
    try:
        check_object(ds)  # decoded in memory: bounded before any decoder allocates
    except TooLargeToDecode as exc:
        raise NotAcceptable(str(exc)) from None
    ds.decompress(generate_instance_uid=False)  # the same instance (PS3.5 8.2); Explicit VR Little Endian
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


async def _dicom(request: web.Request, instance: CatalogInstance) -> web.StreamResponse:
    stored = UID(instance.transfer_syntax_uid)
    wanted = request.query.get("transferSyntax", "")
    if wanted in ("*", stored) or not wanted and not stored.is_compressed:
        response = web.StreamResponse(headers={"Content-Type": DICOM})
        response.content_length = instance.size
        await response.prepare(request)
        async for chunk in request.app[STORE].get(instance.object_key):
            await response.write(chunk)
        await response.write_eof()
        return response
    if wanted not in ("", ExplicitVRLittleEndian):
        raise NotAcceptable(f"transferSyntax {wanted}: we send {stored} or {ExplicitVRLittleEndian}")
    async with spooled(request, instance) as path:
        body = await run(request, _decompressed, path)
    return web.Response(body=body, content_type=DICOM)


async def wado(request: web.Request) -> web.StreamResponse:
    query = request.query
    if query.get("requestType") != "WADO":
        raise InvalidQuery("requestType must be WADO (PS3.18 Chapter 9)")
    study, series = _required_uid(query, "studyUID"), _required_uid(query, "seriesUID")
    sop = _required_uid(query, "objectUID")
    if query.get("anonymize") == "yes":
        raise http_error(web.HTTPNotAcceptable, "anonymize=yes is not supported")
    instance = await request.app[CATALOG].get_instance(sop)
    if instance is None or instance.study_uid != study or instance.series_uid != series:
        raise http_error(web.HTTPNotFound, f"no instance {sop} in series {series} of study {study}")
    audit.note(request, [instance])
    try:
        media = _content_type(query)
        if media == DICOM:
            return await _dicom(request, instance)
        options = _render_options(query, media)
        body = await render_instance(request, instance, _positive(query, "frameNumber") or 1, options)
    except NotAcceptable as exc:
        raise http_error(web.HTTPNotAcceptable, str(exc)) from None
    return image_response(body, media)
