"""Broad free text on the instance index: query shapes, on data ``bench/query.py --keep`` left.

    .venv/bin/python bench/free_text.py WORKDIR/postgres [--queries 30]

A free-text study list (``GET /api/search?q=chest ct``, all facets) reads the instance index:
the page (the best instance of each study, ``collapse``), then the page's studies' matching
instances, and at the same time one request with the study count and the four facets (each
bucket a ``cardinality`` of the study UID). "chest ct" matches about a tenth of the archive,
and every aggregation visits each match. This probe sends the adapter's own request bodies
(archive/adapters/opensearch_query.py) for the common-term questions of bench/query.py and
times them as the query role sends them (the page and its stats in turn, the aggregations
beside them), the request cache off: OpenSearch's ``took`` of each request and the wall time of
the whole. Variants, each measured in the same run:

- ``one request``: the aggregations in one request (the query role before 2026-12-07);
- ``two requests``: shared out over two requests (``split_aggregations``, what the query role sends);
- ``one each``: one request an aggregation (the study count, each facet), all at once;
- ``text as a filter``: the aggregations' request with the text in filter context (no scores);
- ``concurrent segments``: the first and the third again with the index's concurrent segment search on
  (``index.search.concurrent_segment_search.mode: all``), then the setting put back.

The kept data is left as it was.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _queryclients import questions  # noqa: E402
from _querydata import Samples  # noqa: E402
from _util import percentile  # noqa: E402
from _util import request_json as post  # noqa: E402

from archive.adapters.opensearch_query import page_body, page_stats_body, split_aggregations, totals_body  # noqa: E402
from archive.core.search import FACETS, SearchRequest, query_terms  # noqa: E402


class Probe:
    def __init__(self, search: str, index: str) -> None:
        self.search, self.index = search, index
        self.pool = ThreadPoolExecutor(8)

    def send(self, body: dict[str, Any]) -> dict[str, Any]:
        return post(f"{self.search}/{self.index}/_search?request_cache=false", body)

    def page(self, request: SearchRequest, terms: list[str]) -> float:
        """The page and then its studies' stats, as OpenSearchIndex._page: the sum of took."""
        result = self.send(page_body(request, terms))
        keys = [hit["_source"]["study_uid"] for hit in result["hits"]["hits"]]
        took = float(result["took"])
        if keys:
            took += float(self.send(page_stats_body(request, terms, keys))["took"])
        return took

    def once(self, request: SearchRequest, parts: int, text_as_filter: bool = False) -> dict[str, float]:
        """The page and the aggregations in ``parts`` requests, all at once."""
        terms = query_terms(request.text)
        totals = totals_body(request, terms)
        assert totals is not None
        if text_as_filter:  # no scores computed for the aggregations
            query = totals["query"]["bool"]
            totals = {**totals, "query": {"bool": {"must": [], "filter": query["must"] + query["filter"]}}}
        started = time.perf_counter()
        page = self.pool.submit(self.page, request, terms)
        aggs = [self.pool.submit(self.send, body) for body in split_aggregations(totals, parts)]
        took_aggs = max(float(future.result()["took"]) for future in aggs)
        took_page = page.result()
        return {"wall": (time.perf_counter() - started) * 1000, "page": took_page, "aggs": took_aggs}


def profile(probe: Probe, request: SearchRequest) -> None:
    """Where one question's requests spend their time (OpenSearch's profile API), in ms."""
    terms = query_terms(request.text)
    totals = totals_body(request, terms)
    assert totals is not None
    for name, body in (("page", page_body(request, terms)), ("aggregations", totals)):
        shard = probe.send({**body, "profile": True})["profile"]["shards"][0]
        search = shard["searches"][0]
        parts = {"query": sum(q["time_in_nanos"] for q in search["query"]),
                 "collector": sum(c["time_in_nanos"] for c in search["collector"])}
        parts.update({f"agg {a['description']}": a["time_in_nanos"] for a in shard.get("aggregations", [])})
        print(f"profile of {name} ({request.text!r}): " + ", ".join(f"{k} {v / 1e6:.1f}" for k, v in parts.items()))
    # the page's studies from the best instances instead of collapse: how many instances that takes
    for size in (1000, 5000):
        body = {**page_body(request, terms), "size": size, "_source": False, "docvalue_fields": ["study_uid"]}
        del body["collapse"]
        result = probe.send(body)
        studies = {hit["fields"]["study_uid"][0] for hit in result["hits"]["hits"]}
        print(f"best {size} instances without collapse: took {result['took']} ms, {len(studies)} studies")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kept", type=Path, help="the <workdir>/postgres directory of a bench/query.py --keep run")
    parser.add_argument("--queries", type=int, default=30)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--profile", action="store_true", help="also print OpenSearch's profile of one question")
    args = parser.parse_args()
    kept = json.loads((args.kept / "kept.json").read_text())
    if kept["family"] != "postgres":
        parser.error("the instance index is OpenSearch's: give a postgres directory")
    env, index = kept["saved"]["env"], kept["saved"]["name"]
    probe = Probe(env["ARCHIVE_SEARCH"].rstrip("/"), index)
    settings_url = f"{probe.search}/{index}/_settings"
    count = post(f"{probe.search}/{index}/_count")["count"]
    segments = post(f"{probe.search}/{index}/_segments", method="GET")["indices"][index]["shards"]["0"][0]["segments"]
    print(f"{index}: {count} instance documents in {len(segments)} segments")
    items = [SearchRequest(text=q.text, limit=20, facets=FACETS)  # the first three untimed
             for q in questions("text_common", Samples(), args.queries + 3, args.seed)]
    if args.profile:
        profile(probe, items[0])
    every = len(FACETS) + 1  # the study count and each facet
    variants = [("one request", 1, False, None), ("two requests", 2, False, None),
                ("one each", every, False, None), ("text as a filter", 1, True, None),
                ("one request, concurrent segments", 1, False, "all"),
                ("one each, concurrent segments", every, False, "all")]
    try:
        for name, parts, text_as_filter, mode in variants:
            post(settings_url, {"index": {"search.concurrent_segment_search.mode": mode}}, method="PUT")
            times: dict[str, list[float]] = {"wall": [], "page": [], "aggs": []}
            for i, request in enumerate(items):
                measured = probe.once(request, parts, text_as_filter)
                if i >= 3:
                    for key, value in measured.items():
                        times[key].append(value)
            print(f"{name}: " + ", ".join(
                f"{key} p50 {percentile(values, 0.5):.1f} / p95 {percentile(values, 0.95):.1f} ms"
                for key, values in times.items()), flush=True)
    finally:
        post(settings_url, {"index": {"search.concurrent_segment_search.mode": None}}, method="PUT")
    return 0


if __name__ == "__main__":
    sys.exit(main())
