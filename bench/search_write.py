"""What the search index costs the indexer: upserts per instance, FTS5 or OpenSearch.

    .venv/bin/python bench/search_write.py [--count 50000] [--repeat 3] [--baseline CHECKOUT]
                                           [--backend sqlite|opensearch]

Documents of the query benchmark's synthetic hospital (bench/_querydata.py, flattened as the
indexer flattens them) are upserted into a fresh search.db in batches of 200 (the indexer's
batch size), one process per run, alternating this checkout and ``--baseline`` (another checkout
of the archive, for a before and after in one run). Reports the wall and CPU microseconds an
instance and the file's size; medians over the repeats. ``--backend opensearch`` writes into a
fresh index of the OpenSearch of ``scripts/services.sh`` (``.services.env``), removed afterwards,
and also reports OpenSearch's own CPU (its node's process CPU, over the run) and the index sizes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import pickle
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
BATCH = 200


def search_url() -> str:
    for line in (HERE.parent / ".services.env").read_text().splitlines():
        if line.startswith("ARCHIVE_SEARCH="):
            return line.split("=", 1)[1].strip()
    raise SystemExit("no ARCHIVE_SEARCH in .services.env: run `make services` first")


def node_cpu_ms(url: str) -> float:
    with urllib.request.urlopen(f"{url.rstrip('/')}/_nodes/_local/stats/process", timeout=30) as response:
        nodes = json.load(response)["nodes"]
    return float(sum(node["process"]["cpu"]["total_in_millis"] for node in nodes.values()))


def opensearch_worker(documents: list[object], name: str) -> None:
    from archive.adapters.opensearch_search import OpenSearchIndex

    url = search_url()

    async def run() -> dict[str, float]:
        index = OpenSearchIndex(url, index=name)
        await index.migrate()
        try:
            server0 = node_cpu_ms(url)
            cpu0, wall0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
            for start in range(0, len(documents), BATCH):
                await index.upsert(documents[start:start + BATCH])  # type: ignore[arg-type]
            wall = time.perf_counter() - wall0
            cpu1 = resource.getrusage(resource.RUSAGE_SELF)
            server = (node_cpu_ms(url) - server0) / 1000
            sizes = {}
            for key, target in (("mb", name), ("studies_mb", f"{name}.studies")):
                try:
                    stats = await index._client.indices.stats(index=target, metric="store")
                    sizes[key] = stats["_all"]["primaries"]["store"]["size_in_bytes"] / 2**20
                except Exception:  # the baseline has no study index
                    sizes[key] = 0.0
            cpu = (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime)
            return {"wall_s": wall, "cpu_s": cpu, "server_cpu_s": server, **sizes}
        finally:
            await index.drop()
            await index.close()

    print(json.dumps(asyncio.run(run())))


def worker(root: Path, docs_file: Path, db: Path) -> None:
    """Runs in a child: import the archive from ``root``, upsert the documents, print the times."""
    sys.path.insert(0, str(root))
    import archive
    from archive.adapters.fts5_search import Fts5Search

    assert Path(archive.__file__).resolve().is_relative_to(root.resolve()), archive.__file__
    documents = pickle.loads(docs_file.read_bytes())
    if db.name.startswith("opensearch-"):
        opensearch_worker(documents, db.name)
        return

    async def run() -> tuple[float, float]:
        index = Fts5Search(db)
        await index.migrate()
        cpu0, wall0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        for start in range(0, len(documents), BATCH):
            await index.upsert(documents[start:start + BATCH])
        wall = time.perf_counter() - wall0
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
        await index.close()
        return wall, (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime)

    wall, cpu = asyncio.run(run())
    size = sum(p.stat().st_size for p in db.parent.glob(db.name + "*"))
    print(json.dumps({"wall_s": wall, "cpu_s": cpu, "mb": size / 2**20}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--baseline", type=Path, metavar="CHECKOUT")
    parser.add_argument("--backend", choices=("sqlite", "opensearch"), default="sqlite")
    parser.add_argument("--worker", nargs=3, metavar=("ROOT", "DOCS", "DB"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(Path(args.worker[0]), Path(args.worker[1]), Path(args.worker[2]))
        return
    sys.path.insert(0, str(HERE.parent))
    sys.path.insert(0, str(HERE))
    from _querydata import Hospital

    from archive.core.flatten import flatten

    builds = {"this checkout": HERE.parent}
    if args.baseline:
        builds["baseline"] = args.baseline.resolve()
    with tempfile.TemporaryDirectory(prefix="search-write-") as tmp:
        docs_file = Path(tmp) / "docs.pickle"
        documents = [flatten(m, indexed_at=0.0) for m in Hospital(seed=7, run=1).take(args.count)]
        docs_file.write_bytes(pickle.dumps(documents))
        print(f"{args.count} documents, {len({d.study_uid for d in documents})} studies", file=sys.stderr)
        results: dict[str, list[dict[str, float]]] = {name: [] for name in builds}
        for rep in range(args.repeat):
            for name, root in builds.items():
                db = Path(tmp) / f"{rep}-{name.replace(' ', '-')}" / "search.db"
                db.parent.mkdir()
                if args.backend == "opensearch":  # an index name instead of a file
                    db = db.parent / f"opensearch-bench-{uuid.uuid4().hex[:10]}"
                out = subprocess.run([sys.executable, __file__, "--worker", str(root), str(docs_file), str(db)],
                                     check=True, capture_output=True, text=True, cwd=root).stdout
                results[name].append(json.loads(out.strip().splitlines()[-1]))
                print(f"rep {rep} {name}: {results[name][-1]}", file=sys.stderr)
    def median(runs: list[dict[str, float]], key: str, per_instance: float = 1.0) -> float:
        return statistics.median(r[key] for r in runs) * per_instance

    us = 1e6 / args.count
    if args.backend == "opensearch":
        print("| build | µs an instance, wall | µs an instance, indexer CPU | µs an instance, OpenSearch CPU "
              "| instance index MB | study index MB |")
        print("|---|---:|---:|---:|---:|---:|")
        for name, runs in results.items():
            print(f"| {name} | {median(runs, 'wall_s', us):.0f} | {median(runs, 'cpu_s', us):.0f} "
                  f"| {median(runs, 'server_cpu_s', us):.0f} | {median(runs, 'mb'):.1f} | {median(runs, 'studies_mb'):.1f} |")
        return
    print("| build | µs an instance, wall | µs an instance, CPU | search.db MB |")
    print("|---|---:|---:|---:|")
    for name, runs in results.items():
        print(f"| {name} | {median(runs, 'wall_s', us):.0f} | {median(runs, 'cpu_s', us):.0f} | {median(runs, 'mb'):.0f} |")


if __name__ == "__main__":
    main()
