"""The study path at ten times the studies: a probe on data ``bench/query.py --keep`` left.

    .venv/bin/python bench/study_docs.py WORKDIR/postgres [--scale 10] [--queries 30]

A study list without free text reads the study documents (archive/adapters/opensearch_studies.py):
its page and its totals (study count, four facets) are two requests to the study index, whose
cost grows with the studies; then one request for the page's 25 studies to the instance index,
whose cost does not grow with the archive. Loading 10M instances takes about two hours here, so
this probe copies the kept study index ``--scale`` times (the copies' study UIDs suffixed, their
values as they are, the document rewritten by this build's ``study_source``) into a probe index with the adapter's own mapping, and times the study path's
two requests on it and on the kept index: OpenSearch's ``took`` and the wall time, the request
cache off. The probe index is removed at the end; the kept data is left as it was.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _util import percentile  # noqa: E402
from _util import request_json as post  # noqa: E402

from archive.adapters.opensearch_query import study_page_body, study_totals_body  # noqa: E402
from archive.adapters.opensearch_studies import NESTED_LIMIT, STUDY_MAPPINGS, study_source  # noqa: E402
from archive.core.query import SingleValue, Wildcard  # noqa: E402
from archive.core.search import FACETS, SearchRequest, Sort  # noqa: E402
from tests.e2e.distributed import _drop_index  # noqa: E402

REQUESTS = {
    "the UI's opening list (25 newest, 4 facets)": SearchRequest(limit=25, sort=Sort("StudyDate", True),
                                                                facets=FACETS),
    "a surname typed (SMITH*)": SearchRequest(limit=25, sort=Sort("StudyDate", True), facets=FACETS,
                                              filters=(Wildcard("PatientName", "SMITH*"),)),
    "a facet clicked (Modality=MR)": SearchRequest(limit=25, sort=Sort("StudyDate", True), facets=FACETS,
                                                   filters=(SingleValue("Modality", "MR"),)),
}


def copies(search: str, source: str, target: str, scale: int) -> Iterator[dict[str, Any]]:
    from opensearchpy import OpenSearch, helpers

    client = OpenSearch(hosts=[search], timeout=600)
    for hit in helpers.scan(client, index=source, query={"query": {"match_all": {}}}, size=2000):
        for i in range(scale):
            study = hit["_source"]["study_uid"] + (f".{i}" if i else "")
            yield {"_index": target, "_id": study, "_source": study_source(study, hit["_source"]["combos"])}


def timed(search: str, index: str, body: dict[str, Any], count: int) -> tuple[list[float], list[float]]:
    took, wall = [], []
    for i in range(count + 3):  # three untimed
        started = time.perf_counter()
        result = post(f"{search}/{index}/_search?request_cache=false", body)
        if i >= 3:
            wall.append((time.perf_counter() - started) * 1000)
            took.append(float(result["took"]))
    return took, wall


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kept", type=Path, help="the <workdir>/postgres directory of a bench/query.py --keep run")
    parser.add_argument("--scale", type=int, default=10, help="copies of each study (1: the kept size)")
    parser.add_argument("--queries", type=int, default=30)
    args = parser.parse_args()
    kept = json.loads((args.kept / "kept.json").read_text())
    if kept["family"] != "postgres":
        parser.error("study documents are for the OpenSearch index: give a postgres directory")
    env, instances = kept["saved"]["env"], kept["saved"]["name"]
    search, studies = env["ARCHIVE_SEARCH"].rstrip("/"), f"{instances}.studies"
    probe = f"probe-{instances}-x{args.scale}"
    from opensearchpy import OpenSearch, helpers

    settings = {"index": {"number_of_shards": 1, "number_of_replicas": 0, "refresh_interval": "-1",
                          "mapping.nested_objects.limit": NESTED_LIMIT}}
    post(f"{search}/{probe}", {"settings": settings, "mappings": STUDY_MAPPINGS}, method="PUT")
    try:
        started = time.perf_counter()
        client = OpenSearch(hosts=[search], timeout=600)
        written, _ = helpers.bulk(client, copies(search, studies, probe, args.scale), chunk_size=5000)
        post(f"{search}/{probe}/_refresh")
        count = post(f"{search}/{probe}/_count")["count"]
        print(f"{written} study documents ({count} counted) written in {time.perf_counter() - started:.0f} s")
        for index in (probe,):
            size = post(f"{search}/{index}/_stats/store", method="GET")["_all"]["primaries"]["store"]["size_in_bytes"]
            print(f"{index}: {post(f'{search}/{index}/_count')['count']} studies, {size / 2**20:.1f} MB")
            for name, request in REQUESTS.items():
                for part, body in (("page", study_page_body(request)), ("totals", study_totals_body(request))):
                    took, wall = timed(search, index, body, args.queries)
                    print(f"  {name}, {part}: took p50 {percentile(took, 0.5):.0f} / p95 {percentile(took, 0.95):.0f} ms,"
                          f" wall p50 {percentile(wall, 0.5):.1f} / p95 {percentile(wall, 0.95):.1f} ms")
    finally:
        _drop_index(search, probe)
    return 0


if __name__ == "__main__":
    sys.exit(main())
