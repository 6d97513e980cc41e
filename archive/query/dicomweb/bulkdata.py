"""WADO-RS bulk data: the value of one element of an instance (PS3.18 10.4.1.1.5, 8.7.3.3).

The URI is the one :mod:`archive.query.dicomweb.metadata` writes into BulkDataURI:
``.../instances/{uid}/bulkdata/{tag}``, or ``{tag}/{item}/{tag}...`` for an
element inside a sequence item. The object is spooled to a local file
(checksum verified) and parsed with deferred reading, so a large value is
located by its offset and streamed from the file, never loaded whole. The
response is ``multipart/related; type="application/octet-stream"`` with one
part holding the value, little endian as stored; encapsulated (compressed)
pixel data is sent one part per frame, each naming its transfer syntax.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from aiohttp import web
from pydicom import dcmread
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames

from archive.core.query import Query
from archive.query.context import CATALOG, OBJECTS
from archive.query.dicomweb.multipart import MultipartStream
from archive.query.dicomweb.negotiation import wanted_syntaxes
from archive.query.dicomweb.request import describe_scope, http_error, scope
from archive.query import audit

log = logging.getLogger(__name__)

OCTETS = "application/octet-stream"
PATH_PATTERN = r"[0-9A-Fa-f]{8}(?:/[0-9]{1,6}/[0-9A-Fa-f]{8}){0,8}"
DEFER = 1024  # values above this are located, not read
CHUNK = 1024 * 1024
UNDEFINED = 0xFFFFFFFF
PIXEL_DATA = (0x7FE00010, 0x7FE00008, 0x7FE00009)  # Pixel Data, Float and Double Float Pixel Data


class NoSuchElement(LookupError):
    pass


@dataclass(frozen=True)
class Value:
    """Where an element's value is: a range of the file, bytes, or encapsulated frames."""

    offset: int = 0
    length: int = 0
    data: bytes | None = None
    encapsulated: bool = False
    frames: int = 1
    transfer_syntax: str = ""


def parse_path(path: str) -> tuple[list[int], list[int]]:
    parts = path.split("/")
    return [int(p, 16) for p in parts[0::2]], [int(p) for p in parts[1::2]]


def find_value(fh: BinaryIO, tags: list[int], items: list[int]) -> Value:
    """Locate the element named by ``tags``/``items`` in the Part 10 file ``fh`` (blocking)."""
    ds = dcmread(fh, defer_size=DEFER)
    syntax = ds.file_meta.TransferSyntaxUID
    frames = int(ds.get("NumberOfFrames") or 1)
    dataset: Dataset = ds
    try:
        for tag, item in zip(tags, items):
            dataset = dataset[tag].value[item]
    except (KeyError, IndexError, TypeError):
        raise NoSuchElement from None
    last = tags[-1]
    if len(tags) == 1 and last == PIXEL_DATA[0]:
        last = next((t for t in PIXEL_DATA if t in ds), last)
    raw = dataset.get_item(last, keep_deferred=True) if last in dataset else None
    if raw is None:
        raise NoSuchElement
    value = raw.value
    if isinstance(raw, RawDataElement) and value is None and raw.length and not syntax.is_deflated:
        # deferred: the value stays in the file at value_tell
        if raw.length == UNDEFINED:
            return Value(offset=raw.value_tell, encapsulated=True, frames=frames, transfer_syntax=str(syntax))
        return Value(offset=raw.value_tell, length=raw.length)
    if isinstance(raw, DataElement) and not isinstance(value, bytes):
        value = raw.value if isinstance(raw.value, bytes) else None
    if value is None and isinstance(raw, RawDataElement) and raw.value is None:
        value = dataset[last].value  # deflated: read from the inflated dataset
    if not isinstance(value, bytes):
        raise NoSuchElement  # not a binary value we can send as it is
    undefined = isinstance(raw, RawDataElement) and raw.length == UNDEFINED
    return Value(data=value, encapsulated=undefined, frames=frames, transfer_syntax=str(syntax))


def _range(fh: BinaryIO, offset: int, length: int) -> Iterator[bytes]:
    fh.seek(offset)
    while length > 0:
        chunk = fh.read(min(CHUNK, length))
        if not chunk:
            return
        length -= len(chunk)
        yield chunk


async def _send(body: MultipartStream, fh: BinaryIO, value: Value) -> None:
    """Write the value's parts; file reads run in a worker thread."""
    if value.encapsulated:  # PS3.5 A.4: one part per frame
        if value.data is None:
            fh.seek(value.offset)
        source: BinaryIO | bytes = fh if value.data is None else value.data
        frames = generate_frames(source, number_of_frames=value.frames)
        while (frame := await asyncio.to_thread(next, frames, None)) is not None:
            await body.part(f"{OCTETS}; transfer-syntax={value.transfer_syntax}")
            await body.write(frame)
        return
    await body.part(OCTETS)
    if value.data is not None:
        await body.write(value.data)
        return
    chunks = _range(fh, value.offset, value.length)
    while (chunk := await asyncio.to_thread(next, chunks, None)) is not None:
        await body.write(chunk)


async def bulkdata(request: web.Request) -> web.StreamResponse:
    level, matchers = scope(request)
    if not wanted_syntaxes(request.headers.get("Accept"), OCTETS):
        raise http_error(web.HTTPNotAcceptable, f'bulk data is served as multipart/related; type="{OCTETS}"')
    tags, items = parse_path(request.match_info["path"])
    found = await request.app[CATALOG].locate(Query(level, matchers, limit=1))
    if not found:
        raise http_error(web.HTTPNotFound, f"nothing stored under {describe_scope(matchers)}")
    audit.note(request, found)
    async with request.app[OBJECTS].open(found[0]) as path:
        with open(path, "rb") as fh:
            try:
                value = await asyncio.to_thread(find_value, fh, tags, items)
            except NoSuchElement:
                raise http_error(web.HTTPNotFound, f"no bulk data at {request.match_info['path']}") from None
            boundary = MultipartStream.new_boundary()
            response = web.StreamResponse(headers={"Content-Type": MultipartStream.content_type(OCTETS, boundary)})
            await response.prepare(request)
            body = MultipartStream(response, boundary)
            await _send(body, fh, value)
            await body.close()
    return response
