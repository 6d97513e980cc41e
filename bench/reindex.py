"""Reindex rate: `dicom-archive reindex` over N stored objects, on the embedded backends
(filesystem, SQLite, FTS5) and on the distributed ones (S3, PostgreSQL, OpenSearch).

    .venv/bin/python bench/reindex.py [--count 100000] [--size 32] [--backends embedded,distributed]

The objects are written straight into the object store (CT slices of ``--size`` x ``--size``
pixels, 100 instances a series, 10 series a study; the same bytes the receiver would store), with
empty catalog and search index; then `dicom-archive reindex --json` is timed (instances per
second over the whole run, listing included) and `dicom-archive verify` must agree afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _util import ROOT, SliceFactory, _PH, install_signal_handlers  # noqa: E402

from archive.compose import object_store  # noqa: E402
from archive.core.models import Payload  # noqa: E402
from archive.core.uids import object_key  # noqa: E402
from archive.settings import Settings  # noqa: E402


def log(msg: str) -> None:
    print(f"[reindex {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


async def populate(env: dict[str, str], factory: SliceFactory, count: int, work: Path) -> None:
    """Write ``count`` objects into the store ``env`` names, 32 at a time."""
    store = object_store(Settings.from_env(env))
    await store.migrate()
    tpl = factory.template
    gate = asyncio.Semaphore(32)

    async def one(n: int) -> None:
        study, series, sop = factory._uid(1, n // 1000), factory._uid(2, n // 100), factory._uid(3, n)
        data = (tpl.replace(_PH[1].encode(), study.encode()).replace(_PH[2].encode(), series.encode())
                .replace(_PH[3].encode(), sop.encode()))
        async with gate:
            await store.put(object_key(sop), Payload((data,), len(data), hashlib.sha256(data).hexdigest()))

    started = time.monotonic()
    for start in range(0, count, 2000):
        await asyncio.gather(*(one(n) for n in range(start, min(count, start + 2000))))
        log(f"written {min(count, start + 2000)}/{count} objects ({time.monotonic() - started:.0f} s)")
    await store.close()


def run(env: dict[str, str], *args: str) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "archive.cli", *args], env={**os.environ, **env}, cwd=ROOT,
                          capture_output=True, text=True, timeout=7200)
    if done.returncode not in (0, 1):
        raise RuntimeError(f"{args}: exit {done.returncode}: {done.stderr[-2000:]}")
    return time.perf_counter() - started, done.stdout


def bench(name: str, env: dict[str, str], factory: SliceFactory, count: int, work: Path) -> dict[str, Any]:
    log(f"{name}: writing {count} objects")
    asyncio.run(populate(env, factory, count, work))
    log(f"{name}: reindex")
    seconds, out = run(env, "reindex", "--json", "--batch", "200")
    report = json.loads(out)
    log(f"{name}: {report}")
    verify_s, verify_out = run(env, "verify", "--json")
    verified = json.loads(verify_out)
    return {"backends": name, "objects": count, "reindex_s": round(seconds, 1),
            "per_s": round(report["indexed"] / seconds, 1), "indexed": report["indexed"],
            "verify_consistent": verified["consistent"], "verify_s": round(verify_s, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--backends", default="embedded,distributed")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    install_signal_handlers()
    work = Path(tempfile.mkdtemp(prefix="bench-reindex-"))
    rows = []
    try:
        factory = SliceFactory(work, size=args.size)
        for name in args.backends.split(","):
            if name == "embedded":
                env = {"ARCHIVE_DATA_DIR": str(work / "embedded"), "ARCHIVE_FSYNC": "false"}
                rows.append(bench(name, env, factory, args.count, work))
            else:
                from tests.e2e.distributed import Distributed

                dist = Distributed(work / "distributed", "benchreindex" + str(os.getpid()))
                dist.configure()
                try:
                    rows.append(bench(name, dict(dist.env), factory, args.count, work))
                finally:
                    dist.teardown()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(rows, indent=2))
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
