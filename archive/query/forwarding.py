"""Forwarding over HTTP: what went where (``GET /api/forwarding``, admin) and manual send
(``POST /api/studies/{study}/send``, writer), on the ledger and queues of :mod:`archive.forward`."""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, NoReturn

from aiohttp import web

from archive.core.errors import BackendUnavailable
from archive.core.ports import ForwardLedger, ForwardRecord
from archive.core.uids import uid_problem
from archive.forward.manual import send_study
from archive.forward.router import QueueFor
from archive.query.context import CATALOG

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
MAX_BODY = 4096
_INTEGER = re.compile(r"[0-9]{1,6}")


@dataclass(frozen=True)
class Forwarding:
    ledger: ForwardLedger
    queue_for: QueueFor
    destinations: tuple[str, ...]  # the configured peers


FORWARDING = web.AppKey("forwarding", Forwarding)


def _bad(message: str, status: type[web.HTTPException] = web.HTTPBadRequest) -> NoReturn:
    raise status(text=json.dumps({"error": message}), content_type="application/json")


def _time(at: float) -> str:
    return datetime.fromtimestamp(at, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def entry(r: ForwardRecord) -> dict[str, Any]:
    return {"destination": r.destination, "study": r.study_uid, "series": r.series_uid, "instance": r.sop_instance_uid,
            "rule": r.rule, "outcome": r.outcome, "detail": r.detail, "attempts": r.attempts, "time": _time(r.at)}


async def status(request: web.Request) -> web.Response:
    forwarding = request.app[FORWARDING]
    study = request.query.get("study")
    if study is not None and uid_problem(study):
        _bad("study: not a UID")
    raw = request.query.get("limit", str(DEFAULT_LIMIT))
    if not _INTEGER.fullmatch(raw) or not 1 <= int(raw) <= MAX_LIMIT:
        _bad(f"limit: an integer from 1 to {MAX_LIMIT}")
    rows = await forwarding.ledger.forwards(study, int(raw))

    async def depth(destination: str) -> dict[str, Any]:
        try:
            d = await asyncio.wait_for((await forwarding.queue_for(destination)).depth(), 5.0)
            return {"destination": destination, "ready": d.ready, "dead": d.dead}
        except (BackendUnavailable, asyncio.TimeoutError):
            return {"destination": destination, "ready": None, "dead": None}

    queues = await asyncio.gather(*(depth(d) for d in forwarding.destinations))
    return web.json_response({"destinations": list(queues), "forwards": [entry(r) for r in rows]})


async def send(request: web.Request) -> web.Response:
    forwarding = request.app[FORWARDING]
    study = request.match_info["study"]
    if uid_problem(study):
        _bad("study: not a UID")
    if request.content_length is not None and request.content_length > MAX_BODY:
        _bad("the body is too large", web.HTTPRequestEntityTooLarge)
    try:
        body = json.loads(await request.content.read(MAX_BODY + 1) or b"null")
    except ValueError:
        _bad('the body is not JSON: {"destination": "AET", "series": "UID (optional)"}')
    if not isinstance(body, dict) or set(body) - {"destination", "series"}:
        _bad('the body must be {"destination": "AET", "series": "UID (optional)"}')
    destination, series = body.get("destination"), body.get("series")
    if not isinstance(destination, str) or destination.strip() not in forwarding.destinations:
        _bad("destination: not a configured peer")
    if series is not None and (not isinstance(series, str) or uid_problem(series)):
        _bad("series: not a UID")
    queued = await send_study(request.app[CATALOG], forwarding.queue_for, destination.strip(), study, series)
    if not queued:
        _bad("no such study or series", web.HTTPNotFound)
    return web.json_response({"destination": destination.strip(), "queued": queued}, status=202)
