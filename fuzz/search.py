"""Target ``search``: the search API's query strings through the real handler into SQLite FTS5.

The input is a query string for ``GET /api/search``, split the way aiohttp splits it.
:func:`archive.query.search.api.search` parses it (:func:`~archive.query.search.api.parse`:
free text, filters on any keyword, tag or sequence path, level, sort, limit, offset, facets)
and answers from a seeded :class:`Fts5Search`; the same request is translated to the
OpenSearch DSL (:func:`archive.adapters.opensearch_query.page_body` and ``totals_body``),
which must not fail either. The handler answers 400 itself for what it cannot parse, so every input must be
answered 200 or 400 (never 500: an FTS5 syntax error, a translator fault). Invariants: 400s
name the parameter; highlights are HTML-escaped (only ``<em>`` markup) even though one
seeded patient name and description hold HTML.
"""

from __future__ import annotations

import json
import re

from aiohttp.test_utils import make_mocked_request
from yarl import URL

from archive.adapters.opensearch_query import page_body, totals_body
from archive.core.search import query_terms
from archive.query.search import api
from fuzz.backends import backends

EXPECTED: tuple[type[BaseException], ...] = ()
_MARKUP = re.compile(r"<(?!/?em>)")


def fuzz_one(data: bytes) -> None:
    text = data.decode("utf-8", "replace")
    try:
        url = URL(f"/api/search?{text}")
    except ValueError:
        return
    if url.path != "/api/search":
        return
    b = backends()
    request = make_mocked_request("GET", str(url), app=b.app, loop=b.loop)
    response = b.loop.run_until_complete(api.search(request))
    assert response.status in (200, 400), response.status
    assert response.body is not None
    body = json.loads(bytes(response.body))  # type: ignore[arg-type]
    if response.status == 400:
        assert isinstance(body.get("error"), str) and body.get("parameter") is not None, body
        return
    for hit in body["hits"]:
        for h in hit["highlights"]:
            for fragment in h["fragments"]:
                assert not _MARKUP.search(fragment), f"unescaped markup in a highlight: {fragment!r}"
    parsed = api.parse(list(request.query.items()))
    terms = query_terms(parsed.text)
    json.dumps([page_body(parsed, terms), totals_body(parsed, terms)])
