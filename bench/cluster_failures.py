"""Rolling restarts and failures on the test cluster, measured (issue 11; docs/benchmarks.md).

Runs against the cluster ``make cluster`` brought up (``.cluster/env``, ``.cluster/bin``):

1. throughput: the scp Deployment at 1, 2 and 3 replicas, ``--senders`` DCMTK ``storescu``
   processes in parallel, each association ``--batch`` instances, through the scp NodePort;
2. failures: scp 3, indexer 2, query 1 replicas; the senders stream while
   (a) the scp Deployment is restarted (``kubectl rollout restart``),
   (b) an indexer pod is deleted with grace period 0,
   (c) the RabbitMQ broker (outside the cluster, as a managed service) is restarted;
   then, once the indexers have caught up, every acknowledged instance must be found exactly
   once over QIDO-RS and ``dicom-archive verify`` (run in a query pod) must report the object
   store, catalog and search index consistent.

Every C-STORE is accounted for by parsing ``storescu -v``: an instance counts as acknowledged
when its Store Response was Success (0x0000). Failures in (a) must be zero; in (b) and (c) they
are reported (a sender whose association the broker's absence refuses retries the same file, as
a modality would). ``python bench/cluster_failures.py --help``.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.e2e.harness import http_json  # noqa: E402
from tests.factories import make_ct, new_uid, write_part10  # noqa: E402

SENDING = re.compile(r"Sending file: (\S+)")
RESPONSE = re.compile(r"Received Store Response \(([^)]*)\)")


def load_env(path: Path) -> dict[str, str]:
    env: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            env[key.removeprefix("export ").strip()] = value.strip().strip("'\"")
    return env


@dataclass
class Cluster:
    root: Path
    env: dict[str, str]

    @classmethod
    def load(cls, root: Path) -> "Cluster":
        env_file = root / ".cluster" / "env"
        if not env_file.exists():
            sys.exit(f"{env_file} is missing: run `make cluster` first")
        return cls(root, load_env(env_file))

    def tool(self, name: str) -> str:
        local = self.root / ".cluster" / "bin" / name
        return str(local) if local.exists() else name

    def kubectl(self, *args: str, check: bool = True, timeout: float = 300) -> str:
        cmd = [self.tool("kubectl"), "--kubeconfig", self.env["KUBECONFIG"], "-n", self.env["NAMESPACE"], *args]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if check and done.returncode:
            raise RuntimeError(f"{shlex.join(cmd)}: {done.stderr.strip()}")
        return done.stdout

    def deployment(self, component: str) -> str:
        names = self.kubectl("get", "deployment", "-l", f"app.kubernetes.io/component={component},"
                             f"app.kubernetes.io/instance={self.env['RELEASE']}", "-o", "name").split()
        if len(names) != 1:
            raise RuntimeError(f"expected one {component} Deployment, found {names}")
        return names[0]

    def scale(self, component: str, replicas: int) -> None:
        hpas = self.kubectl("get", "hpa,scaledobject", "-o", "name", check=False)
        if component in hpas:
            raise RuntimeError(f"an autoscaler manages {component}; install the chart with autoscaling off")
        name = self.deployment(component)
        self.kubectl("scale", name, f"--replicas={replicas}")
        self.kubectl("rollout", "status", name, "--timeout=300s")
        self.wait_endpoints(component, replicas)

    def wait_endpoints(self, component: str, count: int, timeout: float = 120) -> None:
        """Wait until the Service of `component` routes to `count` ready pods."""
        deadline = time.monotonic() + timeout
        selector = f"app.kubernetes.io/component={component},app.kubernetes.io/instance={self.env['RELEASE']}"
        while True:
            pods = json.loads(self.kubectl("get", "pods", "-l", selector, "-o", "json"))["items"]
            ready = [p for p in pods if p["metadata"].get("deletionTimestamp") is None and any(
                c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions", []))]
            if len(ready) == count and len(pods) == count:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{component}: {len(ready)} ready of {len(pods)} pods, want {count}")
            time.sleep(1)

    def pods(self, component: str) -> list[str]:
        selector = f"app.kubernetes.io/component={component},app.kubernetes.io/instance={self.env['RELEASE']}"
        return self.kubectl("get", "pods", "-l", selector, "-o", "name",
                            "--field-selector=status.phase=Running").split()


@dataclass
class Tally:
    acked: dict[str, float] = field(default_factory=dict)  # SOP Instance UID -> time acknowledged
    failed: list[tuple[str, float, str]] = field(default_factory=list)  # (uid, time, why)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def between(self, start: float, end: float) -> tuple[int, int]:
        with self.lock:
            ok = sum(1 for t in self.acked.values() if start <= t < end)
            bad = sum(1 for _, t, _ in self.failed if start <= t < end)
        return ok, bad


def storescu(endpoint: str, aet: str, files: list[Path], tally: Tally) -> list[Path]:
    """One association sending `files`; returns the files that were not acknowledged."""
    host, port = endpoint.rsplit(":", 1)
    cmd = ["storescu", "-v", "-aet", "CHAOSSCU", "-aec", aet, "-to", "10", "-ta", "10", "-td", "30",
           host, port, *map(str, files)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    now = time.monotonic()
    current: str | None = None
    acknowledged: set[str] = set()
    answers: dict[str, str] = {}
    for line in (done.stdout + done.stderr).splitlines():
        if (m := SENDING.search(line)):
            current = m.group(1)
        elif (m := RESPONSE.search(line)) and current is not None:
            if m.group(1).startswith("Success"):
                acknowledged.add(current)
            else:
                answers[current] = m.group(1)
            current = None
    missed = [f for f in files if str(f) not in acknowledged]
    with tally.lock:
        for f in files:
            if str(f) in acknowledged:
                tally.acked[f.stem] = now
        errors = [line for line in (done.stdout + done.stderr).splitlines() if line.startswith(("E:", "F:"))]
        default = errors[0][:200] if errors else "no response"
        tally.failed.extend((f.stem, now, answers.get(str(f), default)) for f in missed)
    return missed


class Sender(threading.Thread):
    """Streams new instances until stopped; a file that was not acknowledged is sent again."""

    def __init__(self, index: int, endpoint: str, aet: str, workdir: Path, study: str, batch: int,
                 tally: Tally, limit: int | None = None) -> None:
        super().__init__(daemon=True)
        self.endpoint, self.aet, self.batch, self.tally, self.limit = endpoint, aet, batch, tally, limit
        self.dir = workdir / f"sender{index}"
        self.dir.mkdir(parents=True)
        self.study, self.series = study, new_uid()
        self.stop = threading.Event()
        self.sent = 0
        self.number = 0

    def make(self, count: int) -> list[Path]:
        files = []
        for _ in range(count):
            self.number += 1
            uid = new_uid()
            ds = make_ct(study_uid=self.study, series_uid=self.series, sop_uid=uid, instance_number=self.number,
                         patient_id="CHAOS-1", patient_name="Chaos^Test", size=64, seed=self.number)
            files.append(write_part10(ds, self.dir / f"{uid}.dcm"))
        return files

    def run(self) -> None:
        pending: list[Path] = []
        while not self.stop.is_set():
            if self.limit is not None and self.sent >= self.limit and not pending:
                return
            fresh = self.batch - len(pending)
            if self.limit is not None:
                fresh = min(fresh, self.limit - self.sent)
            files = pending + self.make(max(fresh, 0))
            self.sent += max(fresh, 0)
            pending = storescu(self.endpoint, self.aet, files, self.tally)
            for f in files:
                if f not in pending:
                    f.unlink(missing_ok=True)
            if pending:
                time.sleep(0.5)  # a modality's retry interval, not a wait for a condition


def http_get(env: dict[str, str], path: str) -> tuple[int, Any]:
    headers = {"Accept": "application/dicom+json"}
    if env.get("HTTP_AUTHORIZATION"):
        headers["Authorization"] = env["HTTP_AUTHORIZATION"]
    status, body = http_json(env["HTTP_ENDPOINT"].rstrip("/") + path, 30, headers=headers)
    return status, [] if body is None else body


def study_instances(env: dict[str, str], study: str) -> dict[str, int]:
    """SOP Instance UID -> how many times QIDO-RS lists it, over every page."""
    seen: dict[str, int] = {}
    offset, page = 0, 500
    while True:
        status, body = http_get(env, f"/dicom-web/studies/{study}/instances?limit={page}&offset={offset}")
        if status == 204 or (status == 200 and not body):
            return seen
        if status != 200:
            raise RuntimeError(f"QIDO-RS answered {status}: {body}")
        for item in body:
            uid = item["00080018"]["Value"][0]
            seen[uid] = seen.get(uid, 0) + 1
        if len(body) < page:
            return seen
        offset += page


def wait_indexed(env: dict[str, str], study: str, expected: set[str], timeout: float) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    while True:
        seen = study_instances(env, study)
        if expected <= set(seen) or time.monotonic() > deadline:
            return seen
        time.sleep(2)


def throughput(cluster: Cluster, args: argparse.Namespace, workdir: Path) -> list[dict[str, Any]]:
    rows = []
    for replicas in (1, 2, 3):
        cluster.scale("scp", replicas)
        tally = Tally()
        study = new_uid()
        senders = [Sender(i, cluster.env["DICOM_ENDPOINT"], cluster.env["AET"], workdir / f"tp{replicas}", study,
                          args.batch, tally, limit=args.instances // args.senders) for i in range(args.senders)]
        started = time.monotonic()
        for s in senders:
            s.start()
        for s in senders:
            s.join()
        seconds = time.monotonic() - started
        rows.append({"scp_replicas": replicas, "instances": len(tally.acked), "failed": len(tally.failed),
                     "seconds": round(seconds, 1), "per_second": round(len(tally.acked) / seconds, 1)})
        print(f"scp x{replicas}: {rows[-1]}", flush=True)
    return rows


def restart_broker(cluster: Cluster) -> None:
    subprocess.run(["bash", str(cluster.root / "scripts" / "cluster.sh"), "restart-broker"], check=True, timeout=300)


def failures(cluster: Cluster, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    cluster.scale("scp", 3)
    cluster.scale("indexer", 2)
    cluster.scale("query", 1)
    before = verify(cluster)
    tally = Tally()
    study = new_uid()
    senders = [Sender(i, cluster.env["DICOM_ENDPOINT"], cluster.env["AET"], workdir / "chaos", study, args.batch, tally)
               for i in range(args.senders)]
    marks: dict[str, tuple[float, float]] = {}

    def phase(name: str, action: Any) -> None:
        start = time.monotonic()
        action()
        # keep streaming for a while after the event, so that its after-effects are inside the phase
        end_at = time.monotonic() + args.settle
        while time.monotonic() < end_at:
            time.sleep(0.5)
        marks[name] = (start, time.monotonic())
        ok, bad = tally.between(*marks[name])
        print(f"{name}: {ok} acknowledged, {bad} failed", flush=True)

    for s in senders:
        s.start()
    warm_until = time.monotonic() + args.settle
    while time.monotonic() < warm_until:
        time.sleep(0.5)
    scp = cluster.deployment("scp")

    def rolling() -> None:
        cluster.kubectl("rollout", "restart", scp)
        cluster.kubectl("rollout", "status", scp, "--timeout=600s")

    def kill_indexer() -> None:
        pod = cluster.pods("indexer")[0]
        cluster.kubectl("delete", pod, "--grace-period=0", "--force", "--wait=false")
        cluster.wait_endpoints("indexer", 2, timeout=300)

    phase("a_rolling_restart_scp", rolling)
    phase("b_indexer_pod_killed", kill_indexer)
    phase("c_broker_restarted", lambda: restart_broker(cluster))
    for s in senders:
        s.stop.set()
    for s in senders:
        s.join(timeout=300)
    acked = set(tally.acked)
    seen = wait_indexed(cluster.env, study, acked, timeout=args.index_timeout)
    after = verify(cluster)
    result = {
        "phases": {name: dict(zip(("acknowledged", "failed"), tally.between(*span)))
                   for name, span in marks.items()},
        "acknowledged": len(acked),
        "failed_attempts": len(tally.failed),
        "failure_reasons": sorted({why for _, _, why in tally.failed})[:10],
        "found_once": sum(1 for uid in acked if seen.get(uid) == 1),
        "missing": sorted(acked - set(seen))[:20],
        "duplicates": sorted(uid for uid, n in seen.items() if n > 1)[:20],
        "stored_not_acknowledged": len(set(seen) - acked),
        "verify_before": before,
        "verify_after": after,
    }
    print(json.dumps(result, indent=2), flush=True)
    return result


def verify(cluster: Cluster) -> dict[str, Any]:
    pod = cluster.pods("query")[0]
    out = cluster.kubectl("exec", pod, "--", "dicom-archive", "verify", "--json", timeout=900)
    report = json.loads(out)
    return {k: report[k] for k in ("objects", "catalog_instances", "search_documents", "counts", "consistent")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=ROOT, help="checkout whose .cluster/ to use")
    parser.add_argument("--senders", type=int, default=4)
    parser.add_argument("--batch", type=int, default=10, help="instances per association")
    parser.add_argument("--instances", type=int, default=400, help="instances per throughput run")
    parser.add_argument("--settle", type=float, default=20, help="seconds of streaming after each event")
    parser.add_argument("--index-timeout", type=float, default=300)
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    cluster = Cluster.load(args.root)
    results: dict[str, Any] = {"senders": args.senders, "batch": args.batch}
    with tempfile.TemporaryDirectory(prefix="cluster-failures-") as tmp:
        if not args.skip_throughput:
            results["throughput"] = throughput(cluster, args, Path(tmp))
        results["failures"] = failures(cluster, args, Path(tmp))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    bad = results["failures"]
    ok = (bad["phases"]["a_rolling_restart_scp"]["failed"] == 0 and bad["found_once"] == bad["acknowledged"]
          and bad["verify_after"]["consistent"])
    print("PASS" if ok else "FAIL")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
