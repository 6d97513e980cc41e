"""Broad free text from study documents: a measured sketch of the design, on data ``bench/query.py --keep`` left.

The design is built since (archive/adapters/opensearch_common.py; ``bench/query.py --attach`` measures
it through the query role); this sketch stays as the record of what was measured before building it.

    .venv/bin/python bench/free_text_studies.py WORKDIR/postgres [--queries 30]

Broad free text ("chest ct": a tenth of the archive) costs what OpenSearch's collectors cost for
every matching instance document (docs/benchmarks.md, "The 10M table again in one run, and broad
free text"). The sketch: each study document also holds the text every instance of the study has
(``common``: the values of its instances' attributes that all of them have, analysed as the
instance text is). Then a study whose ``common`` matches every term matches with all of its
instances (set F, counted from the study documents), and the instance index answers only for the
rest (set R: the instances that match in studies outside F). F and R share no study, so the
study count and each facet's studies are sums; a page in relevance order lists F's studies first
(every instance matches), each by its study document's score, then R's by their best instance.

This probe builds that on a copy of the kept data's study index (``<index>.common``, dropped at
the end): ``common`` computed from the catalog's instance metadata (``flatten``, as the indexer
makes the instance text). On data ``bench/scale_index.py --text`` made ten times larger inside
OpenSearch, ``--copies 10`` copies a ``<index>.common`` kept from the data before (``--keep-index``)
as scale_index copies the instances (each copy's study UIDs suffixed ``.<n>``). It then times, for the common-term questions of bench/query.py, the
query role's requests as sent now against the sketch's (F; then R's aggregations, R's page if the
page reaches past F, and the page's studies' stats, at once), the request cache off, and checks
that both give the same study count and facets.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import psycopg  # noqa: E402
from _queryclients import questions  # noqa: E402
from _querydata import Samples  # noqa: E402
from _util import percentile  # noqa: E402
from _util import request_json as post  # noqa: E402
from free_text import Probe  # noqa: E402

from archive.adapters.opensearch_query import (  # noqa: E402
    FACET_FIELDS,
    page_body,
    page_stats_body,
    split_aggregations,
    text_clause,
    totals_body,
)
from archive.adapters.opensearch_query import ANALYSIS  # noqa: E402
from archive.adapters.opensearch_studies import NESTED_LIMIT, STUDY_MAPPINGS  # noqa: E402
from archive.core.flatten import flatten  # noqa: E402
from archive.core.models import IndexMessage  # noqa: E402
from archive.core.search import FACET_SIZE, FACETS, SearchRequest, query_terms  # noqa: E402

COMMON_INDEX_SUFFIX = ".common"
COPY = """
if (params.copy > 0) {
  String s = '.' + params.copy;
  ctx._id = ctx._id + s;
  ctx._source.study_uid = ctx._source.study_uid + s;
}
"""
MAX_F = 10_000  # F's studies fetched in one request (index.max_result_window); more: not this path


def exists(url: str) -> bool:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=60):
            return True
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return False
        raise


def delete(url: str) -> None:
    """DELETE, nothing there being fine."""
    try:
        post(url, method="DELETE")
    except urllib.error.HTTPError as exc:
        if exc.code != 404:
            raise


def bulk(url: str, lines: list[dict[str, Any]]) -> None:
    data = "".join(json.dumps(line) + "\n" for line in lines).encode()
    request = urllib.request.Request(f"{url}/_bulk?filter_path=errors", data=data, method="POST",
                                     headers={"Content-Type": "application/x-ndjson"})
    with urllib.request.urlopen(request, timeout=600) as response:
        result = json.load(response)
    assert not result.get("errors"), result


def common_values(study_uid: str, metadata: dict[str, Any]) -> set[str]:
    """The values an instance's text is made of (flatten's fields, as the indexer makes the text)."""
    message = IndexMessage(key="", size=0, sha256="", study_uid=study_uid, series_uid="", sop_instance_uid="",
                           sop_class_uid="", transfer_syntax_uid="", received_at=0.0, source_aet="", metadata=metadata)
    return {v for vs in flatten(message, indexed_at=0.0).fields.values() for v in vs}


def build_common_index(search: str, studies: str, common: str, catalog: str) -> int:
    """A copy of the study index with ``common`` filled from the catalog; the studies written."""
    delete(f"{search}/{common}")
    mappings = json.loads(json.dumps(STUDY_MAPPINGS))
    mappings["properties"]["common"] = {"type": "text", "analyzer": "folded"}
    body = {"settings": {"index": {"number_of_shards": 1, "number_of_replicas": 0, "refresh_interval": "-1",
                                   "mapping.nested_objects.limit": NESTED_LIMIT}, "analysis": ANALYSIS},
            "mappings": mappings}
    post(f"{search}/{common}", body, method="PUT")
    post(f"{search}/_reindex?wait_for_completion=true&refresh=true",
         {"source": {"index": studies}, "dest": {"index": common}}, timeout=3600)
    written = 0
    batch: list[dict[str, Any]] = []
    started = time.perf_counter()
    with psycopg.connect(catalog) as conn, conn.cursor(name="instances") as cursor:
        cursor.itersize = 5000
        cursor.execute("SELECT study_uid, metadata FROM instances ORDER BY study_uid")
        for study, rows in itertools.groupby(cursor, key=lambda row: row[0]):
            values = set.intersection(*(common_values(study, metadata) for _, metadata in rows))
            batch += [{"update": {"_id": study}}, {"doc": {"common": "\n".join(sorted(values))}}]
            written += 1
            if len(batch) >= 2000:
                bulk(f"{search}/{common}", batch)
                batch.clear()
    if batch:
        bulk(f"{search}/{common}", batch)
    post(f"{search}/{common}/_refresh")
    post(f"{search}/{common}/_forcemerge?max_num_segments=1", timeout=3600)
    print(f"common text of {written} studies in {time.perf_counter() - started:.0f} s", flush=True)
    return written


def full_match(request: SearchRequest, terms: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """F's query (every term in ``common``) and its facets: the study documents' own values, counted."""
    matches = {"simple_query_string": {**text_clause(terms)["simple_query_string"], "fields": ["common"]}}
    facets: dict[str, Any] = {f"facet_{f}": {"terms": {"field": FACET_FIELDS[f], "size": FACET_SIZE}}
                              for f in request.facets if f in FACET_FIELDS}
    if "StudyDate" in request.facets:
        facets["facet_StudyDate"] = {"date_histogram": {"field": "study_date", "calendar_interval": "year",
                                                        "format": "yyyy", "min_doc_count": 1}}
    return matches, facets


def scale_common(search: str, common: str, copies: int) -> None:
    """``common`` (the kept data's, before bench/scale_index.py) ``copies`` times, as that copies the
    instances; ``common`` becomes an alias of the copy."""
    target = f"{common}-x{copies}"
    settings = next(iter(post(f"{search}/{common}/_settings", method="GET").values()))["settings"]["index"]
    mapping = post(f"{search}/{common}/_mapping", method="GET")
    body = {"settings": {"index": {"number_of_shards": 1, "number_of_replicas": 0,
                                   "mapping.nested_objects.limit": NESTED_LIMIT}, "analysis": settings["analysis"]},
            "mappings": next(iter(mapping.values()))["mappings"]}
    post(f"{search}/{target}", body, method="PUT")
    for copy in range(copies):
        post(f"{search}/_reindex?wait_for_completion=true&refresh=true", {
            "source": {"index": common}, "dest": {"index": target},
            "script": {"lang": "painless", "source": COPY, "params": {"copy": copy}}}, timeout=3600)
    post(f"{search}/{common}", method="DELETE")
    post(f"{search}/_aliases", {"actions": [{"add": {"index": target, "alias": common}}]})
    post(f"{search}/{target}/_forcemerge?max_num_segments=1", timeout=3600)


class Sketch:
    def __init__(self, probe: Probe, common: str) -> None:
        self.probe, self.studies = probe, Probe(probe.search, common)  # the same requests, to the study copy
        self.pool = probe.pool

    def once(self, request: SearchRequest) -> dict[str, Any]:
        terms = query_terms(request.text)
        started = time.perf_counter()
        matches, facets = full_match(request, terms)
        full = self.studies.send({
            "query": {"bool": {"must": [matches], "filter": [{"range": {"instances": {"gte": 1}}}]}},
            "size": MAX_F, "_source": False, "docvalue_fields": ["study_uid"], "track_total_hits": True,
            "sort": ["_score", {"study_uid": "asc"}], "aggs": facets,
        })
        took_f = float(full["took"])
        f_keys = [hit["fields"]["study_uid"][0] for hit in full["hits"]["hits"]]
        f_total = int(full["hits"]["total"]["value"])
        assert f_total <= MAX_F
        rest = {"bool": {"must_not": [{"terms": {"study_uid": f_keys}}]}} if f_keys else None

        def exclude(body: dict[str, Any]) -> dict[str, Any]:
            if rest is None:
                return body
            query = json.loads(json.dumps(body["query"]))
            query["bool"]["filter"].append(rest)
            return {**body, "query": query}

        totals = totals_body(request, terms)
        assert totals is not None
        parts = [self.pool.submit(self.probe.send, exclude(b)) for b in split_aggregations(totals)]
        page_keys = f_keys[request.offset:request.offset + request.limit]
        took_page = 0.0
        if len(page_keys) < request.limit:  # the page reaches past F: R's best studies
            r_page = self.probe.send(exclude(page_body(
                SearchRequest(text=request.text, limit=request.limit - len(page_keys), facets=()), terms)))
            took_page += float(r_page["took"])
            page_keys += [hit["_source"]["study_uid"] for hit in r_page["hits"]["hits"]]
        stats = self.probe.send(page_stats_body(request, terms, page_keys, best=True)) if page_keys else {"took": 0}
        took_page += float(stats["took"])
        aggs: dict[str, Any] = {}
        took_r = 0.0
        for part in parts:
            result = part.result()
            took_r = max(took_r, float(result["took"]))
            aggs.update(result.get("aggregations", {}))
        wall = (time.perf_counter() - started) * 1000
        total = f_total + int(aggs["groups"]["value"])
        counts: dict[str, dict[str, int]] = {}
        for facet in request.facets:
            counts[facet] = {}
            for bucket in full["aggregations"][f"facet_{facet}"]["buckets"]:
                key = str(bucket.get("key_as_string", bucket["key"]))
                counts[facet][key] = counts[facet].get(key, 0) + int(bucket["doc_count"])
            for bucket in aggs[f"facet_{facet}"]["buckets"]:
                key = str(bucket.get("key_as_string", bucket["key"]))
                counts[facet][key] = counts[facet].get(key, 0) + int(bucket["groups"]["value"])
        return {"wall": wall, "f": took_f, "r": took_r, "page": took_page, "total": total, "facets": counts,
                "f_studies": f_total}


    def proven(self, request: SearchRequest) -> dict[str, Any]:
        """F's page, study count and facets (no study list), and at the same time the instances the
        text matches, counted: when F's studies hold exactly that many instances, every matching
        instance is in F (all of theirs match) and R is empty; then the page's studies' stats."""
        terms = query_terms(request.text)
        started = time.perf_counter()
        matches, facets = full_match(request, terms)
        facets["instances"] = {"sum": {"field": "instances"}}
        full_body = {"query": {"bool": {"must": [matches], "filter": [{"range": {"instances": {"gte": 1}}}]}},
                     "from": request.offset, "size": request.limit, "_source": False,
                     "docvalue_fields": ["study_uid"], "track_total_hits": True,
                     "sort": ["_score", {"study_uid": "asc"}], "aggs": facets}
        count_body = {"query": page_body(request, terms)["query"], "size": 0, "track_total_hits": True}
        full_future = self.pool.submit(self.studies.send, full_body)
        counted = self.probe.send(count_body)
        full = full_future.result()
        took_f = max(float(full["took"]), float(counted["took"]))
        empty = int(full["aggregations"]["instances"]["value"]) == int(counted["hits"]["total"]["value"])
        keys = [hit["fields"]["study_uid"][0] for hit in full["hits"]["hits"]]
        stats = self.probe.send(page_stats_body(request, terms, keys, best=True)) if keys else {"took": 0}
        wall = (time.perf_counter() - started) * 1000
        return {"wall": wall, "f": took_f, "page": float(stats["took"]), "r_empty": empty}


def current_counts(probe: Probe, request: SearchRequest) -> tuple[int, dict[str, dict[str, int]]]:
    terms = query_terms(request.text)
    totals = totals_body(request, terms)
    assert totals is not None
    aggs = probe.send(totals)["aggregations"]
    facets = {facet: {str(b.get("key_as_string", b["key"])): int(b["groups"]["value"])
                      for b in aggs[f"facet_{facet}"]["buckets"]} for facet in request.facets}
    return int(aggs["groups"]["value"]), facets


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kept", type=Path, help="the <workdir>/postgres directory of a bench/query.py --keep run")
    parser.add_argument("--queries", type=int, default=30)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep-index", action="store_true", help="leave <index>.common in place (and reuse it)")
    parser.add_argument("--copies", type=int, default=0,
                        help="copy a kept <index>.common this many times first (after bench/scale_index.py --text)")
    args = parser.parse_args()
    kept = json.loads((args.kept / "kept.json").read_text())
    env, index = kept["saved"]["env"], kept["saved"]["name"]
    search = env["ARCHIVE_SEARCH"].rstrip("/")
    probe = Probe(search, index)
    common = index + COMMON_INDEX_SUFFIX
    kept_index = exists(f"{search}/{common}")
    if args.copies:
        if not kept_index:
            parser.error(f"--copies needs the {common} of the data before scale_index (--keep-index)")
        scale_common(search, common, args.copies)
    elif not (args.keep_index and kept_index):
        build_common_index(search, f"{index}.studies", common, env["ARCHIVE_CATALOG"])
    sketch = Sketch(probe, common)
    items = [SearchRequest(text=q.text, limit=20, facets=FACETS)  # the first three untimed
             for q in questions("text_common", Samples(), args.queries + 3, args.seed)]
    try:
        checked = set()
        for request in items:  # the same answer both ways (cardinality: near exact at these counts)
            if request.text in checked:
                continue
            checked.add(request.text)
            measured = sketch.once(request)
            total, facets = current_counts(probe, request)
            drift = abs(measured["total"] - total) / max(total, 1)
            print(f"{request.text!r}: F {measured['f_studies']} studies, total {measured['total']} (now {total}, "
                  f"{100 * drift:.2f} % apart); facets equal: {measured['facets'] == facets}", flush=True)
            if measured["facets"] != facets:
                for facet in request.facets:
                    if measured["facets"][facet] != facets[facet]:
                        print(f"  {facet}: sketch {measured['facets'][facet]} now {facets[facet]}")
        times: dict[str, dict[str, list[float]]] = {
            "now": {"wall": []}, "sketch": {"wall": [], "f": [], "r": [], "page": []},
            "sketch, R proven empty": {"wall": [], "f": [], "page": []}}
        not_empty = 0
        for i, request in enumerate(items):
            now = probe.once(request, 2)
            mine = sketch.once(request)
            proven = sketch.proven(request)
            not_empty += not proven["r_empty"]
            if i >= 3:
                times["now"]["wall"].append(now["wall"])
                for key in times["sketch"]:
                    times["sketch"][key].append(mine[key])
                for key in times["sketch, R proven empty"]:
                    times["sketch, R proven empty"][key].append(proven[key])
        print(f"R not proven empty for {not_empty} of {len(items)} questions")
        for name, series in times.items():
            print(f"{name}: " + ", ".join(
                f"{key} p50 {percentile(values, 0.5):.1f} / p95 {percentile(values, 0.95):.1f} ms"
                for key, values in series.items()), flush=True)
    finally:
        if not args.keep_index:
            delete(f"{search}/{common}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
