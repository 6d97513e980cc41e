"""WADO-RS: retrieve studies, series and instances (PS3.18 10.4, 8.7).

The response is ``multipart/related; type="application/dicom"``, written one
instance at a time: an instance sent as stored streams from the object store
straight into its part (checksum verified at its end), an instance converted
to another transfer syntax is spooled to a local file, converted by pydicom in
a worker thread, then streamed from that file. A study is never held in memory.

Every status is decided before the first byte: 400 for a path UID that is not
a UID, 404 when nothing is stored under the path, 406 when an instance cannot
be produced in any transfer syntax the client accepts (see
:mod:`archive.query.dicomweb.media.transcode`). A failure after the response has started
(an object gone or corrupted mid-study) is logged and the connection is cut, so
the client sees a truncated body rather than a complete-looking one.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web
from pydicom.dataset import Dataset

from archive import metrics
from archive.core.decode_limits import TAGS, TooLargeToDecode, check_object
from archive.core.ports import ObjectStore
from archive.core.levels import Level
from archive.core.query import Query
from archive.core.records import CatalogInstance
from archive.query.context import CATALOG, OBJECTS, STORE
from archive.query.dicomweb.media.transcode import TranscodeError, choose, transcode
from archive.query.dicomweb.multipart import MultipartStream
from archive.query.dicomweb import download
from archive.query.dicomweb.negotiation import DEFAULT, single_part, wanted_syntaxes
from archive.query.dicomweb.request import describe_scope, http_error, scope
from archive.query.objects import RetrieveError, spool
from archive.query import audit

log = logging.getLogger(__name__)

DICOM = "application/dicom"
MAX_INSTANCES = 1_000_000  # rows of (UIDs, key, checksum) a retrieve may list
CHUNK = 1024 * 1024

Source = AsyncIterator[bytes]


async def _as_stored(store: ObjectStore, instance: CatalogInstance) -> Source:
    digest = hashlib.sha256()
    async for chunk in store.get(instance.object_key):
        digest.update(chunk)
        yield chunk
    if instance.sha256 and digest.hexdigest() != instance.sha256:
        raise RetrieveError(f"{instance.sop_instance_uid}: stored object does not match its checksum")


async def _primed(source: Source) -> Source:
    """Read the first chunk now, so that a missing object fails before its part starts."""
    first = await anext(source, b"")

    async def chained() -> Source:
        yield first
        async for chunk in source:
            yield chunk

    return chained()


async def file_chunks(path: Path) -> Source:
    """A local file's bytes in chunks (reads in a worker thread); the file is removed at the end."""
    try:
        with open(path, "rb") as fh:
            while chunk := await asyncio.to_thread(fh.read, CHUNK):
                yield chunk
    finally:
        path.unlink(missing_ok=True)


async def open_instance(store: ObjectStore, instance: CatalogInstance, syntax: str, directory: Path) -> Source:
    """The instance's Part 10 bytes in ``syntax``: as stored, or converted through a spool file."""
    if syntax == instance.transfer_syntax_uid:
        return await _primed(_as_stored(store, instance))
    source = await spool(store, instance, directory)
    target = source.with_suffix(".out.dcm")
    try:
        await asyncio.to_thread(transcode, source, target, syntax)
    except BaseException:
        target.unlink(missing_ok=True)
        raise
    finally:
        source.unlink(missing_ok=True)
    log.info("instance %s converted from %s to %s", instance.sop_instance_uid, instance.transfer_syntax_uid, syntax)
    return file_chunks(target)


def abort(request: web.Request, what: str, exc: BaseException) -> None:
    """After the response started no status can be sent: cut the connection instead."""
    log.error("WADO-RS response cut: %s: %s: %s", what, type(exc).__name__, exc)
    if request.transport is not None:
        request.transport.abort()


async def _send_instance(request: web.Request, inst: CatalogInstance, syntax: str, source: Source) -> web.StreamResponse:
    """One instance as a Part 10 file (``application/dicom``), offered as a ``.dcm`` download."""
    response = web.StreamResponse(headers={
        "Content-Type": f"{DICOM}; transfer-syntax={syntax}",
        "Content-Disposition": f'attachment; filename="{download.filename(Level.IMAGE, inst)}.dcm"',
    })
    await response.prepare(request)
    try:
        async for chunk in source:
            await response.write(chunk)
        await response.write_eof()
    except (ConnectionError, asyncio.CancelledError):
        raise
    except Exception as exc:
        abort(request, f"instance {inst.sop_instance_uid}", exc)
    return response


PIXEL_TAGS = [f"{tag:08X}" for tag in TAGS]  # as DICOM JSON keys


async def _check_decodable(request: web.Request, query: Query, uids: set[str]) -> None:
    """406 before the response starts when an instance to convert declares more pixels than a request
    decodes (archive.core.decode_limits), from the attributes the catalog keeps: otherwise the
    multipart response would have to be cut midway."""
    for meta in await request.app[CATALOG].metadata(query):
        if meta.sop_instance_uid not in uids:
            continue
        attributes = json.loads(meta.json)
        pixel = Dataset.from_json({tag: attributes[tag] for tag in PIXEL_TAGS if tag in attributes})
        try:
            check_object(pixel)
        except TooLargeToDecode as exc:
            raise http_error(web.HTTPNotAcceptable, f"instance {meta.sop_instance_uid}: {exc}") from None


def _flag(request: web.Request, name: str) -> bool:
    """A true/false query parameter; anything else is a 400."""
    value = request.query.get(name, "false").strip().lower()
    if value not in ("true", "false"):
        raise http_error(web.HTTPBadRequest, f"{name} must be true or false")
    return value == "true"


async def retrieve(request: web.Request) -> web.StreamResponse:
    started = time.perf_counter()
    level, matchers = scope(request)
    accept = request.query.get("accept") or request.headers.get("Accept")  # PS3.18 8.3.3.1: the link form wins
    single = single_part(accept, (download.ZIP, DICOM) if level is Level.IMAGE else (download.ZIP,))
    wanted = wanted_syntaxes(accept, DICOM)
    if single is None and not wanted:  # PS3.18 8.7.3.5
        raise http_error(web.HTTPNotAcceptable, f'only multipart/related; type="{DICOM}" or {download.ZIP}'
                         + (f" or {DICOM}" if level is Level.IMAGE else "") + " is served here")
    media = _flag(request, "dicomdir")  # a zip laid out as media, with a DICOMDIR
    if media and (single is None or single.media_type != download.ZIP):
        raise http_error(web.HTTPBadRequest, f"dicomdir=true applies to {download.ZIP} only")
    instances = await request.app[CATALOG].locate(Query(level, matchers, limit=MAX_INSTANCES))
    if not instances:
        raise http_error(web.HTTPNotFound, f"nothing stored under {describe_scope(matchers)}")
    store, directory = request.app[STORE], request.app[OBJECTS].directory  # this process's spool
    if single is not None and single.media_type == download.ZIP:  # members as stored
        return await download.send_zip(request, level, matchers, instances, request.app[CATALOG],
                                       lambda inst: open_instance(store, inst, inst.transfer_syntax_uid, directory),
                                       media=media)
    if single is not None:
        wanted = [single.params.get("transfer-syntax", DEFAULT) or DEFAULT]
    plan = [(inst, choose(inst.transfer_syntax_uid, wanted)) for inst in instances]
    refused = sorted({inst.transfer_syntax_uid for inst, syntax in plan if syntax is None})
    if refused:
        raise http_error(web.HTTPNotAcceptable,
                         f"stored in {', '.join(refused)}: none of the accepted transfer syntaxes can be produced")
    converting = {inst.sop_instance_uid for inst, syntax in plan if syntax != inst.transfer_syntax_uid}
    if converting and len(plan) > 1:  # a multipart response cannot take back its 200 once it started
        await _check_decodable(request, Query(level, matchers, limit=MAX_INSTANCES), converting)
    audit.note(request, instances)
    first_inst, first_syntax = plan[0]
    assert first_syntax is not None
    try:
        first = await open_instance(store, first_inst, first_syntax, directory)
    except TranscodeError as exc:
        raise http_error(web.HTTPNotAcceptable, str(exc)) from None
    if single is not None:
        return await _send_instance(request, first_inst, first_syntax, first)
    boundary = MultipartStream.new_boundary()
    response = web.StreamResponse(headers={"Content-Type": MultipartStream.content_type(DICOM, boundary)})
    await response.prepare(request)
    body = MultipartStream(response, boundary)
    current = first_inst.sop_instance_uid
    try:
        for n, (inst, syntax) in enumerate(plan):
            current = inst.sop_instance_uid
            assert syntax is not None
            source = first if n == 0 else await open_instance(store, inst, syntax, directory)
            await body.part(f"{DICOM}; transfer-syntax={syntax}")
            async for chunk in source:
                await body.write(chunk)
        await body.close()
    except (ConnectionError, asyncio.CancelledError):
        raise  # the client went away
    except Exception as exc:
        abort(request, f"instance {current}", exc)
        return response
    metrics.QUERIES.labels("wado", level.value, "200").inc()
    metrics.QUERY_SECONDS.labels("wado").observe(time.perf_counter() - started)
    log.info("WADO-RS retrieve of %s: %d instances", describe_scope(matchers), len(plan))
    return response
