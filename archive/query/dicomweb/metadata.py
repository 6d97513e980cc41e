"""WADO-RS metadata of a study, series or instance (PS3.18 10.4.1.1.2, Annex F).

Served from the catalog's stored DICOM JSON of each instance (written at
indexing time without bulk values), never by reading objects. The stored text
rows are streamed into the response as they are, in chunks: ``[`` + rows
joined by ``,`` + ``]``. Per row only two text edits are made: the
``bulk:<tag>`` markers become this service's BulkDataURIs, and instances with
an Image Pixel module get a PixelData element with its BulkDataURI (the
metadata is taken up to the pixel data, which it never holds).

The ETag is a hash of the base URL and every instance's SOP Instance UID and
indexing time: any instance added, removed or re-indexed changes it, and
``If-None-Match`` answers 304 without a body. Studies larger than one page of
the catalog (:data:`PAGE` instances) are streamed page by page and carry no
ETag: it would need every page before the first byte.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from functools import lru_cache

from aiohttp import web
from pydicom.uid import UID

from archive import metrics
from archive.core.ports import InstanceMetadata
from archive.core.query import Query
from archive.query.context import CATALOG
from archive.query.dicomweb.negotiation import parse_accept
from archive.query.dicomweb.request import base_url, describe_scope, http_error, scope
from archive.query import audit

DICOM_JSON = "application/dicom+json"
PAGE = 5000
FLUSH = 64 * 1024
_BULK = re.compile(r'"BulkDataURI": ?"bulk:')  # a raw quote never occurs inside a JSON string
_ROWS = '"00280010"'  # Rows: the instance has an Image Pixel module


@lru_cache(maxsize=64)
def _pixel_vr(transfer_syntax_uid: str) -> str:
    # PS3.5 8.2: encapsulated pixel data is OB; native pixel data here is OW
    return "OB" if UID(transfer_syntax_uid).is_compressed else "OW"


def instance_json(row: InstanceMetadata, base: str) -> str:
    """The stored JSON of one instance with resolvable BulkDataURIs (text edits only)."""
    url = f"{base}/studies/{row.study_uid}/series/{row.series_uid}/instances/{row.sop_instance_uid}/bulkdata/"
    url = json.dumps(url)[1:-1]  # the Host header comes from the client: keep the JSON valid
    text = row.json
    if "bulk:" in text:
        text = _BULK.sub(f'"BulkDataURI":"{url}'.replace("\\", "\\\\"), text)
    if _ROWS in text and '"7FE00010"' not in text and text.endswith("}"):
        text = f'{text[:-1]},"7FE00010":{{"vr":"{_pixel_vr(row.transfer_syntax_uid)}","BulkDataURI":"{url}7FE00010"}}}}'
    return text


def etag(base: str, rows: list[InstanceMetadata]) -> str:
    digest = hashlib.sha256(base.encode())
    for row in rows:
        digest.update(f"\n{row.sop_instance_uid} {row.indexed_at!r}".encode())
    return f'"{digest.hexdigest()[:40]}"'


def not_modified(header: str | None, tag: str) -> bool:
    """RFC 9110 13.1.2: weak comparison, ``*`` matches any current representation."""
    if not header:
        return False
    candidates = [c.strip() for c in header.split(",")]
    return "*" in candidates or tag in (c.removeprefix("W/") for c in candidates)


def _accepts_json(header: str | None) -> bool:
    if header is None or not header.strip():
        return True
    wanted = (DICOM_JSON, "application/json", "application/*", "*/*")
    return any(r.media_type in wanted for r in parse_accept(header))


async def metadata(request: web.Request) -> web.StreamResponse:
    started = time.perf_counter()
    level, matchers = scope(request)
    if not _accepts_json(request.headers.get("Accept")):  # PS3.18 8.7.3.2: no XML here
        raise http_error(web.HTTPNotAcceptable, f"metadata is served as {DICOM_JSON} only")
    catalog = request.app[CATALOG]
    rows = await catalog.metadata(Query(level, matchers, limit=PAGE))
    if not rows:
        raise http_error(web.HTTPNotFound, f"nothing stored under {describe_scope(matchers)}")
    base = base_url(request)
    headers = {"Content-Type": DICOM_JSON}
    if len(rows) < PAGE:
        headers["ETag"] = tag = etag(base, rows)
        if not_modified(request.headers.get("If-None-Match"), tag):
            audit.note(request, rows)
            return web.Response(status=304, headers={"ETag": tag})
    response = web.StreamResponse(headers=headers)
    await response.prepare(request)
    pending, size, offset, count = ["["], 1, 0, 0
    while rows:
        audit.note(request, rows)
        for row in rows:
            text = ("," if count else "") + instance_json(row, base)
            pending.append(text)
            size += len(text)
            count += 1
            if size >= FLUSH:
                await response.write("".join(pending).encode())
                pending, size = [], 0
        if len(rows) < PAGE:
            break
        offset += PAGE
        rows = await catalog.metadata(Query(level, matchers, limit=PAGE, offset=offset))
    pending.append("]")
    await response.write("".join(pending).encode())
    await response.write_eof()
    metrics.QUERIES.labels("wado-metadata", level.value, "200").inc()
    metrics.QUERY_SECONDS.labels("wado-metadata").observe(time.perf_counter() - started)
    return response
