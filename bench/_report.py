"""The report of the ingest benchmark: summary rows, Markdown tables, targets, machine facts."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any


def summarise(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for res in results:
        for assocs in sorted({r["assocs"] for r in res.get("runs", [])}):
            runs = [r for r in res["runs"] if r["assocs"] == assocs]

            def med(key: str) -> float | None:
                values = [r[key] for r in runs if r.get(key) is not None]
                return statistics.median(values) if values else None

            rows.append({
                "key": res["key"], "receiver": res["receiver"], "assocs": assocs, "repeats": len(runs),
                "inst_s": med("inst_s"), "inst_s_min": min(r["inst_s"] for r in runs),
                "inst_s_max": max(r["inst_s"] for r in runs), "mb_s": med("mb_s"),
                "cstore_p50_ms": med("cstore_p50_ms"), "cstore_p99_ms": med("cstore_p99_ms"),
                "searchable_p50_s": med("searchable_p50_s"), "searchable_p99_s": med("searchable_p99_s"),
                "all_searchable_s": med("all_searchable_s"), "end_to_end_inst_s": med("end_to_end_inst_s"),
                "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
                "cpu_ms_per_instance": med("cpu_ms_per_instance"),
                "services_cpu_ms_per_instance": med("services_cpu_ms_per_instance"),
                "cpu_ms_by_process": {name: statistics.median(r["cpu_ms_by_process"].get(name, 0.0) for r in runs)
                                      for name in sorted({n for r in runs for n in r.get("cpu_ms_by_process", {})})},
                "other_busy_cores": med("other_busy_cores"),
                "cstore_coverage": (min(r.get("cstore_observed", 0) / r["count"] for r in runs)
                                    if res["runs"] and "cstore_observed" in runs[0] else None),
                "visible_p50_ms": res.get("probe", {}).get("visible_p50_ms"),
                "visible_p99_ms": res.get("probe", {}).get("visible_p99_ms"),
            })
    orthanc = {r["assocs"]: r["inst_s"] for r in rows if r["key"] == "orthanc"}
    for row in rows:
        base = orthanc.get(row["assocs"])
        row["vs_orthanc"] = row["inst_s"] / base if base else None
    return rows


def _f(value: float | None, fmt: str = "{:.0f}") -> str:
    return "–" if value is None else fmt.format(value)


def _pair(a: float | None, b: float | None, fmt: str = "{:.0f}") -> str:
    return "–" if a is None and b is None else f"{_f(a, fmt)} / {_f(b, fmt)}"


def _services(row: dict[str, Any]) -> str:
    """Per process (when there are several of ours), then the services' CPU."""
    processes = row.get("cpu_ms_by_process") or {}
    split = (" (" + ", ".join(f"{name} {ms:.1f}" for name, ms in processes.items()) + ")"
             if len(processes) > 1 else "")
    value = row.get("services_cpu_ms_per_instance")
    return split + ("" if value is None else f" (+{value:.1f} services)")


def markdown(rows: list[dict[str, Any]], results: list[dict[str, Any]], large: list[dict[str, Any]]) -> str:
    lines = [
        "| receiver | assocs | inst/s (median; min–max) | MB/s | C-STORE p50 / p99 ms (server) "
        "| searchable p50 / p99 s (server, under load) | last searchable − last Success (s) "
        "| QIDO-visible p50 / p99 ms (probe) | peak RSS MB | CPU ms/inst | other load (cores) | × Orthanc |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    partial = False
    for r in rows:
        mark = ""
        if r["cstore_coverage"] is not None and r["cstore_coverage"] < 0.95:
            mark, partial = " ¹", True
        lines.append(
            f"| {r['receiver']} | {r['assocs']} | {_f(r['inst_s'])} ({_f(r['inst_s_min'])}–{_f(r['inst_s_max'])}) "
            f"| {_f(r['mb_s'])} | {_pair(r['cstore_p50_ms'], r['cstore_p99_ms'], '{:.1f}')}{mark} "
            f"| {_pair(r['searchable_p50_s'], r['searchable_p99_s'], '{:.2f}')} "
            f"| {_f(r['all_searchable_s'], '{:.1f}')} "
            f"| {_pair(r['visible_p50_ms'], r['visible_p99_ms'])} | {_f(r['peak_rss_mb'])} "
            f"| {_f(r['cpu_ms_per_instance'], '{:.1f}')}{_services(r)} | {_f(r['other_busy_cores'], '{:.2f}')} "
            f"| {_f(r['vs_orthanc'], '{:.2f}')} |")
    if partial:
        lines.append("\n¹ only the C-STORE requests of the SCP process that serves HTTP are in its /metrics "
                     "(the worker processes have no metrics endpoint)")
    lines += ["", "| receiver | probe instances | pynetdicom round trip p50 / p99 / max ms | QIDO-visible p50 / p99 / max ms | not visible |",
              "|---|---|---|---|---|"]
    for res in results:
        p = res.get("probe")
        if p:
            lines.append(f"| {res['receiver']} | {p['count']} @ {p['rate_per_s']:.0f}/s "
                         f"| {_f(p['rtt_p50_ms'], '{:.1f}')} / {_f(p['rtt_p99_ms'], '{:.1f}')} / {_f(p['rtt_max_ms'], '{:.1f}')} "
                         f"| {_f(p.get('visible_p50_ms'))} / {_f(p.get('visible_p99_ms'))} / {_f(p.get('visible_max_ms'))} "
                         f"| {p.get('not_visible', '–')} |")
    for res in results:
        if res.get("error"):
            lines.append(f"\n**{res['receiver']} failed:** {res['error'][:300]}")
    if large:
        lines += ["", "| large instance → receiver | size | seconds | MB/s | visible after (s) | RSS idle → peak MB |",
                  "|---|---|---|---|---|---|"]
        for g in large:
            if "error" in g:
                lines.append(f"| {g['receiver']} | – | failed: {g['error'][:200]} | | | |")
                continue
            lines.append(f"| {g['receiver']} | {g['bytes'] / 2**30:.2f} GiB | {g['seconds']:.1f} | {g['mb_s']:.0f} "
                         f"| {_f(g['visible_after_s'], '{:.2f}')} | {g['idle_rss_mb']:.0f} → {g['peak_rss_mb']:.0f} |")
    return "\n".join(lines)


def targets(rows: list[dict[str, Any]], large: list[dict[str, Any]], results: list[dict[str, Any]]) -> list[str]:
    out = []

    def ratio(key: str) -> str:
        values = [f"{r['assocs']} assoc: {r['vs_orthanc']:.2f}×" for r in rows
                  if r["key"] == key and r["vs_orthanc"] is not None]
        return ", ".join(values) or "not measured"

    out.append(f"embedded >= 1.5× Orthanc inst/s: {ratio('serve')}")
    out.append(f"distributed >= 1.0× Orthanc inst/s: {ratio('distributed')}")
    for res in results:
        p = res.get("probe") or {}
        if p.get("visible_p99_ms") is not None:
            under = [r["searchable_p99_s"] for r in rows if r["key"] == res["key"] and r["searchable_p99_s"] is not None]
            out.append(f"time-to-searchable p99 < 2 s, {res['receiver']}: probe {p['visible_p99_ms'] / 1000:.2f} s; "
                       f"under load (server) {', '.join(f'{v:.2f} s' for v in under) or '–'}")
    for g in large:
        if "peak_rss_mb" in g:
            out.append(f"RSS < 200 MB with a {g['bytes'] / 2**30:.2f} GiB instance, {g['receiver']}: "
                       f"peak {g['peak_rss_mb']:.0f} MB")
    return out


def machine() -> dict[str, Any]:
    def tool_version(argv: list[str]) -> str:
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout.splitlines()[0]
        except Exception:
            return "?"

    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"), "cpus": os.cpu_count(), "cpu_model": model,
        "mem_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "kernel": platform.release(), "python": platform.python_version(),
        "storescu": tool_version(["storescu", "--version"]), "orthanc": tool_version(["Orthanc", "--version"]),
        "loadavg_at_start": os.getloadavg(),
    }
