"""Make the search index a ``bench/query.py --keep`` run left ten times larger, in OpenSearch alone.

    .venv/bin/python bench/scale_index.py WORKDIR/postgres [--copies 10]

Loading 10M instances through the adapters takes about two hours here. For the study list, which
reads only the search index (and the catalog for the 25 studies of a page), a copy inside
OpenSearch does: the kept instance index is copied ``--copies`` times into a new index with
``_reindex`` (each copy's study, series and instance UIDs suffixed ``.<n>``, its values as they
are), the kept index is replaced by an alias of that name to the copy, the study documents are
copied as the instances are (with their common text: the copies' fields are the same, so what a
rebuild would read from them), and rebuilt (their counts; the common text carried over). ``bench/query.py --attach WORKDIR/postgres --kinds ui_list,ui_list_name`` then
measures the study list on it (this build and a ``--baseline``). The index does not keep the
text in ``_source``; with ``--text`` each copy's text is made again from its ``fields`` (the
values ``flatten`` made it of, each cut at 1,024 characters as ``fields`` keeps them), so that free
text finds the copies too. What the copy cannot give: the catalog's rows of the copies (a page's
series and instance counts are missing for them).
``bench/query.py --remove WORKDIR/postgres`` removes the alias; this script's ``--drop`` the copy.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _util import request_json  # noqa: E402

from archive.adapters.opensearch_query import ANALYSIS  # noqa: E402
from archive.adapters.opensearch_search import MAPPINGS, OpenSearchIndex  # noqa: E402

SUFFIX = """
if (params.text) {
  StringBuilder text = new StringBuilder();
  for (def entry : ctx._source.fields.entrySet()) {
    def values = entry.getValue();
    if (values instanceof List) {
      for (def value : values) { text.append(value.toString()).append(' '); }
    } else if (values != null) {
      text.append(values.toString()).append(' ');
    }
  }
  ctx._source.text = text.toString();
}
if (params.copy > 0) {
  String s = '.' + params.copy;
  ctx._id = ctx._id + s;
  ctx._source.sop_instance_uid = ctx._source.sop_instance_uid + s;
  ctx._source.study_uid = ctx._source.study_uid + s;
  ctx._source.series_uid = ctx._source.series_uid + s;
}
"""

STUDY_COPY = """
if (params.copy > 0) {
  String s = '.' + params.copy;
  ctx._id = ctx._id + s;
  ctx._source.study_uid = ctx._source.study_uid + s;
}
"""


def copy_index(search: str, source: str, dest: str) -> None:
    """An empty index with ``source``'s settings (analysis, nested limit) and mapping."""
    settings = next(iter(call(f"{search}/{source}/_settings", method="GET").values()))["settings"]["index"]
    mapping = next(iter(call(f"{search}/{source}/_mapping", method="GET").values()))["mappings"]
    index = {"number_of_shards": 1, "number_of_replicas": 0, "refresh_interval": "-1"}
    if "mapping" in settings:
        index["mapping"] = settings["mapping"]
    body: dict[str, Any] = {"settings": {"index": index}, "mappings": mapping}
    if "analysis" in settings:
        body["settings"]["analysis"] = settings["analysis"]
    call(f"{search}/{dest}", body, method="PUT")


def call(url: str, body: dict[str, Any] | None = None, method: str = "POST") -> dict[str, Any]:
    return request_json(url, body, method, timeout=3600)  # a _reindex of 1M documents waits for it


async def rebuild(search: str, name: str) -> int:
    index = OpenSearchIndex(search, index=name, timeout=600)
    try:
        await index.migrate()
        return await index.rebuild_study_documents()
    finally:
        await index.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kept", type=Path)
    parser.add_argument("--copies", type=int, default=10)
    parser.add_argument("--drop", action="store_true", help="remove the copy a run of this script made")
    parser.add_argument("--text", action="store_true", help="make each copy's text again from its fields")
    args = parser.parse_args()
    kept = json.loads((args.kept / "kept.json").read_text())
    search, name = kept["saved"]["env"]["ARCHIVE_SEARCH"].rstrip("/"), kept["saved"]["name"]
    target = f"{name}-x{args.copies}"
    if args.drop:
        for path in (f"/{target}", f"/{name}.studies"):
            try:
                call(f"{search}{path}", method="DELETE")
            except urllib.error.HTTPError as exc:
                if exc.code != 404:
                    raise
        return 0
    call(f"{search}/{target}", {  # this build's mapping (a baseline's query role may have put an older template)
        "settings": {"index": {"number_of_shards": 1, "number_of_replicas": 0}, "analysis": ANALYSIS},
        "mappings": MAPPINGS,
    }, method="PUT")
    call(f"{search}/{target}/_settings", {"index": {"refresh_interval": "-1"}}, method="PUT")
    started = time.perf_counter()
    for copy in range(args.copies):
        task = call(f"{search}/_reindex?refresh=false&wait_for_completion=false", {
            "source": {"index": name, "size": 5000},
            "dest": {"index": target},
            "script": {"lang": "painless", "source": SUFFIX, "params": {"copy": copy, "text": args.text}},
        })["task"]
        while not (status := call(f"{search}/_tasks/{task}", method="GET"))["completed"]:
            time.sleep(5)
        done = status["response"]
        if done.get("failures"):
            raise SystemExit(f"copy {copy}: {str(done['failures'])[:500]}")
        print(f"copy {copy}: {done['created']} documents, {time.perf_counter() - started:.0f} s", flush=True)
    call(f"{search}/{target}/_settings", {"index": {"refresh_interval": "250ms"}}, method="PUT")
    call(f"{search}/{target}/_refresh")
    studies, held = f"{name}.studies", f"{name}.studies-held"
    copy_index(search, studies, held)
    call(f"{search}/_reindex?wait_for_completion=true&refresh=true", {"source": {"index": studies},
                                                                    "dest": {"index": held}})
    call(f"{search}/{name}", method="DELETE")
    call(f"{search}/{studies}", method="DELETE")
    call(f"{search}/_aliases", {"actions": [{"add": {"index": target, "alias": name}}]})
    copy_index(search, held, studies)
    for copy in range(args.copies):
        call(f"{search}/_reindex?wait_for_completion=true&refresh=false", {
            "source": {"index": held, "size": 2000}, "dest": {"index": studies},
            "script": {"lang": "painless", "source": STUDY_COPY, "params": {"copy": copy}}})
    call(f"{search}/{studies}/_settings", {"index": {"refresh_interval": "250ms"}}, method="PUT")
    call(f"{search}/{studies}/_refresh")
    call(f"{search}/{held}", method="DELETE")
    started = time.perf_counter()
    rebuilt = asyncio.run(rebuild(search, name))
    print(f"{name} is now an alias of {target}: {call(f'{search}/{name}/_count')['count']} instances, "
          f"{rebuilt} studies (study documents rebuilt in {time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
