"""Forwarding benchmark: does forwarding slow ingest, how fast does it forward, and how long from a
study being stable to its arrival at the peer.

    .venv/bin/python bench/forward.py [--count 400] [--repeat 2] [--assocs 4] [--out results.json]

In one run, on loopback, each scenario on a fresh `dicom-archive serve` (embedded, fsync on):
- ingest: no rules; N 0.5 MB CT slices sent by DCMTK storescu (``--assocs`` processes in parallel).
- ingest + forward: a rule sending every instance to DCMTK storescp (writing files); the same N
  sent; ingest throughput (the senders' wall time), and forwarding: the time until the last
  instance is at the peer, counted from the first C-STORE.
- stable: a ``trigger: stable`` rule (``stable_seconds`` 2, ARCHIVE_STUDY_STABLE_SECONDS 2); studies
  of 50 instances sent one after the other; per study, from the end of its last C-STORE to the
  ``stable`` entry in the change feed and to the last instance at the peer.
CPU seconds of the serve process tree and of storescp are read from /proc.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _receivers import Serve  # noqa: E402
from _util import SliceFactory, TreeSampler, free_port, http_json, install_signal_handlers, kill_all  # noqa: E402
from ingest import storescu  # noqa: E402

STABLE_SECONDS = 2


def log(msg: str) -> None:
    print(f"[forward {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Peer:
    """DCMTK storescp writing what it receives (the forwarding destination)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.proc = subprocess.Popen([shutil.which("storescp") or "storescp", "-aet", "PACS", "-pdu", "131072",
                                      "-od", str(directory), str(self.port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.3)

    def count(self) -> int:
        return sum(1 for _ in self.directory.iterdir())

    def wait(self, want: int, timeout: float = 600.0) -> float:
        deadline = time.monotonic() + timeout
        while self.count() < want:
            if time.monotonic() > deadline:
                raise TimeoutError(f"storescp has {self.count()}/{want}")
            time.sleep(0.02)
        return time.perf_counter()

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


class _Direct:
    """storescu straight to the peer: what the peer takes from one association (its ceiling)."""

    aet = "PACS"
    sender_flags: tuple[str, ...] = ()

    def __init__(self, port: int) -> None:
        self.dicom_port = port


def _serve(workdir: Path, env: dict[str, str]) -> Serve:
    serve = Serve(workdir, extra_env=env)
    serve.start()
    return serve


def ingest(workdir: Path, factory: SliceFactory, count: int, assocs: int, forward: bool) -> dict[str, Any]:
    peer = Peer(workdir / "peer") if forward else None
    env: dict[str, str] = {}
    if peer is not None:
        rules = workdir / "rules.yaml"
        rules.write_text("rules:\n  - name: all\n    destinations: [PACS]\n")
        env = {"ARCHIVE_ROUTING_RULES": str(rules), "ARCHIVE_PEERS": f"PACS@127.0.0.1:{peer.port}"}
    result: dict[str, Any] = {}
    if peer is not None:
        direct = factory.batch(workdir / "direct", count, studies=1)
        result["peer_direct_per_s"] = count / storescu(_Direct(peer.port), direct.files, 1, timeout=600)  # type: ignore[arg-type]
        peer.wait(count)
        direct.remove()
    serve = _serve(workdir / "serve", env)
    try:
        batch = factory.batch(workdir / "batch", count, studies=assocs)
        sampler = TreeSampler({"serve": serve.procs["serve"].pid})
        sampler.start()
        started = time.perf_counter()
        seconds = storescu(serve, batch.files, assocs, timeout=600)
        result["ingest_per_s"] = count / seconds
        if peer is not None:
            done = peer.wait(2 * count)
            result["forward_per_s"] = count / (done - started)
            result["forward_lag_s"] = done - (started + seconds)
        else:
            deadline = time.monotonic() + 600
            while serve.stored(batch) < count and time.monotonic() < deadline:
                time.sleep(0.05)
        usage = sampler.stop()["serve"]
        result["cpu_ms_per_instance"] = usage["cpu_s"] * 1000 / count  # receive, index and forward: one tree
        result["peak_rss_mb"] = usage["peak_rss_mb"]
        batch.remove()
        return result
    finally:
        serve.stop()
        if peer is not None:
            peer.stop()


def stable(workdir: Path, factory: SliceFactory, studies: int, per_study: int) -> list[dict[str, float]]:
    peer = Peer(workdir / "peer")
    rules = workdir / "rules.yaml"
    rules.write_text(f"rules:\n  - name: stable\n    trigger: stable\n    stable_seconds: {STABLE_SECONDS}\n"
                     "    destinations: [PACS]\n")
    serve = _serve(workdir / "serve", {"ARCHIVE_ROUTING_RULES": str(rules), "ARCHIVE_STUDY_STABLE_SECONDS":
                                       str(STABLE_SECONDS), "ARCHIVE_PEERS": f"PACS@127.0.0.1:{peer.port}"})
    http = f"http://127.0.0.1:{serve.http_port}"
    out = []
    try:
        for n in range(studies):
            batch = factory.batch(workdir / f"study{n}", per_study, studies=1)
            storescu(serve, batch.files, 1, timeout=600)
            sent = time.time()
            arrived = peer.wait((n + 1) * per_study) - time.perf_counter() + time.time()  # wall clock
            deadline = time.monotonic() + 60
            marked = None
            while marked is None and time.monotonic() < deadline:
                feed = http_json(f"{http}/api/changes?limit=1000&since=0")[1]["changes"]
                marked = next((c["time"] for c in feed if c["action"] == "stable" and c["study"] == batch.studies[0]),
                              None)
                time.sleep(0.05)
            from datetime import datetime

            stable_at = datetime.fromisoformat(str(marked).replace("Z", "+00:00")).timestamp() if marked else float("nan")
            out.append({"stable_after_s": stable_at - sent, "arrived_after_stable_s": arrived - stable_at,
                        "arrived_after_last_store_s": arrived - sent})
            batch.remove()
    finally:
        serve.stop()
        peer.stop()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=400)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--assocs", type=int, default=4)
    parser.add_argument("--studies", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    install_signal_handlers()
    work = Path(tempfile.mkdtemp(prefix="bench-forward-"))
    results: dict[str, Any] = {"count": args.count, "assocs": args.assocs, "runs": []}
    try:
        factory = SliceFactory(work)
        for r in range(args.repeat):
            for forward in (False, True):
                name = "ingest+forward" if forward else "ingest"
                log(f"run {r + 1}/{args.repeat}: {name}")
                row = ingest(work / f"{name}-{r}", factory, args.count, args.assocs, forward)
                results["runs"].append({"scenario": name, **row})
                log(json.dumps(row))
        log("stable")
        results["stable"] = stable(work / "stable", factory, args.studies, 50)
        log(json.dumps(results["stable"]))
    finally:
        kill_all()
        shutil.rmtree(work, ignore_errors=True)
    summary: dict[str, dict[str, float]] = {}
    for name in ("ingest", "ingest+forward"):
        rows = [x for x in results["runs"] if x["scenario"] == name]
        summary[name] = {k: statistics.median(x[k] for x in rows) for k in rows[0] if k != "scenario"}
    results["summary"] = summary
    print(json.dumps(results, indent=2))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
