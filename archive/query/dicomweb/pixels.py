"""WADO-RS pixel handlers: frames, rendered images and thumbnails (PS3.18 10.4).

- ``.../instances/{i}/frames/{list}``: frame pixel data (PS3.18 10.4.1.1.5, 8.7.3.5)
- ``.../instances/{i}/rendered``, ``.../frames/{n}/rendered`` (10.4.1.1.3, 8.3.5.1); a study's
  or series' ``rendered`` is multipart/related, one rendered instance (first frame) per part
- ``.../studies/{s}/thumbnail``, ``.../series/{se}/thumbnail``, ``.../instances/{i}/thumbnail``
  and ``.../frames/{n}/thumbnail`` (10.4.1.1.4): a small rendering of a
  representative instance (the middle instance of the first series that renders).

Objects are spooled from the object store to a local file (checksum verified,
through the application's :class:`~archive.query.objects.ObjectCache`) and decoded
one frame at a time on the rendering pool (:data:`POOL`), never on the event loop.
WADO-URI (:mod:`archive.query.dicomweb.wado_uri`) renders through the same functions.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from collections.abc import AsyncIterator, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TypeVar

from aiohttp import web

from archive import metrics
from archive.core.errors import InvalidUID
from archive.core.levels import Level
from archive.core.query import InvalidQuery, Query, SingleValue
from archive.core.records import CatalogInstance
from archive.core.uids import validate_uid
from archive.query.context import CATALOG, OBJECTS
from archive.query.dicomweb.media import render
from archive.query.dicomweb.media.frames import FrameReader, negotiate, parse_frame_numbers
from archive.query.dicomweb.media.render import FrameNotFound, RenderError, RenderOptions, Viewport, Window
from archive.query.dicomweb.request import http_error
from archive.query.dicomweb.multipart import MultipartStream
from archive.query.dicomweb.negotiation import NotAcceptable, parse_accept
from archive.query.objects import RetrieveError
from archive.query import audit

log = logging.getLogger(__name__)
T = TypeVar("T")

POOL = web.AppKey("render_pool", ThreadPoolExecutor)  # set by archive.query.dicomweb.routes
MAX_SERIES_INSTANCES = 100_000  # a thumbnail's series listing: rows are small
MAX_THUMBNAIL_TRIES = 5  # series whose middle instance does not render are skipped
RENDER_ALIASES = {"image/*": render.JPEG, "*/*": render.JPEG}
# What the parameters may look like (the OpenAPI document states the same patterns): ASCII digits only,
# no whitespace, no "_" (int() and float() take "١", " 1" and "1_0"), no nan or inf.
NUMBER = r"[-+]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][-+]?[0-9]+)?"
INTEGER = r"-?[0-9]+"
WINDOW_PATTERN = f"^{NUMBER},{NUMBER}(,(linear|linear-exact|sigmoid))?$"
VIEWPORT_PATTERN = f"^[0-9]+,[0-9]+(,{INTEGER},{INTEGER},{INTEGER},{INTEGER})?$"
_NUMBER, _INTEGER = re.compile(NUMBER), re.compile(INTEGER)


def uid(request: web.Request, name: str, attribute: str) -> str:
    try:
        return validate_uid(request.match_info[name], attribute)
    except InvalidUID as exc:
        raise InvalidQuery(str(exc)) from None


async def run(request: web.Request, fn: Callable[..., T], *args: object) -> T:
    """CPU and file work on the rendering pool."""
    return await asyncio.get_running_loop().run_in_executor(request.app[POOL], fn, *args)


async def instance_of(request: web.Request) -> CatalogInstance:
    """The instance named by the path, 404 unless it is in that study and series."""
    study, series = uid(request, "study", "StudyInstanceUID"), uid(request, "series", "SeriesInstanceUID")
    sop = uid(request, "instance", "SOPInstanceUID")
    found = await request.app[CATALOG].get_instance(sop)
    if found is None or found.study_uid != study or found.series_uid != series:
        raise http_error(web.HTTPNotFound, f"no instance {sop} in series {series} of study {study}")
    audit.note(request, [found])
    return found


@asynccontextmanager
async def spooled(request: web.Request, instance: CatalogInstance) -> AsyncIterator[Path]:
    """The instance's object in a local file for the duration of the block."""
    if OBJECTS not in request.app:
        raise http_error(web.HTTPNotFound, "this service serves no objects")
    try:
        async with request.app[OBJECTS].open(instance) as path:
            yield path
    except RetrieveError as exc:
        log.error("stored object unusable", extra={"sop_instance_uid": instance.sop_instance_uid})
        raise http_error(web.HTTPInternalServerError, str(exc)) from None


# ---- rendered (PS3.18 8.3.5.1) ----

def _ints(text: str, name: str) -> list[int]:
    values = text.split(",")
    if not all(_INTEGER.fullmatch(v) for v in values):
        raise InvalidQuery(f"{name}={text!r}: expected integers separated by commas")
    return [int(v) for v in values]


def parse_viewport(text: str) -> Viewport:
    """PS3.18 8.3.5.1.3: ``vw,vh`` or ``vw,vh,sx,sy,sw,sh``."""
    values = _ints(text, "viewport")
    if len(values) not in (2, 6) or values[0] < 1 or values[1] < 1:
        raise InvalidQuery(f"viewport={text!r}: expected vw,vh[,sx,sy,sw,sh] with positive vw and vh")
    if len(values) == 6 and (values[4] == 0 or values[5] == 0):
        raise InvalidQuery(f"viewport={text!r}: sw and sh must not be 0")
    region = (values[2], values[3], values[4], values[5]) if len(values) == 6 else None
    return Viewport(values[0], values[1], region)


def parse_window(center: str, width: str, function: str = "linear", name: str = "window") -> Window:
    """PS3.18 8.3.5.1.4: center, width and VOI LUT Function (PS3.3 C.11.2.1.3)."""
    numbers = (center, width)
    if not all(_NUMBER.fullmatch(n) and math.isfinite(float(n)) for n in numbers):  # "1e999" is inf
        raise InvalidQuery(f"{name}: center and width must be numbers")
    window = Window(float(center), float(width), (function or "linear").strip().upper().replace("-", "_"))
    if window.function not in ("LINEAR", "LINEAR_EXACT", "SIGMOID"):
        raise InvalidQuery(f"{name}: function must be linear, linear-exact or sigmoid")
    if window.width < (1 if window.function == "LINEAR" else 0) or window.width == 0:
        raise InvalidQuery(f"{name}: width must be at least 1 (linear) or above 0")
    return window


def parse_quality(text: str | None) -> int:
    if text is None:
        return render.DEFAULT_QUALITY
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= 100:  # isdigit() alone takes "²"
        raise InvalidQuery(f"quality={text!r}: expected an integer from 1 to 100")
    return int(text)


def render_media_type(accept: str) -> str:
    """The rendered media type for an Accept value (JPEG unless PNG is preferred), or 406."""
    for entry in parse_accept(accept or "*/*"):
        media = entry.media_type
        if media == "multipart/related":  # study and series renderings: one image per part
            media = entry.params.get("type", render.JPEG).lower()
        media = RENDER_ALIASES.get(media, media)
        if media in render.MEDIA_TYPES:
            return media
    raise NotAcceptable(f"cannot render {accept!r}: we render {', '.join(render.MEDIA_TYPES)}")


def render_options(request: web.Request) -> RenderOptions:
    query: Mapping[str, str] = request.query
    media = render_media_type(query.get("accept") or request.headers.get("Accept") or "")
    window = None
    if "window" in query:
        parts = query["window"].split(",")
        if len(parts) not in (2, 3):
            raise InvalidQuery("window: expected center,width[,function]")
        window = parse_window(*parts)
    viewport = parse_viewport(query["viewport"]) if "viewport" in query else None
    return RenderOptions(media, parse_quality(query.get("quality")), window, viewport)


def _single_frame(request: web.Request) -> int:
    if "frames" not in request.match_info:
        return 1
    numbers = parse_frame_numbers(request.match_info["frames"])
    if len(numbers) != 1:
        raise InvalidQuery("a rendered frame is one frame: JPEG and PNG hold a single image")
    return numbers[0]


async def render_instance(request: web.Request, instance: CatalogInstance, frame: int,
                          options: RenderOptions) -> bytes:
    """Spool and render one frame; HTTP errors for what the request got wrong."""
    async with spooled(request, instance) as path:
        try:
            return await run(request, render.render_frame, path, frame, options)
        except FrameNotFound as exc:
            raise http_error(web.HTTPNotFound, str(exc)) from None
        except RenderError as exc:
            raise NotAcceptable(f"{instance.sop_instance_uid}: {exc}") from None


def image_response(body: bytes, media_type: str) -> web.Response:
    return web.Response(body=body, content_type=media_type, headers={"Cache-Control": "private, max-age=3600"})


async def _answer_rendered(request: web.Request, thumbnail: bool) -> web.StreamResponse:
    started = time.perf_counter()
    try:
        options = render_options(request)
        if thumbnail:
            options = render.thumbnail_options(options)
        instance = await instance_of(request)
        body = await render_instance(request, instance, _single_frame(request), options)
    except NotAcceptable as exc:
        raise http_error(web.HTTPNotAcceptable, str(exc)) from None
    interface = "wado-thumbnail" if thumbnail else "wado-rendered"
    metrics.QUERY_SECONDS.labels(interface).observe(time.perf_counter() - started)
    return image_response(body, options.media_type)


async def rendered(request: web.Request) -> web.StreamResponse:
    return await _answer_rendered(request, thumbnail=False)


async def instance_thumbnail(request: web.Request) -> web.StreamResponse:
    return await _answer_rendered(request, thumbnail=True)


# ---- thumbnails of a series or a study (PS3.18 10.4.1.1.4) ----

def representatives(instances: list[CatalogInstance]) -> list[CatalogInstance]:
    """The middle instance of each series, in the catalog's order (series, instance number)."""
    by_series: dict[str, list[CatalogInstance]] = {}
    for inst in instances:
        by_series.setdefault(inst.series_uid, []).append(inst)
    return [members[len(members) // 2] for members in by_series.values()]


def _scope(request: web.Request) -> tuple[SingleValue, ...]:
    """The study (and series) of the path as query matchers."""
    matchers = [SingleValue("StudyInstanceUID", uid(request, "study", "StudyInstanceUID"))]
    if "series" in request.match_info:
        matchers.append(SingleValue("SeriesInstanceUID", uid(request, "series", "SeriesInstanceUID")))
    return tuple(matchers)


async def group_thumbnail(request: web.Request) -> web.StreamResponse:
    matchers = _scope(request)
    try:
        options = render.thumbnail_options(render_options(request))
    except NotAcceptable as exc:
        raise http_error(web.HTTPNotAcceptable, str(exc)) from None
    found = await request.app[CATALOG].locate(Query(Level.IMAGE, matchers, limit=MAX_SERIES_INSTANCES))
    if not found:
        raise http_error(web.HTTPNotFound, "no such study or series")
    for candidate in representatives(found)[:MAX_THUMBNAIL_TRIES]:
        try:
            body = await render_instance(request, candidate, 1, options)
            audit.note(request, [candidate])
            return image_response(body, options.media_type)
        except (NotAcceptable, web.HTTPNotFound):
            continue  # not an image (SR, PR, ...): try the next series
    raise http_error(web.HTTPNotAcceptable, "no instance of this study or series can be rendered")


async def group_rendered(request: web.Request) -> web.StreamResponse:
    """Rendered study or series (PS3.18 10.4.1.1.3): every instance that renders, one part each."""
    try:
        options = render_options(request)
    except NotAcceptable as exc:
        raise http_error(web.HTTPNotAcceptable, str(exc)) from None
    found = await request.app[CATALOG].locate(Query(Level.IMAGE, _scope(request), limit=MAX_SERIES_INSTANCES))
    if not found:
        raise http_error(web.HTTPNotFound, "no such study or series")
    refused: list[InvalidQuery] = []

    async def renderings() -> AsyncIterator[tuple[CatalogInstance, bytes]]:
        for instance in found:
            try:
                body = await render_instance(request, instance, 1, options)
            except (NotAcceptable, web.HTTPException):
                continue  # not an image, or gone since it was listed
            except InvalidQuery as exc:  # the viewport's region outside this image (their sizes differ)
                refused.append(exc)
                continue
            yield instance, body

    # The first image is rendered before the response starts: a request that fits no image is a 400,
    # not a multipart answer that breaks off (no status can follow once it has begun).
    parts = renderings()
    first = await anext(parts, None)
    if first is None and refused:
        raise refused[0]
    boundary = MultipartStream.new_boundary()
    response = web.StreamResponse(headers={"Content-Type": MultipartStream.content_type(options.media_type, boundary)})
    await response.prepare(request)
    stream = MultipartStream(response, boundary)

    async def send(instance: CatalogInstance, body: bytes) -> None:
        await stream.part(options.media_type, {"Content-Length": str(len(body))})
        await stream.write(body)
        audit.note(request, [instance])

    if first is not None:
        await send(*first)
        async for instance, body in parts:
            await send(instance, body)
    await stream.close()
    return response


# ---- frames (PS3.18 10.4.1.1.5, 8.7.3.5) ----

async def frames(request: web.Request) -> web.StreamResponse:
    started = time.perf_counter()
    numbers = parse_frame_numbers(request.match_info["frames"])
    instance = await instance_of(request)
    try:
        fmt = negotiate(request.headers.get("Accept", ""), instance.transfer_syntax_uid)
    except NotAcceptable as exc:
        raise http_error(web.HTTPNotAcceptable, str(exc)) from None
    async with spooled(request, instance) as path:
        try:
            reader = await run(request, FrameReader, path)
        except RenderError as exc:
            raise http_error(web.HTTPNotFound, f"{instance.sop_instance_uid}: {exc}") from None
        with reader:
            try:
                reader.check(numbers)
                reader.check_decodable(fmt)  # before the response starts: a bomb is a 406, not a cut
            except FrameNotFound as exc:
                raise http_error(web.HTTPNotFound, str(exc)) from None
            except RenderError as exc:
                raise http_error(web.HTTPNotAcceptable, f"{instance.sop_instance_uid}: {exc}") from None
            boundary = MultipartStream.new_boundary()
            content_type = MultipartStream.content_type(fmt.media_type, boundary)
            response = web.StreamResponse(headers={"Content-Type": f"{content_type}; transfer-syntax={fmt.transfer_syntax}"})
            await response.prepare(request)
            stream = MultipartStream(response, boundary)
            for number in numbers:
                data = await run(request, reader.frame, number, fmt)
                await stream.part(fmt.content_type, {"Content-Length": str(len(data))})
                await stream.write(data)
            await stream.close()
    metrics.QUERY_SECONDS.labels("wado-frames").observe(time.perf_counter() - started)
    return response
