"""Target ``stow``: a STOW-RS request body through aiohttp's multipart reader into spool files.

The input is ``<Content-Type header value>\\n<body>``. It becomes a real
:class:`aiohttp.web.Request` (``make_mocked_request`` over a ``StreamReader`` holding the
body) and goes through :func:`archive.query.dicomweb.stow.spool_parts` (media type checks,
aiohttp's ``MultipartReader``, the body budget), then each spooled part through
``_received`` (the File Meta read that names the instance), exactly as ``store_instances``
does before anything is stored. Expected refusals: :class:`RequestRejected` (400, 413,
415: the handler answers them) and :class:`InvalidInstance` (a part that is not a Part 10
file: that part fails, the request goes on). Anything else would be a 500.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from pathlib import Path
from typing import Any
from unittest import mock

from aiohttp import streams
from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict

from archive.core.errors import InvalidInstance
from archive.query.dicomweb import stow

EXPECTED: tuple[type[BaseException], ...] = (stow.RequestRejected, InvalidInstance)
MAX_BYTES = 1 << 20  # ARCHIVE_STOW_MAX_BYTES for the fuzzer: small, so that 413 is reachable
_STATE: dict[str, Any] = {}


def split(data: bytes) -> tuple[str, bytes]:
    """(Content-Type, body) of an input."""
    head, _, body = data.partition(b"\n")
    return head.decode("latin-1"), body


async def _spool(content_type: str, body: bytes, directory: Path) -> list[Path]:
    protocol = mock.Mock(_reading_paused=False)
    payload = streams.StreamReader(protocol, 1 << 16, loop=asyncio.get_running_loop())
    payload.feed_data(body)
    payload.feed_eof()
    headers = CIMultiDict({"Content-Type": content_type, "Content-Length": str(len(body))})
    request = make_mocked_request("POST", "/dicom-web/studies", headers=headers, payload=payload)
    return await stow.spool_parts(request, directory, MAX_BYTES)


def fuzz_one(data: bytes) -> None:
    if "loop" not in _STATE:
        _STATE["loop"] = asyncio.new_event_loop()
        _STATE["root"] = Path(tempfile.mkdtemp(prefix="fuzz-stow-"))
    content_type, body = split(data)
    directory = Path(tempfile.mkdtemp(dir=_STATE["root"]))
    try:
        paths = _STATE["loop"].run_until_complete(_spool(content_type, body, directory))
        assert sum(p.stat().st_size for p in paths) <= MAX_BYTES
        assert all(p.parent == directory for p in paths)
        failures = []
        for path in paths:
            try:
                stow._received(path)
            except InvalidInstance as exc:
                failures.append(exc)
        if failures and len(failures) == len(paths):
            raise failures[0]
    finally:
        shutil.rmtree(directory, ignore_errors=True)
