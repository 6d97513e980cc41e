"""STOW-RS benchmark: instances/s over HTTP next to C-STORE (DCMTK storescu), in the same run.

    .venv/bin/python bench/stow.py [--count 500] [--repeat 1] [--batches 10,50] [--clients 1,4]
                                   [--no-fsync] [--out results.json]

One ``dicom-archive serve`` (embedded backends) receives, in turn and interleaved over the
repeats, fresh 0.5 MB CT slices (bench/_util.py ``SliceFactory``) by DCMTK storescu with 1 and
4 associations and by STOW-RS with N instances per request and 1 or 4 concurrent clients.
Each STOW-RS client is a thread streaming its requests from the files (http.client, one
keep-alive connection per client, bodies never built in memory). A scenario ends at the last
response; every scenario then waits until the whole batch is searchable (QIDO-RS), so the
indexer's backlog never overlaps the next one. Ratios are within one run on one machine.
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydicom import dcmread

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _receivers import Serve  # noqa: E402
from _report import machine  # noqa: E402
from _util import (Batch, SliceFactory, TreeSampler, install_signal_handlers, kill_all,  # noqa: E402
                   write_large_instance)
from ingest import DRAIN_TIMEOUT, log, storescu, wait_quiet, wait_stored  # noqa: E402

from tests.stow_client import CONTENT_TYPE  # noqa: E402


def _framing(boundary: str) -> tuple[bytes, bytes, bytes]:
    head = f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
    return head, b"\r\n", f"--{boundary}--\r\n".encode()


def _body(files: list[Path], boundary: str) -> Iterator[bytes]:
    head, tail, end = _framing(boundary)
    for path in files:
        yield head
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 20):
                yield chunk
        yield tail
    yield end


def stow_request(conn: http.client.HTTPConnection, files: list[Path]) -> dict[str, Any]:
    """One STOW-RS request of ``files``, streamed; the decoded response (raises unless 200)."""
    boundary = uuid.uuid4().hex
    head, tail, end = _framing(boundary)
    length = sum(len(head) + p.stat().st_size + len(tail) for p in files) + len(end)
    conn.request("POST", "/dicom-web/studies", body=_body(files, boundary),
                 headers={"Content-Type": CONTENT_TYPE.format(boundary=boundary), "Content-Length": str(length)})
    response = conn.getresponse()
    raw = response.read()
    if response.status != 200:
        raise RuntimeError(f"STOW-RS answered {response.status}: {raw[:500]!r}")
    answer: dict[str, Any] = json.loads(raw)
    return answer


def stow_send(port: int, files: list[Path], per_request: int, clients: int) -> float:
    """Send ``files`` in requests of ``per_request`` from ``clients`` threads; wall seconds."""
    requests = [files[i:i + per_request] for i in range(0, len(files), per_request)]
    lock = threading.Lock()
    errors: list[str] = []

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        try:
            while True:
                with lock:
                    if not requests or errors:
                        return
                    chunk = requests.pop(0)
                answer = stow_request(conn, chunk)
                if len(answer.get("00081199", {}).get("Value", [])) != len(chunk):
                    raise RuntimeError(f"not every instance referenced: {str(answer)[:300]}")
        except Exception as exc:  # reported by the main thread
            with lock:
                errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            conn.close()

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    if errors:
        raise RuntimeError("; ".join(errors[:3]))
    return elapsed


def run(serve: Serve, batch: Batch, kind: str, per_request: int, clients: int) -> dict[str, Any]:
    sampler = TreeSampler(serve.roots())
    sampler.start()
    started = time.perf_counter()
    try:
        if kind == "storescu":
            elapsed = storescu(serve, batch.files, clients, timeout=max(120.0, len(batch.files) * 0.5))
        else:
            elapsed = stow_send(serve.http_port, batch.files, per_request, clients)
        cpu = sampler.cpu_so_far()
        t_all = wait_stored(serve, batch, DRAIN_TIMEOUT)
    finally:
        usage = sampler.stop()
    count = len(batch.files)
    return {"kind": kind, "per_request": per_request, "clients": clients, "count": count, "bytes": batch.bytes,
            "seconds": elapsed, "inst_s": count / elapsed, "mb_s": batch.bytes / 2**20 / elapsed,
            "receiver_cpu_ms_per_instance": 1000 * cpu / count,
            "peak_rss_mb": usage["serve"]["peak_rss_mb"], "end_to_end_inst_s": count / (t_all - started)}


def large_run(serve: Serve, workdir: Path, size_mb: int) -> dict[str, Any]:
    """One instance of ``size_mb`` MB by STOW-RS: throughput and the receiver's peak RSS."""
    path = workdir / "large.dcm"
    sop = write_large_instance(path, size_mb << 20)
    batch = Batch(workdir, files=[path], sop_uids=[sop],
                  studies=[str(dcmread(path, stop_before_pixels=True).StudyInstanceUID)])
    try:
        result = run(serve, batch, "stow", 1, 1)
    finally:
        path.unlink()
    return {**result, "kind": "stow-large"}


def scenarios(batches: list[int], clients: list[int]) -> list[tuple[str, int, int]]:
    out = [("storescu", 1, c) for c in clients]
    out += [("stow", b, c) for b in batches for c in clients]
    return out


def label(kind: str, per_request: int, clients: int) -> str:
    if kind == "stow-large":
        return "STOW-RS, one large instance"
    if kind == "storescu":
        return f"C-STORE, storescu, {clients} association{'s' if clients > 1 else ''}"
    return f"STOW-RS, {per_request}/request, {clients} client{'s' if clients > 1 else ''}"


def report(results: list[dict[str, Any]], info: dict[str, Any]) -> str:
    """Markdown: median inst/s and MB/s per scenario and the ratio to storescu with as many senders."""
    by: dict[tuple[str, int, int], list[dict[str, Any]]] = {}
    for r in sorted(results, key=lambda r: r["kind"] == "stow-large"):
        by.setdefault((r["kind"], r["per_request"], r["clients"]), []).append(r)

    def median(rows: list[dict[str, Any]], key: str) -> float:
        return statistics.median(r[key] for r in rows)

    lines = [f"{info['date']}, {info['cpus']} CPUs ({info['cpu_model']}), load average at start "
             f"{info['loadavg_at_start'][0]:.1f}; {results[0]['count']} instances of "
             f"{results[0]['bytes'] / results[0]['count'] / 2**20:.2f} MB per scenario, "
             f"{len(by[next(iter(by))])} repeat(s), medians.", "",
             "| sender | inst/s | MB/s | vs storescu, same senders | receiver CPU ms/inst | peak RSS MB |",
             "|---|---|---|---|---|---|"]
    for (kind, per_request, clients), rows in by.items():
        base = by.get(("storescu", 1, clients))
        ratio = median(rows, "inst_s") / median(base, "inst_s") if base and kind != "stow-large" else None
        lines.append(f"| {label(kind, per_request, clients)} | {median(rows, 'inst_s'):.{0 if kind != 'stow-large' else 2}f} | "
                     f"{median(rows, 'mb_s'):.0f} | {'' if ratio is None else f'{ratio:.2f}x'} | "
                     f"{median(rows, 'receiver_cpu_ms_per_instance'):.1f} | {median(rows, 'peak_rss_mb'):.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=500, help="instances per scenario")
    parser.add_argument("--repeat", type=int, default=1, help="rounds over every scenario (interleaved)")
    parser.add_argument("--batches", default="10,50", help="instances per STOW-RS request")
    parser.add_argument("--clients", default="1,4", help="concurrent STOW-RS clients / storescu associations")
    parser.add_argument("--no-fsync", action="store_true", help="ARCHIVE_FSYNC=false (default: true, the product default)")
    parser.add_argument("--large-mb", type=int, default=0, help="also STOW one instance of this many MB")
    parser.add_argument("--out", type=Path, help="write the raw results as JSON")
    args = parser.parse_args(argv)
    install_signal_handlers()
    plan = scenarios([int(b) for b in args.batches.split(",")], [int(c) for c in args.clients.split(",")])
    info = machine()
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-stow-") as tmp:
        workdir = Path(tmp)
        factory = SliceFactory(workdir)
        serve = Serve(workdir / "serve", fsync=not args.no_fsync)
        try:
            serve.start()
            for round_ in range(args.repeat):
                for kind, per_request, clients in plan:
                    batch = factory.batch(workdir / "batch", args.count, studies=4)
                    wait_quiet(0.6, 5.0)  # the machine is shared: settle briefly, never wait long
                    log(f"round {round_ + 1}: {label(kind, per_request, clients)}")
                    result = run(serve, batch, kind, per_request, clients)
                    log(f"  {result['inst_s']:.0f} inst/s, {result['mb_s']:.0f} MB/s")
                    results.append(result)
                    batch.remove()
            if args.large_mb:
                log(f"STOW-RS of one {args.large_mb} MB instance")
                results.append(large_run(serve, workdir, args.large_mb))
        finally:
            serve.stop()
            kill_all()
    text = report(results, info)
    print(text)
    if args.out:
        args.out.write_text(json.dumps({"machine": info, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
