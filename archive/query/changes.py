"""The change feed: ``GET /api/changes?since=<seq>&limit=<n>`` (reader role; it names UIDs only).

``{"changes": [{"seq": 17, "action": "created", "study": ..., "series": ..., "instance": ...,
"time": "2026-12-05T12:00:00.000Z"}, ...]}``: the entries after ``since`` in increasing ``seq``,
at most ``limit``. The catalog assigns ``seq`` in commit order without gaps
(:mod:`archive.adapters.sql_changes`), so a follower that asks again with the last ``seq`` it
saw misses nothing and repeats nothing, across restarts of the archive and of the follower.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone

from aiohttp import web

from archive.core.changes import Change
from archive.query.context import CATALOG

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
_INTEGER = re.compile(r"[0-9]{1,18}")


def _parameter(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    if not _INTEGER.fullmatch(raw) or not low <= int(raw) <= high:
        raise web.HTTPBadRequest(text=json.dumps({"error": f"{name}: an integer from {low} to {high}",
                                                  "parameter": name}), content_type="application/json")
    return int(raw)


def entry(change: Change) -> dict[str, object]:
    when = datetime.fromtimestamp(change.at, timezone.utc).isoformat(timespec="milliseconds")
    return {"seq": change.seq, "action": change.action, "study": change.study_uid,
            "series": change.series_uid or None, "instance": change.sop_instance_uid or None,  # stable: a study
            "time": when.replace("+00:00", "Z")}


async def changes(request: web.Request) -> web.Response:
    since = _parameter(request, "since", 0, 0, 10**18 - 1)
    limit = _parameter(request, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
    found = await request.app[CATALOG].changes(since, limit)
    return web.json_response({"changes": [entry(c) for c in found]})
