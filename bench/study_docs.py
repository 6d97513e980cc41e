"""What study documents would give the web UI's study list: a probe on data ``bench/query.py --keep`` left.

    .venv/bin/python bench/study_docs.py WORKDIR/postgres [--queries 30]

The search index holds one document per instance, so the study list without free text
aggregates over every instance (docs/benchmarks.md, "Query at 10M instances"). This probe
builds, from the kept catalog, a second index with one document per study and each distinct
(modality, institution, body part) of its series (in the synthetic data: one per study), in the
adapter's own document format, and times the web UI's opening list (25 newest studies, the four
facets) on both indexes with the query role's own code, OpenSearch's request cache cleared
before each request, then the parts of the request one by one (OpenSearch ``took``). The probe
index is removed at the end; the kept data is left as it was.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _util import percentile  # noqa: E402

from archive.adapters.opensearch_query import page_body, totals_body  # noqa: E402
from archive.adapters.opensearch_search import OpenSearchIndex, _source  # noqa: E402
from archive.core.models import SearchDocument  # noqa: E402
from archive.core.search import SearchRequest, Sort  # noqa: E402
from tests.e2e.distributed import _drop_index  # noqa: E402

UI_LIST = SearchRequest(limit=25, sort=Sort("StudyDate", True),
                        facets=("Modality", "StudyDate", "InstitutionName", "BodyPartExamined"))
CATALOG_ROWS = """
select st.study_uid, min(s.series_uid), st.study_date, st.study_description, st.accession_number,
       p.patient_id, p.patient_name, p.birth_date, s.modality, s.institution, s.body_part
  from series s join studies st on st.id = s.study_fk join patients p on p.id = st.patient_fk
 group by st.study_uid, st.study_date, st.study_description, st.accession_number,
          p.patient_id, p.patient_name, p.birth_date, s.modality, s.institution, s.body_part
"""
KEYWORDS = ("StudyDate", "StudyDescription", "AccessionNumber", "PatientID", "PatientName", "PatientBirthDate",
            "Modality", "InstitutionName", "BodyPartExamined")


def study_documents(catalog: str, index: str) -> Iterator[dict[str, Any]]:
    import psycopg

    with psycopg.connect(catalog) as conn:  # the URL's options set the kept schema's search_path
        for study, series, *values in conn.cursor(name="studies").execute(CATALOG_ROWS):
            fields = {k: [v] for k, v in zip(KEYWORDS, values) if v}
            key = "|".join([study, *(v or "" for v in values[-3:])])
            doc = SearchDocument(sop_instance_uid=key, study_uid=study, series_uid=series, text="",
                                 fields=fields, indexed_at=time.time())
            yield {"_index": index, "_id": key, "_source": _source(doc)}


async def create_index(search: str, index: str) -> None:
    adapter = OpenSearchIndex(search, index=index)  # the adapter's mapping and settings
    try:
        await adapter.migrate()
    finally:
        await adapter.close()


def post(url: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method="POST", headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=600) as response:
        return dict(json.load(response))


async def ui_list_ms(search: str, index: str, count: int) -> list[float]:
    adapter = OpenSearchIndex(search, index=index, timeout=600)
    try:
        out = []
        for i in range(count + 3):  # three untimed
            post(f"{search}/{index}/_cache/clear?request=true")
            started = time.perf_counter()
            await adapter.query(UI_LIST)
            if i >= 3:
                out.append((time.perf_counter() - started) * 1000)
        return out
    finally:
        await adapter.close()


def parts_took_ms(search: str, index: str) -> dict[str, int]:
    """OpenSearch's own time for each part of the list's requests (request cache off)."""
    page, totals = page_body(UI_LIST, []), totals_body(UI_LIST, [])
    assert totals is not None
    aggs = totals["aggs"]
    plain = {name: {k: v for k, v in agg.items() if k != "aggs"} for name, agg in aggs.items() if name != "groups"}
    for agg in plain.values():
        if "terms" in agg:
            agg["terms"] = {**agg["terms"], "order": [{"_count": "desc"}, {"_key": "asc"}]}
    bodies = {
        "page (sort, collapse by study)": page,
        "total (cardinality of the study UID)": {**totals, "aggs": {"groups": aggs["groups"]}},
        "facets (per-bucket cardinality)": {**totals, "aggs": {k: v for k, v in aggs.items() if k != "groups"}},
        "facets (document counts)": {**totals, "aggs": plain},
    }
    return {name: min(post(f"{search}/{index}/_search?request_cache=false", body)["took"] for _ in range(5))
            for name, body in bodies.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kept", type=Path, help="the <workdir>/postgres directory of a bench/query.py --keep run")
    parser.add_argument("--queries", type=int, default=30)
    args = parser.parse_args()
    kept = json.loads((args.kept / "kept.json").read_text())
    if kept["family"] != "postgres":
        parser.error("study documents are for the OpenSearch index: give a postgres directory")
    env, instances = kept["saved"]["env"], kept["saved"]["name"]
    search, probe = env["ARCHIVE_SEARCH"].rstrip("/"), f"studies{instances}"  # outside the index's template
    from opensearchpy import OpenSearch, helpers

    asyncio.run(create_index(search, probe))
    try:
        started = time.perf_counter()
        client = OpenSearch(hosts=[search], timeout=600)
        written, _ = helpers.bulk(client, study_documents(env["ARCHIVE_CATALOG"], probe), chunk_size=5000,
                                  refresh=True)
        print(f"{written} study documents written in {time.perf_counter() - started:.0f} s")
        for index in (instances, probe):
            ms = asyncio.run(ui_list_ms(search, index, args.queries))
            print(f"{index}: the UI's opening list through the adapter: p50 {percentile(ms, 0.5):.1f} ms, "
                  f"p95 {percentile(ms, 0.95):.1f} ms")
            for part, took in parts_took_ms(search, index).items():
                print(f"  {part}: {took} ms")
    finally:
        _drop_index(search, probe)
    return 0


if __name__ == "__main__":
    sys.exit(main())
