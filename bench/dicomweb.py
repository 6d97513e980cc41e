"""DICOMweb benchmark: frames and rendered images per second, and study metadata latency.

    .venv/bin/python bench/dicomweb.py [--slices 500] [--metadata-instances 2000] [--clients 1,8]
                                       [--requests 1000] [--metadata-requests 40] [--no-fsync]
                                       [--out results.json]

One ``dicom-archive serve`` (embedded backends) receives, by DCMTK storescu, a CT series of
``--slices`` 512x512 16-bit slices (bench/_util.py ``SliceFactory``) and a study of
``--metadata-instances`` small (16x16) instances. Once both are searchable, aiohttp clients
(1 and 8 concurrent, one keep-alive connection each) request, round robin over the series:
WADO-RS frames (``frames/1`` as OHIF asks for them: ``transfer-syntax=*``) and rendered
instances (JPEG, default quality and window); then study metadata of the large study is
requested one request at a time (``/studies/{study}/metadata``, no ETag) for p50/p95.
Every answer is read whole and its status checked. See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _receivers import Serve  # noqa: E402
from _report import machine  # noqa: E402
from _util import SliceFactory, http_json, install_signal_handlers, kill_all, percentile  # noqa: E402
from ingest import storescu, wait_quiet, wait_stored  # noqa: E402

FRAMES_ACCEPT = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
METADATA_TARGET_P95_MS = 200.0


def log(msg: str) -> None:
    print(f"[bench-dicomweb {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def instance_urls(base: str, study: str) -> list[str]:
    """WADO-RS URLs of every instance of ``study``, in instance number order (from QIDO-RS)."""
    status, rows = http_json(f"{base}/studies/{study}/instances?includefield=InstanceNumber", timeout=60)
    assert status == 200, rows
    rows.sort(key=lambda r: int(r.get("00200013", {}).get("Value", [0])[0]))
    return [f"{base}/studies/{study}/series/{r['0020000E']['Value'][0]}/instances/{r['00080018']['Value'][0]}"
            for r in rows]


async def load(urls: list[str], clients: int, total: int, accept: str) -> dict[str, Any]:
    """``total`` GETs over ``urls`` (round robin) by ``clients`` concurrent clients."""
    next_index = 0
    latencies: list[float] = []
    received = 0

    async def client() -> None:
        nonlocal next_index, received
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as session:
            while next_index < total:
                url = urls[next_index % len(urls)]
                next_index += 1
                started = time.perf_counter()
                async with session.get(url, headers={"Accept": accept}) as response:
                    body = await response.read()
                    if response.status != 200:
                        raise RuntimeError(f"{url}: {response.status} {body[:200]!r}")
                latencies.append((time.perf_counter() - started) * 1000)
                received += len(body)

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    seconds = time.perf_counter() - started
    return {"clients": clients, "requests": total, "seconds": round(seconds, 2),
            "per_s": round(total / seconds, 1), "mb_s": round(received / seconds / 1e6, 1),
            "p50_ms": percentile(latencies, 0.5), "p95_ms": percentile(latencies, 0.95)}


async def metadata_latency(url: str, count: int) -> dict[str, Any]:
    """Study metadata, one request at a time, after 3 untimed ones."""
    latencies, size, instances = [], 0, 0
    async with aiohttp.ClientSession() as session:
        for i in range(count + 3):
            started = time.perf_counter()
            async with session.get(url, headers={"Accept": "application/dicom+json"}) as response:
                body = await response.read()
                if response.status != 200:
                    raise RuntimeError(f"{url}: {response.status} {body[:200]!r}")
            if i >= 3:
                latencies.append((time.perf_counter() - started) * 1000)
            size = len(body)
    instances = len(json.loads(body))
    return {"instances": instances, "bytes": size, "requests": count,
            "p50_ms": percentile(latencies, 0.5), "p95_ms": percentile(latencies, 0.95), "max_ms": max(latencies)}


def markdown(result: dict[str, Any]) -> str:
    lines = ["| service | clients | requests/s | MB/s | p50 ms | p95 ms |", "|---|---|---|---|---|---|"]
    for name, runs in (("frames (`frames/1`, as stored)", result["frames"]),
                       ("rendered (JPEG 512x512)", result["rendered"])):
        for r in runs:
            lines.append(f"| {name} | {r['clients']} | {r['per_s']:.0f} | {r['mb_s']:.1f} | {r['p50_ms']:.1f} | "
                         f"{r['p95_ms']:.1f} |")
    m = result["metadata"]
    lines += ["", f"Study metadata, {m['instances']} instances ({m['bytes'] / 1e6:.1f} MB of DICOM JSON), "
                  f"{m['requests']} sequential requests: p50 {m['p50_ms']:.0f} ms, p95 {m['p95_ms']:.0f} ms, "
                  f"max {m['max_ms']:.0f} ms (target p95 < {METADATA_TARGET_P95_MS:.0f} ms: "
                  f"{'met' if m['p95_ms'] < METADATA_TARGET_P95_MS else 'NOT met'})."]
    return "\n".join(lines)


async def measure(serve: Serve, ct: str, big: str, args: argparse.Namespace) -> dict[str, Any]:
    assert serve.qido is not None
    urls = instance_urls(serve.qido, ct)
    result: dict[str, Any] = {"slices": len(urls), "frames": [], "rendered": []}
    for clients in args.clients:
        wait_quiet(0.5, 10)
        log(f"frames, {clients} client(s)")
        result["frames"].append(await load([u + "/frames/1" for u in urls], clients, args.requests, FRAMES_ACCEPT))
        log(f"  {result['frames'][-1]}")
        wait_quiet(0.5, 10)
        log(f"rendered, {clients} client(s)")
        result["rendered"].append(await load([u + "/rendered" for u in urls], clients, args.requests, "image/jpeg"))
        log(f"  {result['rendered'][-1]}")
    wait_quiet(0.5, 10)
    log("study metadata")
    result["metadata"] = await metadata_latency(f"{serve.qido}/studies/{big}/metadata", args.metadata_requests)
    log(f"  {result['metadata']}")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slices", type=int, default=500)
    parser.add_argument("--metadata-instances", type=int, default=2000)
    parser.add_argument("--clients", type=lambda s: [int(x) for x in s.split(",")], default=[1, 8])
    parser.add_argument("--requests", type=int, default=1000, help="requests per frames/rendered run")
    parser.add_argument("--metadata-requests", type=int, default=40)
    parser.add_argument("--no-fsync", action="store_true")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    install_signal_handlers()
    info = machine()
    with tempfile.TemporaryDirectory(prefix="bench-dicomweb-") as tmp:
        workdir = Path(tmp)
        serve = Serve(workdir / "serve", fsync=not args.no_fsync)
        try:
            serve.start()
            log(f"generating {args.slices} CT slices and a {args.metadata_instances}-instance study")
            ct = SliceFactory(workdir).batch(workdir / "ct", args.slices, studies=1)
            small = SliceFactory(workdir, size=16).batch(workdir / "small", args.metadata_instances, studies=1)
            for batch in (ct, small):
                storescu(serve, batch.files, 4, timeout=1800)
                wait_stored(serve, batch, timeout=1800)
                batch.remove()
            log("stored and searchable")
            result = asyncio.run(measure(serve, ct.studies[0], small.studies[0], args))
        finally:
            serve.stop()
            kill_all()
    result["machine"] = info
    print(markdown(result))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))
    return 0 if result["metadata"]["p95_ms"] < METADATA_TARGET_P95_MS else 1


if __name__ == "__main__":
    sys.exit(main())
