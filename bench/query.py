"""Query benchmark: QIDO-RS, C-FIND and free-text latency as the archive grows to 1M instances.

    .venv/bin/python bench/query.py [--sizes 10000,100000,1000000] [--families postgres,sqlite]
                                    [--queries 200] [--kinds ...] [--quick] [--out results.json] [--markdown table.md]
                                    [--keep] [--attach WORKDIR/FAMILY [--no-request-cache]] [--baseline CHECKOUT]
                                    [--remove WORKDIR/FAMILY]

For each backend family (PostgreSQL + OpenSearch on the services of ``scripts/services.sh``,
in a schema and an index of the run's own; SQLite + FTS5 in a temp dir) the catalog and the
search index are bulk loaded with a synthetic hospital archive (bench/_querydata.py) up to
each size in turn, and at each size a real ``dicom-archive query`` process is queried over
QIDO-RS, C-FIND (once the query role has a C-FIND SCP) and free text. Everything the run
creates (schema, index, files, processes) is removed at the end, unless ``--keep``: then
``--attach`` measures that data again (another checkout, a fix) without loading it, which at
10M instances saves an hour, and ``--remove`` drops it. See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _queryclients import (EXACT, FINDSCU_REPEAT, KINDS, LABELS, TEXT_KINDS, UI_KINDS, UI_PAGE, CFind, Http, LeanFind,  # noqa: E402
                           Question, findscu_mean_ms, qido, questions, search_api, ui_list)
from _querydata import Hospital, Samples  # noqa: E402
from _queryload import FAMILIES, Family, QueryService  # noqa: E402
from _report import machine  # noqa: E402
from _util import THIS_BUILD, Build, install_signal_handlers, kill_all, percentile  # noqa: E402

WARMUP = 20
KEPT = "kept.json"  # in <workdir>/<family> of a --keep run: what --attach reads


def log(msg: str) -> None:
    print(f"[bench-query {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


async def timed(run: Callable[[Question], Awaitable[int]], items: list[Question],
                before: Callable[[], Awaitable[None]] | None = None) -> dict[str, Any]:
    """Latency in ms of each question after ``WARMUP`` untimed ones; p50/p95 and rows returned.
    ``before`` runs ahead of each question, untimed."""
    for q in items[:WARMUP]:
        await run(q)
    ms, rows = [], []
    for q in items[WARMUP:]:
        if before is not None:
            await before()
        started = time.perf_counter()
        rows.append(await run(q))
        ms.append((time.perf_counter() - started) * 1000)
    return {"n": len(ms), "p50_ms": percentile(ms, 0.5), "p95_ms": percentile(ms, 0.95),
            "max_ms": max(ms), "rows_mean": sum(rows) / len(rows)}


def blocking(fn: Callable[[Question], int]) -> Callable[[Question], Awaitable[int]]:
    """A synchronous client as the awaitable ``timed`` expects (run inline: nothing else runs)."""
    async def run(q: Question) -> int:
        return fn(q)

    return run


async def measure(family: Family, service: QueryService, samples: Samples, size: int, count: int,
                  cfind: bool, kinds: Sequence[str] = KINDS) -> list[dict[str, Any]]:
    """Every interface's latency for each of ``kinds`` (a subset of KINDS) at this size."""
    out: list[dict[str, Any]] = []

    def row(interface: str, kind: str, result: dict[str, Any]) -> None:
        out.append({"family": family.key, "size": size, "interface": interface, "kind": kind, **result})
        log(f"{family.key} {size:>8}: {interface:<10} {kind:<14} p50 {result['p50_ms']:7.1f} ms  "
            f"p95 {result['p95_ms']:7.1f} ms  rows {result['rows_mean']:.1f}")

    http = Http(service.http_port)
    try:
        catalog_kinds = [k for k in kinds if k not in TEXT_KINDS and k not in UI_KINDS and k != "echo"]
        for kind in catalog_kinds:
            row("qido", kind, await timed(blocking(qido(http)), questions(kind, samples, count, size)))
        if cfind and catalog_kinds:
            for interface, client in (("cfind", CFind), ("cfind-lean", LeanFind)):
                finder = client(service.dicom_port)
                try:
                    if "echo" in kinds:
                        row(interface, "echo", await timed(blocking(finder.echo), questions("echo", samples, count, size)))
                    for kind in catalog_kinds:
                        row(interface, kind, await timed(blocking(finder), questions(kind, samples, count, size)))
                finally:
                    finder.close()
            for kind in [k for k in ("patient_id", "study_uid", "study_date") if k in kinds]:  # a C client
                q = questions(kind, samples, 1, size)[0]
                mean = await asyncio.to_thread(findscu_mean_ms, service.dicom_port, q)
                if mean is not None:
                    out.append({"family": family.key, "size": size, "interface": "findscu", "kind": kind,
                                "n": FINDSCU_REPEAT, "mean_ms": mean})
                    log(f"{family.key} {size:>8}: findscu    {kind:<14} mean {mean:7.1f} ms")
        api = search_api_available(http)
        assert family.search is not None
        index = family.search

        async def direct(q: Question) -> int:
            return len(await index.search(q.text, limit=20))

        # the search API as on an archive that takes in images all day: the index changed since the
        # same request was last answered, so no cached answer (OpenSearch's request cache) serves it
        changed = family.forget_cached_answers if family.answer_cache else None
        for kind in [k for k in TEXT_KINDS if k in kinds]:
            items = questions(kind, samples, count, size)
            if api:
                row("search-api", kind, await timed(blocking(search_api(http)), items, changed))
                row("search-api-nofacets", kind, await timed(blocking(search_api(http, facets=False)), items, changed))
            row("search-port", kind, await timed(direct, items))
        if api:
            for kind in [k for k in UI_KINDS if k in kinds]:
                items = questions(kind, samples, count, size)
                row("search-api-ui", kind, await timed(blocking(ui_list(http)), items, changed))
                if family.answer_cache:  # and as at night: nothing changed, the same request again
                    row("search-api-ui-cached", kind, await timed(blocking(ui_list(http)), items))
    finally:
        http.close()
    return out


def search_api_available(http: Http) -> bool:
    try:
        http.get("/api/search", {"q": "bench", "limit": 1})
        return True
    except RuntimeError:  # 404 until the search API lands
        return False


async def bench_family(key: str, sizes: list[int], args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    family = FAMILIES[key](workdir / key)
    hospital = Hospital(seed=args.seed)
    result: dict[str, Any] = {"family": key, "label": family.label, "stages": [], "rows": []}
    service: QueryService | None = None
    baseline: QueryService | None = None  # --baseline: the other checkout's query role on the same data
    result["baseline_rows"] = []
    try:
        await family.setup()
        loaded = 0
        for size in sizes:
            started = time.perf_counter()
            await family.bulk_mode(True)
            while loaded < size:
                chunk = hospital.take(min(args.chunk, size - loaded))
                await family.load(chunk)
                loaded += len(chunk)
            await family.bulk_mode(False)
            load_s = time.perf_counter() - started
            await family.analyze()
            s = hospital.samples
            stage = {"size": size, "load_s": load_s, "load_inst_s": (size - (result["stages"][-1]["size"]
                     if result["stages"] else 0)) / load_s, "patients": len(s.patient_ids), "studies": s.studies,
                     "series": s.series, "after_load_s": time.perf_counter() - started - load_s, **family.sizes()}
            result["stages"].append(stage)
            log(f"{key}: {size} instances loaded ({stage['load_inst_s']:.0f} inst/s), {stage}")
            if args.keep:  # what --attach needs to measure this data again without loading it
                kept = {"family": key, "label": family.label, "size": size, "saved": family.saved(),
                        "samples": dataclasses.asdict(s), "stage": stage}
                (family.workdir / KEPT).write_text(json.dumps(kept))
            if service is None:
                service = QueryService(family)
                service.start()
            cfind = service.dicom_listening(timeout=2)
            if not cfind:
                log(f"{key}: the query role does not listen on its DICOM port: no C-FIND measured")
            result["rows"] += await measure(family, service, hospital.samples, size, args.queries + WARMUP, cfind,
                                            args.kinds)
            if args.baseline:
                if baseline is None:
                    baseline = QueryService(family, Build.checkout(args.baseline, "baseline"))
                    baseline.start()
                rows = await measure(family, baseline, hospital.samples, size, args.queries + WARMUP,
                                     baseline.dicom_listening(timeout=2), args.kinds)
                result["baseline_rows"] += [{**r, "family": f"{key}@baseline"} for r in rows]
    except Exception as exc:
        result["error"] = f"{type(exc).__name__}: {exc}"
        log(f"{key}: FAILED {result['error']}\n{traceback.format_exc()}")
        if service is not None and service.proc is not None:
            log(service.proc.log_tail())
    finally:
        for running in (service, baseline):
            if running is not None:
                running.stop()
        await family.close()
        if args.keep:
            log(f"{key}: --keep: left in place (remove with --remove {family.workdir}): {family.env}")
        else:
            await asyncio.to_thread(family.teardown)  # its helpers run event loops of their own
    return result


async def bench_attached(directory: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Measure the data a ``--keep`` run left in ``directory`` (``<workdir>/<family>``), as it is."""
    kept = json.loads((directory / KEPT).read_text())
    key, size = kept["family"], int(kept["size"])
    family = FAMILIES[key](directory)
    samples = Samples(**kept["samples"])
    result: dict[str, Any] = {"family": key, "label": family.label, "stages": [], "rows": [], "baseline_rows": []}
    services: list[QueryService] = []
    try:
        await family.attach(kept["saved"])
        if args.no_request_cache:
            await family.cache_answers(False)
        stage = {**kept["stage"], **family.sizes()}  # disk and memory now; the load figures of that run
        result["stages"].append(stage)
        log(f"{key}: attached to {size} instances: {stage}")
        builds = [("rows", THIS_BUILD)] + ([("baseline_rows", Build.checkout(args.baseline, "baseline"))]
                                            if args.baseline else [])
        for rows, build in builds:
            service = QueryService(family, build)
            services.append(service)
            service.start()
            measured = await measure(family, service, samples, size, args.queries + WARMUP,
                                     service.dicom_listening(timeout=2), args.kinds)
            result[rows] += [{**r, "family": f"{key}@baseline"} for r in measured] if build.tag else measured
            service.stop()
    except Exception as exc:
        result["error"] = f"{type(exc).__name__}: {exc}"
        log(f"{key}: FAILED {result['error']}\n{traceback.format_exc()}")
    finally:
        for service in services:
            service.stop()
        if args.no_request_cache:
            await family.cache_answers(True)
        await family.close()  # never removed: that is for whoever kept it
    return result


def remove_kept(directory: Path) -> None:
    """``--remove``: drop what a ``--keep`` run left in ``directory``."""
    kept = json.loads((directory / KEPT).read_text())
    family = FAMILIES[kept["family"]](directory)
    family.restore(kept["saved"])
    family.remove_kept()
    log(f"{kept['family']}: removed the {kept['size']} instances kept in {directory}")


# ---- report ---------------------------------------------------------------------------------

INTERFACES = {"qido": "QIDO-RS", "cfind": "C-FIND (pynetdicom requestor)",
              "cfind-lean": "C-FIND (a lean socket requestor: the archive's time)", "findscu": f"C-FIND, DCMTK findscu (mean of {FINDSCU_REPEAT})", "search-api": "GET /api/search (studies, all facets)",
              "search-api-nofacets": "GET /api/search (studies, facets=)",
              "search-port": "SearchIndex.search (instances, in process)",
              "search-api-ui": f"GET /api/search as the web UI asks (studies, {UI_PAGE} per page, all facets)",
              "search-api-ui-cached": "the same, the index unchanged since the same request (request cache)"}


def markdown(results: list[dict[str, Any]]) -> str:
    sizes = sorted({r["size"] for res in results for r in res["rows"]})
    families = [res for res in results if res["rows"]]
    head = "| query | interface | " + " | ".join(f"{res['label']} {_n(s)}" for res in families for s in sizes) + " |"
    lines = [head, "|---|---|" + "---|" * (len(families) * len(sizes))]
    index = {(r["family"], r["size"], r["interface"], r["kind"]): r for res in families for r in res["rows"]}
    for interface in INTERFACES:
        for kind in KINDS:
            cells = [index.get((res["family"], s, interface, kind)) for res in families for s in sizes]
            if not any(cells):
                continue
            text = [("–" if not c else f"mean {c['mean_ms']:.1f}" if "mean_ms" in c
                     else f"{c['p50_ms']:.1f} / {c['p95_ms']:.1f} ({_rows(c['rows_mean'])})") for c in cells]
            lines.append(f"| {LABELS[kind]} | {INTERFACES[interface]} | " + " | ".join(text) + " |")
    lines += ["", "| backend | size | patients | studies | series | load inst/s | catalog MB | search MB "
              "| catalog memory (PSS) MB | search memory (RSS / heap used of max) MB |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for res in results:
        for st in res["stages"]:
            heap = (f"{st['search_rss_mb']:.0f} / {st['search_heap_used_mb']:.0f} of {st['search_heap_max_mb']:.0f}"
                    if "search_rss_mb" in st and "search_heap_used_mb" in st else "–")
            pss = f"{st['catalog_pss_mb']:.0f}" if "catalog_pss_mb" in st else "–"
            lines.append(f"| {res['label']} | {_n(st['size'])} | {st['patients']} | {st['studies']} | {st['series']} "
                         f"| {st['load_inst_s']:.0f} | {st.get('catalog_mb', 0):.0f} | {st.get('search_mb', 0):.0f} "
                         f"| {pss} | {heap} |")
        if res.get("error"):
            lines.append(f"\n**{res['label']} failed:** {res['error'][:300]}")
    return "\n".join(lines)


def _n(size: int) -> str:
    return f"{size // 1_000_000}M" if size >= 1_000_000 and size % 1_000_000 == 0 else f"{size // 1000}k"


def _rows(mean: float) -> str:
    return f"{mean:.0f}" if mean >= 10 else f"{mean:.1f}"


def targets(results: list[dict[str, Any]]) -> list[str]:
    """Issues 3 and 13: exact keys p95 < 10 ms, free text p95 < 50 ms, the web UI's study list p95 < 100 ms,
    at the largest size on PostgreSQL/OpenSearch."""
    out = []
    for res in results:
        if not res["rows"] or res["family"] != "postgres":  # the targets are for the distributed family
            continue
        top = max(r["size"] for r in res["rows"])
        for r in res["rows"]:
            if r["size"] != top or r["kind"] not in (*EXACT, *TEXT_KINDS, *UI_KINDS) or "p95_ms" not in r:
                continue
            goal = 10.0 if r["kind"] in EXACT else 50.0 if r["kind"] in TEXT_KINDS else 100.0
            flat = [x["p95_ms"] for x in res["rows"] if (x["interface"], x["kind"]) == (r["interface"], r["kind"])]  # noqa: E501
            verdict = "met" if r["p95_ms"] < goal else "MISSED"
            out.append(f"{res['label']} {_n(top)}, {INTERFACES[r['interface']]}, {LABELS[r['kind']]}: p95 "
                       f"{r['p95_ms']:.1f} ms (target < {goal:.0f} ms: {verdict}; p95 by size "
                       f"{' → '.join(f'{v:.1f}' for v in flat)} ms)")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", help="instance counts to measure at, ascending (default 10000,100000,1000000)")
    parser.add_argument("--families", default=",".join(FAMILIES), help=f"subset of {','.join(FAMILIES)}")
    parser.add_argument("--queries", type=int, help="timed queries per kind, interface and size (default 200)")
    parser.add_argument("--kinds", help=f"subset of the query kinds to measure ({','.join(KINDS)})")
    parser.add_argument("--chunk", type=int, default=50_000, help="instances generated at a time")
    parser.add_argument("--seed", type=int, default=1437, help="seed of the synthetic data and of the queries")
    parser.add_argument("--quick", action="store_true", help="10k instances, 50 queries per kind (about a minute)")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--markdown", type=Path, help="write the tables as Markdown here")
    parser.add_argument("--keep", action="store_true",
                        help="leave the loaded schema, index and files in place (to EXPLAIN or --attach; then --remove)")
    parser.add_argument("--workdir", type=Path, help="where to put the SQLite files and logs (default: a temp dir)")
    parser.add_argument("--attach", type=Path, metavar="DIR",
                        help="measure the data a --keep run left (its <workdir>/<family> directory) without loading; "
                             "--sizes and --families do not apply, nothing is removed")
    parser.add_argument("--remove", type=Path, metavar="DIR",
                        help="remove the data a --keep run left (its <workdir>/<family> directory: schema, index, "
                             "files) and exit")
    parser.add_argument("--no-request-cache", action="store_true",
                        help="with --attach: OpenSearch's request cache off for the run (not cleared before each "
                             "question), as an index that changes between any two requests")
    parser.add_argument("--baseline", type=Path, metavar="CHECKOUT",
                        help="another checkout (with its .venv): its query role answers the same queries on the same "
                             "data at each size, right after ours (e.g. a `git worktree` of main)")
    args = parser.parse_args(argv)
    if args.remove is not None:
        remove_kept(args.remove)
        return 0
    args.sizes = args.sizes or ("10000" if args.quick else "10000,100000,1000000")
    args.queries = args.queries or (50 if args.quick else 200)
    sizes = sorted(int(s) for s in args.sizes.split(","))
    args.kinds = [k.strip() for k in args.kinds.split(",") if k.strip()] if args.kinds else list(KINDS)
    if set(args.kinds) - set(KINDS):
        parser.error(f"unknown kinds: {', '.join(sorted(set(args.kinds) - set(KINDS)))}")
    keys = [k.strip() for k in args.families.split(",") if k.strip()]
    if set(keys) - set(FAMILIES):
        parser.error(f"unknown families: {', '.join(sorted(set(keys) - set(FAMILIES)))}")

    install_signal_handlers()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="archive-bench-query-"))
    workdir.mkdir(parents=True, exist_ok=True)
    info = machine()
    results: list[dict[str, Any]] = []
    try:
        for key in keys if args.attach is None else [None]:
            result = asyncio.run(bench_family(key, sizes, args, workdir) if key is not None
                                 else bench_attached(args.attach, args))
            baseline_rows = result.pop("baseline_rows")
            results.append(result)
            if baseline_rows:
                results.append({"family": f"{result['family']}@baseline", "label": f"{result['label']} [baseline]",
                                "stages": [], "rows": baseline_rows})
    finally:
        kill_all()
        if args.workdir is None and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    table = markdown(results)
    goals = targets(results)
    print(table + "\n\n" + "\n".join(f"- {g}" for g in goals))
    if args.out:
        report = {"machine": info, "args": {k: str(v) for k, v in vars(args).items()}, "results": results,
                  "targets": goals}
        args.out.write_text(json.dumps(report, indent=2))
    if args.markdown:
        args.markdown.write_text(table + "\n\n" + "\n".join(f"- {g}" for g in goals) + "\n")
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
