"""WADO-RS retrieve as a download: a study or series as ``application/zip``, an instance as
``application/dicom`` (PS3.18 8.7.3.5, Table 8.7.3-5; ``?accept=`` for a plain link, 8.3.3.1).

The zip is written while it is sent: stream-zip (``async_stream_zip``) takes each instance's
object as the object store yields it, chunk by chunk, so memory stays at a few chunks whatever
the study's size. ZIP64 records are written where a member or the archive passes 4 GiB
(``ZIP_AUTO``). Members are deflated at level 1: uncompressed pixel data shrinks by a third or
more, at a CPU cost far below the network's; compressed syntaxes pass through nearly as they are.

Members are stored as received (the transfer syntax they were stored in; their bytes are checked
against the catalog's SHA-256 as they stream). Their names come from validated values only:

    <StudyInstanceUID>/<SeriesNumber>_<SeriesInstanceUID>/<InstanceNumber>_<SOPInstanceUID>.dcm

UIDs are validated at ingest (PS3.5 9.1: digits and dots) and checked again here; numbers are
written as integers or left out. No patient name, description or other free text reaches a path,
so no value can produce ``../`` or an absolute entry.

With ``?dicomdir=true`` the zip is laid out as media instead: PS3.10 File IDs and a DICOMDIR
(:mod:`archive.query.dicomweb.dicomdir`), for a CD/DVD or USB stick a viewer opens.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from datetime import datetime, timezone
from stat import S_IFREG
from typing import Any, cast

from aiohttp import web
from stream_zip import ZIP_AUTO, async_stream_zip

from archive import metrics
from archive.core.levels import Level
from archive.core.ports import Catalog
from archive.core.query import Matcher, Query
from archive.core.records import CatalogInstance
from archive.query import audit
from archive.query.dicomweb import dicomdir
from archive.query.dicomweb.request import describe_scope

log = logging.getLogger(__name__)

ZIP = "application/zip"
UID = re.compile(r"[0-9]+(\.[0-9]+)*")  # PS3.5 9.1, with fullmatch: never "..", "/" or a newline
LEVEL = 1  # deflate level: see the module docstring
MTIME = datetime(1980, 1, 1, tzinfo=timezone.utc)  # the zip epoch: an archive's bytes depend on its content only

Numbers = dict[str, tuple[int | None, int | None]]  # SOP UID -> (SeriesNumber, InstanceNumber)


def _integer(value: object) -> int | None:
    """An IS value as a non-negative integer, None when it is absent or not one."""
    try:
        number = int(str(value).strip())
    except ValueError:
        return None
    return number if 0 <= number < 10**12 else None


async def numbers(catalog: Catalog, matchers: tuple[Matcher, ...], limit: int) -> Numbers:
    """Series and instance numbers of what the request names, from the catalog (one query)."""
    rows = await catalog.find(Query(Level.IMAGE, matchers, return_keys=("SeriesNumber", "InstanceNumber"), limit=limit))
    out: Numbers = {}
    for row in rows:
        uid = _first(row, "00080018")
        if isinstance(uid, str):
            out[uid] = (_integer(_first(row, "00200011")), _integer(_first(row, "00200013")))
    return out


def _first(row: dict[str, Any], tag: str) -> object:
    element = row.get(tag) or {}
    values = element.get("Value") if isinstance(element, dict) else None
    return values[0] if values else ""


def member_name(instance: CatalogInstance, series_number: int | None, instance_number: int | None) -> str:
    """The member's path inside the zip, from validated UIDs and integers only."""
    uids = (instance.study_uid, instance.series_uid, instance.sop_instance_uid)
    if not all(len(u) <= 64 and UID.fullmatch(u) for u in uids):  # never reached for a catalog row; the guard stays
        raise ValueError(f"not a UID in {uids!r}")
    series = f"{series_number}_{instance.series_uid}" if series_number is not None else instance.series_uid
    name = f"{instance_number}_{instance.sop_instance_uid}" if instance_number is not None else instance.sop_instance_uid
    return f"{instance.study_uid}/{series}/{name}.dcm"


def filename(level: Level, instance: CatalogInstance) -> str:
    """The download's file name (Content-Disposition): the resource's UID, nothing else."""
    uid = instance.sop_instance_uid if level is Level.IMAGE else (
        instance.series_uid if level is Level.SERIES else instance.study_uid)
    assert UID.fullmatch(uid)
    return f"{level.name.lower()}-{uid}"


Source = AsyncIterator[bytes]
OpenMember = Callable[[CatalogInstance], Awaitable[Source]]  # an instance's stored bytes, checksum checked


async def zip_stream(plan: Sequence[tuple[CatalogInstance, str]], open_member: OpenMember,
                     chunk_size: int = 65536, first: Sequence[tuple[str, bytes]] = ()) -> AsyncGenerator[bytes, None]:
    """The zip of ``plan`` (instance, member name); each member opened when the zip reaches it.
    ``first``: members held in memory (name, bytes), written before the instances."""

    async def held(data: bytes) -> Source:
        yield data

    async def members() -> AsyncIterator[tuple[str, datetime, int, Any, Source]]:
        for name, data in first:
            yield name, MTIME, S_IFREG | 0o644, ZIP_AUTO(len(data), level=LEVEL), held(data)
        for inst, name in plan:
            yield name, MTIME, S_IFREG | 0o644, ZIP_AUTO(inst.size, level=LEVEL), await open_member(inst)

    zipped = cast(AsyncGenerator[bytes, None], async_stream_zip(members(), chunk_size=chunk_size))
    try:
        async for chunk in zipped:
            yield chunk
    finally:
        await zipped.aclose()


async def send_zip(request: web.Request, level: Level, matchers: tuple[Matcher, ...],
                   instances: list[CatalogInstance], catalog: Catalog, open_member: OpenMember,
                   *, media: bool = False) -> web.StreamResponse:
    """Answer with the zip of ``instances``; the status is decided before the first byte.
    ``media``: PS3.10 File IDs and a DICOMDIR (``?dicomdir=true``)."""
    started = time.perf_counter()
    first: list[tuple[str, bytes]] = []
    if media:
        metadata = await dicomdir.attributes(catalog, matchers, len(instances) + 1)
        files = await asyncio.to_thread(dicomdir.layout, instances, metadata)  # parsed, and written by pydicom
        plan = [(inst, files.members[inst.sop_instance_uid]) for inst in instances]
        first.append(("DICOMDIR", files.dicomdir))
    else:
        found = await numbers(catalog, matchers, len(instances) + 1)
        plan = [(inst, member_name(inst, *found.get(inst.sop_instance_uid, (None, None)))) for inst in instances]
    audit.note(request, instances)
    body = zip_stream(plan, open_member, first=first)
    try:
        return await _send(request, level, matchers, filename(level, instances[0]), body, len(plan), started)
    finally:
        await body.aclose()  # a client gone mid-zip: the open object and the zip's thread end now


async def _send(request: web.Request, level: Level, matchers: tuple[Matcher, ...], name: str,
                body: AsyncIterator[bytes], count: int, started: float) -> web.StreamResponse:
    scope_text = describe_scope(matchers)
    first = await anext(body, b"")  # opens the first object: a missing one fails with a status
    response = web.StreamResponse(headers={
        "Content-Type": ZIP,
        "Content-Disposition": f'attachment; filename="{name}.zip"',
    })
    await response.prepare(request)
    try:
        await response.write(first)
        async for chunk in body:
            await response.write(chunk)
        await response.write_eof()
    except (ConnectionError, asyncio.CancelledError):
        raise  # the client went away
    except Exception as exc:  # after the first byte no status can be sent: cut the connection
        log.error("WADO-RS zip cut: %s: %s: %s", scope_text, type(exc).__name__, exc)
        if request.transport is not None:
            request.transport.abort()
        return response
    metrics.QUERIES.labels("wado", level.value, "200").inc()
    metrics.QUERY_SECONDS.labels("wado").observe(time.perf_counter() - started)
    log.info("WADO-RS zip of %s: %d instances", scope_text, count)
    return response
