"""The indexer alone: its CPU an instance, embedded or distributed, as a backlog or at ingest's pace.

    .venv/bin/python bench/indexer.py [--backend embedded|distributed] [--count 5000] [--repeat 3]
                                      [--mode backlog,trickle] [--rate 250] [--baseline CHECKOUT]
                                      [--variant NAME:ARCHIVE_X=1,ARCHIVE_Y=2 ...]

Each run starts ``dicom-archive indexer`` (``python -m archive.cli indexer``) on fresh backends
(a temporary data directory for the embedded SQLite queue, catalog and FTS5 index; for
``distributed`` a PostgreSQL schema, a RabbitMQ queue and an OpenSearch index of their own on
the services of ``scripts/services.sh``, as the end-to-end tests make them) and publishes index
messages of the query benchmark's synthetic hospital (bench/_querydata.py, the attribute set of
a CT slice's description) through the archive's own queue adapter:

- ``backlog``: all ``--count`` messages are queued before the indexer starts (a restart after an
  outage, a reindex): full batches of ``ARCHIVE_INDEXER_BATCH``.
- ``trickle``: one message a publish at ``--rate`` a second, as the receivers publish while
  instances arrive: the indexer keeps pace, its batches are as small as the pace makes them.

The indexer's CPU (utime+stime of its process, from its readiness until its
``archive_indexed_instances_total`` reaches ``--count``; its /metrics is read every 0.25 s) divided by the
count is the number reported, with the wall time; medians over ``--repeat`` runs. Runs alternate
between builds (this checkout, ``--baseline``) and ``--variant`` settings, so that a before and
after share one machine state. The services' CPU (PostgreSQL, RabbitMQ, OpenSearch) over the run
is reported beside it for ``distributed``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

from _querydata import Hospital  # noqa: E402
from _receivers import service_pids, services_env  # noqa: E402
from _util import THIS_BUILD, Build, Proc, _stat, free_port, install_signal_handlers, scrape, tree  # noqa: E402

from archive import compose  # noqa: E402
from archive.settings import Settings  # noqa: E402

SERVICES = ("pg", "rabbitmq", "opensearch")


def service_cpu() -> float:
    stats = [_stat(p) for pid in service_pids(SERVICES).values() for p in tree(pid)]
    return sum(stat[1] for stat in stats if stat)


class Backends:
    """Fresh backends for one run, and the settings the indexer and the publisher share."""

    def __init__(self, workdir: Path, backend: str) -> None:
        self.workdir = workdir
        self.backend = backend
        self._distributed: Any = None
        workdir.mkdir(parents=True, exist_ok=True)
        if backend == "embedded":
            self.env = {"ARCHIVE_DATA_DIR": str(workdir / "data")}
        else:
            from tests.e2e.distributed import Distributed

            for key, value in services_env().items():  # what tests.e2e.distributed reads
                os.environ.setdefault(key, value)
            self._distributed = Distributed(workdir, "bidx" + uuid.uuid4().hex[:10])
            self._distributed.configure()
            self.env = {k: v for k, v in self._distributed.env.items() if k != "ARCHIVE_INDEXER_BATCH"}

    def settings(self) -> Settings:
        return Settings.from_env({**services_env(), **self.env} if self.backend != "embedded" else self.env)

    def teardown(self) -> None:
        if self._distributed is not None:
            self._distributed.teardown()
        shutil.rmtree(self.workdir, ignore_errors=True)


async def _publish(settings: Settings, bodies: list[bytes], rate: float | None) -> None:
    queue = compose.message_queue(settings)
    await queue.migrate()
    try:
        if rate is None:
            for start in range(0, len(bodies), 500):
                await asyncio.gather(*(queue.publish(b) for b in bodies[start:start + 500]))
            return
        loop = asyncio.get_running_loop()
        began = loop.time()
        for n, body in enumerate(bodies):
            delay = began + n / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            await queue.publish(body)
    finally:
        await queue.close()


def one_run(build: Build, variant: dict[str, str], backend: str, mode: str, count: int, rate: float,
            seed: int) -> dict[str, float]:
    workdir = Path(tempfile.mkdtemp(prefix="bench-indexer-"))
    backends = Backends(workdir, backend)
    try:
        settings = backends.settings()
        hospital = Hospital(seed=seed)
        bodies = [m.to_bytes() for m in hospital.take(count)]
        if mode == "backlog":
            asyncio.run(_publish(settings, bodies, None))
        port = free_port()
        env = {**backends.env, "ARCHIVE_HTTP_PORT": str(port), "ARCHIVE_BIND": "127.0.0.1",
               "ARCHIVE_LOG_LEVEL": "WARNING", **variant}
        proc = Proc("indexer", [build.python, "-m", "archive.cli", "indexer"], workdir / "indexer.log", env,
                    cwd=build.root)
        try:
            proc.wait_http(f"http://127.0.0.1:{port}/readyz", timeout=120)
            stat = _stat(proc.pid)
            assert stat is not None
            cpu0, services0, t0 = stat[1], service_cpu(), time.monotonic()
            if mode == "trickle":
                asyncio.run(_publish(settings, bodies, rate))
            metrics = f"http://127.0.0.1:{port}/metrics"
            deadline = time.monotonic() + 600
            while (seen := scrape(metrics)).get("archive_indexed_instances_total", 0.0) < count:
                if not proc.alive() or time.monotonic() > deadline:
                    raise RuntimeError(f"indexer stopped short of {count}:\n{proc.log_tail()}")
                time.sleep(0.25)
            wall = time.monotonic() - t0
            stat = _stat(proc.pid)
            assert stat is not None
            return {"cpu_ms": (stat[1] - cpu0) * 1000 / count, "wall_s": wall,
                    "services_ms": (service_cpu() - services0) * 1000 / count,
                    "batch": count / max(1.0, seen.get("archive_index_batch_seconds_count", 0.0))}
        finally:
            proc.stop()
    finally:
        backends.teardown()


def parse_variant(text: str) -> tuple[str, dict[str, str]]:
    name, _, assignments = text.partition(":")
    env = dict(item.split("=", 1) for item in assignments.split(",") if item)
    if not name or any(not k.startswith("ARCHIVE_") for k in env):
        raise SystemExit(f"--variant {text!r}: NAME:ARCHIVE_X=value[,ARCHIVE_Y=value]")
    return name, env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=("embedded", "distributed"), default="embedded")
    parser.add_argument("--mode", default="backlog,trickle")
    parser.add_argument("--count", type=int, default=5000)
    parser.add_argument("--rate", type=float, default=250.0, help="trickle: messages a second")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--baseline", type=Path, help="another checkout (with its .venv) to alternate with")
    parser.add_argument("--variant", action="append", default=[], help="NAME:ARCHIVE_X=v[,ARCHIVE_Y=v]")
    parser.add_argument("--json", type=Path, help="write every run's numbers here")
    args = parser.parse_args()
    install_signal_handlers()
    builds = [THIS_BUILD] + ([Build.checkout(args.baseline, "baseline")] if args.baseline else [])
    variants: list[tuple[str, dict[str, str]]] = [("default", {})] + [parse_variant(v) for v in args.variant]
    modes = [m for m in args.mode.split(",") if m]
    runs: dict[tuple[str, str, str], list[dict[str, float]]] = {}
    for repeat in range(args.repeat):
        for mode in modes:
            for build in builds:
                for name, env in variants:
                    key = (mode, build.tag or "this", name)
                    result = one_run(build, env, args.backend, mode, args.count, args.rate, seed=1000 + repeat)
                    runs.setdefault(key, []).append(result)
                    print(f"# {repeat + 1}/{args.repeat} {' '.join(key)}: {result['cpu_ms']:.3f} ms/inst CPU, "
                          f"{result['wall_s']:.1f} s, {result['batch']:.1f} a batch, "
                          f"services {result['services_ms']:.2f} ms/inst", flush=True)
    print(f"\nindexer, {args.backend}, {args.count} messages, medians of {args.repeat} "
          f"(trickle at {args.rate:g}/s)\n")
    services = " | services CPU ms/inst" if args.backend == "distributed" else ""
    print(f"| mode | build | settings | indexer CPU ms/inst | wall s | instances a batch{services} |")
    print("|---|---|---|---:|---:|---:|" + ("---:|" if services else ""))
    for (mode, build_tag, name), results in runs.items():
        cpu = statistics.median(r["cpu_ms"] for r in results)
        wall = statistics.median(r["wall_s"] for r in results)
        batch = statistics.median(r["batch"] for r in results)
        row = f"| {mode} | {build_tag} | {name} | {cpu:.3f} | {wall:.1f} | {batch:.1f} |"
        if services:
            row += f" {statistics.median(r['services_ms'] for r in results):.2f} |"
        print(row)
    if args.json:
        args.json.write_text(json.dumps({" ".join(k): v for k, v in runs.items()}, indent=1))


if __name__ == "__main__":
    main()
