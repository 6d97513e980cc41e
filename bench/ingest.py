"""Ingest benchmark: C-STORE throughput, latency, time-to-searchable and memory.

    .venv/bin/python bench/ingest.py [--count 1000] [--repeat 3] [--quick] [--out results.json]
                                     [--scenarios serve,serve-stdloop,serve-w2,serve-nofsync,serve-pynetdicom,serve-pynetdicom-w2,serve-tls,serve-tls-w2,
                                                 distributed,distributed-stdloop,orthanc,storescp,pynetdicom,large]

Receivers (each fresh, on loopback, in a temp dir): ``dicom-archive serve`` (embedded,
fsync on), the same with 2 SCP workers, with ARCHIVE_FSYNC=false, and on the DICOM TLS port
(mutual TLS, storescu +tls; serve-tls, serve-tls-w2), the distributed
roles on the services of ``scripts/services.sh``, Orthanc (SQLite), DCMTK storescp
(files only), pynetdicom's storescp app (files only). The sender is
DCMTK storescu with 1 association, or 4 storescu processes in parallel. See
docs/benchmarks.md for what each number means and how it is measured.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Any
from urllib.parse import quote

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _receivers import (DCMTK_ENV, THIS_BUILD, Build, Distributed, Orthanc, PynetdicomSCP, Receiver, Serve,  # noqa: E402
                        StoreSCP, distributed_missing)
from _report import machine, markdown, summarise, targets  # noqa: E402
from _util import (Batch, SliceFactory, TreeSampler, children_cpu, cpu_jiffies,  # noqa: E402
                   histogram_delta, histogram_quantile, http_json, install_signal_handlers, kill_all, percentile, scrape,
                   write_large_instance)

ALL = ("serve", "serve-stdloop", "serve-w2", "serve-nofsync", "serve-pynetdicom", "serve-pynetdicom-w2", "serve-tls", "serve-tls-w2",
       "distributed", "distributed-stdloop", "orthanc", "storescp", "pynetdicom", "large")
OURS = ("serve", "serve-stdloop", "serve-w2", "serve-nofsync", "serve-pynetdicom", "serve-pynetdicom-w2", "serve-tls", "serve-tls-w2",
        "distributed", "distributed-stdloop")
STDLOOP = {"ARCHIVE_EVENT_LOOP": "asyncio"}  # the default is uvloop
BASELINE = "@baseline"  # a scenario of ours run by the --baseline checkout
BUILDS: dict[str, Build] = {"": THIS_BUILD}
STUDIES = 4  # each batch: 4 studies; with 4 associations each association sends one study
DRAIN_TIMEOUT = 600.0


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def make_receiver(key: str, workdir: Path) -> Receiver:
    name, _, tag = key.partition("@")
    build = BUILDS[tag]
    workdir = workdir / key.replace("@", "-")
    if name == "serve":
        return Serve(workdir, build=build)
    if name == "serve-stdloop":
        return Serve(workdir, build=build, extra_env=STDLOOP)
    if name == "serve-w2":
        return Serve(workdir, workers=2, build=build)
    if name == "serve-nofsync":
        return Serve(workdir, fsync=False, build=build)
    if name == "serve-pynetdicom":
        return Serve(workdir, engine="pynetdicom", build=build)
    if name == "serve-pynetdicom-w2":
        return Serve(workdir, workers=2, engine="pynetdicom", build=build)
    if name == "serve-tls":
        return Serve(workdir, tls=True, build=build)
    if name == "serve-tls-w2":
        return Serve(workdir, workers=2, tls=True, build=build)
    if name == "distributed":
        return Distributed(workdir, build=build)
    if name == "distributed-stdloop":
        return Distributed(workdir, build=build, extra_env=STDLOOP)
    if name == "orthanc":
        return Orthanc(workdir)
    if name == "storescp":
        return StoreSCP(workdir)
    if name == "pynetdicom":
        return PynetdicomSCP(workdir)
    raise ValueError(name)


# ---- sending -------------------------------------------------------------------------------

def storescu(receiver: Receiver, files: list[Path], assocs: int, timeout: float) -> float:
    """Send ``files`` with ``assocs`` storescu processes in parallel; return wall seconds."""
    tool = shutil.which("storescu")
    if tool is None:
        raise RuntimeError("storescu is not installed (apt-get install dcmtk)")
    size = -(-len(files) // assocs)
    chunks = [files[i:i + size] for i in range(0, len(files), size)]
    env = {**os.environ, **DCMTK_ENV}
    started = time.perf_counter()
    procs = [subprocess.Popen([tool, *_tls_flags(receiver, f"BENCH{i}"), "-aet", f"BENCH{i}", "-aec", receiver.aet,
                               "127.0.0.1", str(receiver.dicom_port), *map(str, chunk)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, start_new_session=True)
             for i, chunk in enumerate(chunks)]
    problems = []
    try:
        for proc in procs:
            out, _ = proc.communicate(timeout=max(1.0, timeout - (time.perf_counter() - started)))
            text = out.decode(errors="replace")
            if proc.returncode != 0 or "E: " in text or "Store Failed" in text:
                problems.append(f"storescu exit {proc.returncode}: {text[-800:]}")
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, 9)
                proc.wait()
    elapsed = time.perf_counter() - started
    if problems:
        raise RuntimeError("; ".join(problems))
    return elapsed


def _tls_flags(receiver: Receiver, aet: str) -> tuple[str, ...]:
    """storescu's TLS options for a sender calling as ``aet`` (none for a plain port)."""
    flags_for = getattr(receiver, "flags_for", None)
    return tuple(flags_for(aet)) if flags_for is not None else ()


def wait_stored(receiver: Receiver, batch: Batch, timeout: float) -> float:
    """Wait until the receiver holds (ours: can find) the whole batch; return when."""
    deadline = time.monotonic() + timeout
    want = len(batch.files)
    while True:
        got = receiver.stored(batch)
        if got >= want:
            return time.perf_counter()
        if time.monotonic() > deadline:
            raise TimeoutError(f"{receiver.label}: {got}/{want} instances after {timeout} s\n{receiver.logs()}")
        time.sleep(0.05 if receiver.ours else 0.2)


def wait_quiet(threshold: float, limit: float) -> float:
    """Wait (up to ``limit`` s) until the machine is below ``threshold`` busy cores for 2 s in a row."""
    started = time.monotonic()
    calm = 0
    while time.monotonic() - started < limit:
        busy0, total0 = cpu_jiffies()
        time.sleep(1.0)
        busy1, total1 = cpu_jiffies()
        cores = (busy1 - busy0) / max(1, total1 - total0) * (os.cpu_count() or 1)
        calm = calm + 1 if cores < threshold else 0
        if calm >= 2:
            break
    return time.monotonic() - started


# ---- one load run ----------------------------------------------------------------------------

def _q(buckets: list[tuple[float, float]], q: float, scale: float = 1.0) -> float | None:
    value = histogram_quantile(q, buckets)
    return None if value is None else value * scale


def load_run(receiver: Receiver, batch: Batch, assocs: int) -> dict[str, Any]:
    count = len(batch.files)
    before_scp = scrape(receiver.scp_metrics) if receiver.scp_metrics else {}
    before_idx = scrape(receiver.indexer_metrics) if receiver.indexer_metrics else {}
    sampler = TreeSampler(receiver.roots())
    sampler.start()
    load_before = os.getloadavg()[0]
    busy0, total0 = cpu_jiffies()
    sender0 = children_cpu()
    t0 = time.perf_counter()
    try:
        elapsed = storescu(receiver, batch.files, assocs, timeout=max(120.0, count * 0.25))
        busy1, total1 = cpu_jiffies()
        sender_cpu = children_cpu() - sender0
        receiver_cpu = sampler.cpu_so_far()
        t_all = wait_stored(receiver, batch, DRAIN_TIMEOUT)
    finally:
        usage = sampler.stop()
    cpus = os.cpu_count() or 1
    machine_busy = (busy1 - busy0) / max(1, total1 - total0) * cpus  # cores busy while sending
    result: dict[str, Any] = {
        "assocs": assocs, "count": count, "bytes": batch.bytes, "seconds": elapsed,
        "inst_s": count / elapsed, "mb_s": batch.bytes / 2**20 / elapsed,
        "loadavg_before": load_before, "processes": usage,
        "machine_busy_cores": machine_busy, "sender_cpu_s": sender_cpu,
    }
    main = next(iter(usage))
    result["peak_rss_mb"] = usage[main]["peak_rss_mb"]
    ours = {k: u for k, u in usage.items() if not k.startswith("service:")}
    services = {k: u for k, u in usage.items() if k.startswith("service:")}
    result["peak_rss_all_roles_mb"] = sum(u["peak_rss_mb"] for u in ours.values())
    result["cpu_ms_per_instance"] = 1000 * sum(u["cpu_s"] for u in ours.values()) / count
    by_process: dict[str, float] = {}
    for u in ours.values():
        for name, cpu_s in u.get("by_process", {}).items():
            by_process[name] = by_process.get(name, 0.0) + 1000 * cpu_s / count
    result["cpu_ms_by_process"] = by_process
    if services:
        result["services_cpu_ms_per_instance"] = 1000 * sum(u["cpu_s"] for u in services.values()) / count
    # What else ran on the machine while sending (other users' work, the services' idle load, the
    # benchmark itself); the receiver's CPU after the last Success (indexing backlog) is excluded.
    result["receiver_busy_cores"] = receiver_cpu / elapsed
    result["sender_busy_cores"] = sender_cpu / elapsed
    result["other_busy_cores"] = max(0.0, machine_busy - (receiver_cpu + sender_cpu) / elapsed)
    if receiver.ours:
        # last Success (storescu exits) -> whole batch searchable; polled every 50 ms
        result["all_searchable_s"] = max(0.0, t_all - (t0 + elapsed))
        result["end_to_end_inst_s"] = count / (t_all - t0)
        after_scp = scrape(receiver.scp_metrics or "")
        after_idx = scrape(receiver.indexer_metrics or "")
        cstore = histogram_delta(before_scp, after_scp, "archive_cstore_seconds")
        tts = histogram_delta(before_idx, after_idx, "archive_time_to_searchable_seconds")
        result["cstore_observed"] = cstore[-1][1] if cstore else 0
        result["cstore_p50_ms"] = _q(cstore, 0.5, 1000)
        result["cstore_p99_ms"] = _q(cstore, 0.99, 1000)
        result["searchable_observed"] = tts[-1][1] if tts else 0
        result["searchable_p50_s"] = _q(tts, 0.5)
        result["searchable_p99_s"] = _q(tts, 0.99)
    return result


# ---- probe: per-request round trip and time from Success to visible in QIDO ------------------

class VisibilityPoller(threading.Thread):
    """Polls QIDO-RS for the SOP Instance UIDs answered Success but not yet seen."""

    def __init__(self, qido: str) -> None:
        super().__init__(daemon=True)
        self.qido = qido
        self.pending: dict[str, float] = {}
        self.visible: dict[str, float] = {}
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.errors = 0

    def add(self, uid: str, success_at: float) -> None:
        with self.lock:
            self.pending[uid] = success_at

    def run(self) -> None:
        while True:
            with self.lock:
                uids = list(self.pending)[:40]
            if not uids:
                if self.done.is_set():
                    return
                time.sleep(0.002)
                continue
            try:
                status, body = http_json(f"{self.qido}/instances?SOPInstanceUID={quote(','.join(uids))}"
                                         f"&limit=100", timeout=5)
            except OSError:
                self.errors += 1
                status, body = 0, None
            now = time.monotonic()
            if status == 200:
                with self.lock:
                    for row in body or []:
                        uid = row.get("00080018", {}).get("Value", [None])[0]
                        if uid in self.pending:
                            self.visible[uid] = now - self.pending.pop(uid)
            else:
                self.errors += 1
            time.sleep(0.01)


def probe(receiver: Receiver, batch: Batch, rate: float, visible_timeout: float = 60.0) -> dict[str, Any]:
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
    from pynetdicom import AE

    ae = AE(ae_title="BENCHPROBE")
    ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian])
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
    poller = VisibilityPoller(receiver.qido) if receiver.qido else None
    if poller:
        poller.start()
    rtts: list[float] = []
    failures = 0
    assoc = ae.associate("127.0.0.1", receiver.dicom_port, ae_title=receiver.aet, tls_args=receiver.tls_args)
    if not assoc.is_established:
        raise RuntimeError(f"{receiver.label}: probe association not established")
    try:
        start = time.monotonic()
        for i, (path, uid) in enumerate(zip(batch.files, batch.sop_uids)):
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            t = time.monotonic()
            answer = assoc.send_c_store(path)
            done = time.monotonic()
            ok = "Status" in answer and int(answer.Status) == 0
            if not ok:
                failures += 1
                continue
            rtts.append(done - t)
            if poller:
                poller.add(uid, done)
    finally:
        assoc.release()
    result: dict[str, Any] = {
        "count": len(batch.files), "rate_per_s": rate, "failures": failures,
        "rtt_p50_ms": _ms(percentile(rtts, 0.5)), "rtt_p99_ms": _ms(percentile(rtts, 0.99)),
        "rtt_max_ms": _ms(max(rtts) if rtts else None),
    }
    if poller:
        deadline = time.monotonic() + visible_timeout
        while poller.pending and time.monotonic() < deadline:
            time.sleep(0.05)
        poller.done.set()
        with poller.lock:
            missing = len(poller.pending)
            poller.pending.clear()
        poller.join(10)
        seen = list(poller.visible.values())
        result.update({
            "visible_p50_ms": _ms(percentile(seen, 0.5)), "visible_p99_ms": _ms(percentile(seen, 0.99)),
            "visible_max_ms": _ms(max(seen) if seen else None), "not_visible": missing,
            "poll_errors": poller.errors,
        })
    return result


def _ms(value: float | None) -> float | None:
    return None if value is None else value * 1000


# ---- large instance -------------------------------------------------------------------------

def large_run(name: str, workdir: Path, size: int) -> dict[str, Any]:
    path = workdir / "large.dcm"
    log(f"large: writing a {size / 2**30:.2f} GiB instance")
    uid = write_large_instance(path, size)
    receiver = make_receiver(name, workdir / f"large-{name}")
    try:
        receiver.start()
        idle = TreeSampler(receiver.roots())
        idle_rss = idle.stop()
        sampler = TreeSampler(receiver.roots())
        sampler.start()
        try:
            seconds = storescu(receiver, [path], 1, timeout=900)
            t_sent = time.perf_counter()
            visible = None
            if receiver.qido:
                deadline = time.monotonic() + 120
                while time.monotonic() < deadline:
                    status, body = http_json(f"{receiver.qido}/instances?SOPInstanceUID={uid}", timeout=10)
                    if status == 200 and body:
                        visible = time.perf_counter() - t_sent
                        break
                    time.sleep(0.1)
        finally:
            usage = sampler.stop()
        main = next(iter(usage))
        return {
            "receiver": receiver.label, "bytes": path.stat().st_size, "seconds": seconds,
            "mb_s": path.stat().st_size / 2**20 / seconds, "visible_after_s": visible,
            "idle_rss_mb": idle_rss[main]["peak_rss_mb"], "peak_rss_mb": usage[main]["peak_rss_mb"],
            "processes": usage,
        }
    finally:
        receiver.stop()
        receiver.cleanup()
        path.unlink(missing_ok=True)


# ---- one receiver ---------------------------------------------------------------------------

def bench_receiver(name: str, workdir: Path, factory: SliceFactory, args: argparse.Namespace) -> dict[str, Any]:
    receiver = make_receiver(name, workdir)
    out: dict[str, Any] = {"receiver": receiver.label, "key": name, "runs": []}
    try:
        log(f"{name}: starting")
        receiver.start()
        warm = factory.batch(workdir / "warm", 20, 1)
        storescu(receiver, warm.files, 1, timeout=120)
        wait_stored(receiver, warm, 120)
        warm.remove()
        for rep in range(args.repeat):
            for assocs in args.assocs:
                batch = factory.batch(workdir / "batch", args.count, STUDIES)
                # The batch just written (and the last run's objects) out to disk first, so that
                # their writeback does not fall into this run's fsyncs.
                os.sync()
                waited = wait_quiet(args.quiet, args.quiet_wait) if args.quiet_wait > 0 else 0.0
                try:
                    run = load_run(receiver, batch, assocs)
                finally:
                    batch.remove()
                run["repeat"] = rep
                run["waited_for_quiet_s"] = waited
                out["runs"].append(run)
                log(f"{name}: {assocs} assoc(s) rep {rep}: {run['inst_s']:.0f} inst/s, "
                    f"peak RSS {run['peak_rss_mb']:.0f} MB"
                    + (f", all searchable after {run['all_searchable_s']:.1f} s" if receiver.ours else ""))
        if args.probe:
            batch = factory.batch(workdir / "probe", args.probe, 1)
            try:
                out["probe"] = probe(receiver, batch, args.probe_rate)
            finally:
                batch.remove()
            log(f"{name}: probe {out['probe']}")
    except Exception as exc:
        out["error"] = f"{type(exc).__name__}: {exc}"
        log(f"{name}: FAILED {out['error']}\n{traceback.format_exc()}")
    finally:
        receiver.stop()
        receiver.cleanup()
    return out


def bench_pair(names: tuple[str, str], workdir: Path, factory: SliceFactory,
               args: argparse.Namespace) -> list[dict[str, Any]]:
    """Two builds of one scenario, a repetition of each in turn (A B B A A B ...), each on a
    fresh receiver: all of one build's repetitions, then all of the other's, favoured whichever
    ran first by 3-27 % on 2026-12-07, in both orders, with or without the sync before each run."""
    merged: dict[str, dict[str, Any]] = {}
    for rep in range(args.repeat):
        last = rep == args.repeat - 1
        once = argparse.Namespace(**{**vars(args), "repeat": 1, "probe": args.probe if last else 0})
        for name in names if rep % 2 == 0 else names[::-1]:
            res = bench_receiver(name, workdir / f"{name}-{rep}", factory, once)
            for run in res["runs"]:
                run["repeat"] = rep
            into = merged.setdefault(name, {**res, "runs": []})
            into["runs"].extend(res["runs"])
            for key in ("probe", "error"):
                if key in res:
                    into[key] = res[key]
    return [merged[name] for name in names]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, help="instances per run (default 1000; --quick: 60)")
    parser.add_argument("--repeat", type=int, help="runs per receiver and association count (default 3; --quick: 1)")
    parser.add_argument("--assocs", default="1,4", help="association counts (default 1,4)")
    parser.add_argument("--probe", type=int, help="probe instances, pynetdicom sender (default 200; --quick: 20; 0: none)")
    parser.add_argument("--probe-rate", type=float, default=20.0, help="probe instances per second")
    parser.add_argument("--large-size", type=float, help="GiB of the large instance (default 1; --quick: 1/16)")
    parser.add_argument("--large-receivers", default="serve,distributed", help="receivers of the large instance")
    parser.add_argument("--scenarios", default=",".join(ALL), help=f"comma-separated subset of {','.join(ALL)}")
    parser.add_argument("--quiet", type=float, default=0.6,
                        help="before each run, wait until fewer than this many cores are busy (default 0.6)")
    parser.add_argument("--quiet-wait", type=float,
                        help="longest wait for a quiet machine in seconds (default 180; --quick: 0 = do not wait)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 60 instances, 1 repeat, small probe, 64 MiB large")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--markdown", type=Path, help="write the tables as Markdown here")
    parser.add_argument("--workdir", type=Path, help="where to put data (default: a new temp dir)")
    parser.add_argument("--baseline", type=Path, metavar="CHECKOUT",
                        help="another checkout (with its .venv) to compare with: each of our scenarios also runs "
                             f"from it as <scenario>{BASELINE}, a repetition of each in turn (e.g. a `git worktree` "
                             "of main)")
    parser.add_argument("--baseline-first", action="store_true",
                        help="the baseline's repetition first in each pair of turns")
    args = parser.parse_args(argv)
    defaults = {"count": (1000, 60), "repeat": (3, 1), "probe": (200, 20), "large_size": (1.0, 1 / 16),
                "quiet_wait": (180.0, 0.0)}
    for name, (full, quick) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    args.assocs = [int(a) for a in args.assocs.split(",")]
    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = set(scenarios) - set(ALL)
    if unknown:
        parser.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    if args.baseline:
        BUILDS[BASELINE[1:]] = Build.checkout(args.baseline, BASELINE[1:])
    pair = (lambda name: (name + BASELINE, name)) if args.baseline_first else (lambda name: (name, name + BASELINE))
    # a scenario alone, or ours and the baseline's, run in turns (bench_pair)
    units = [pair(name) if args.baseline and name in OURS else (name,) for name in scenarios if name != "large"]
    if any(name.startswith("distributed") for name in scenarios) or "distributed" in args.large_receivers:
        missing = distributed_missing()
        if missing:
            log(f"distributed skipped: {', '.join(missing)} not set (run `make services`)")
            units = [unit for unit in units if not unit[0].partition("@")[0].startswith("distributed")]
            args.large_receivers = ",".join(r for r in args.large_receivers.split(",") if r != "distributed")

    install_signal_handlers()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="archive-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    info = machine()
    results: list[dict[str, Any]] = []
    large: list[dict[str, Any]] = []
    try:
        factory = SliceFactory(workdir)
        log(f"workdir {workdir}; slices of {factory.file_size} bytes; scenarios {units}"
            + (" and the large instance" if "large" in scenarios else ""))
        for unit in units:
            if len(unit) == 2:
                results.extend(bench_pair(unit, workdir, factory, args))
            else:
                results.append(bench_receiver(unit[0], workdir / unit[0], factory, args))
        if "large" in scenarios:
            for name in [r for r in args.large_receivers.split(",") if r]:
                try:
                    large.append(large_run(name, workdir, int(args.large_size * 2**30)))
                    log(f"large -> {name}: {large[-1]}")
                except Exception as exc:
                    large.append({"receiver": name, "error": f"{type(exc).__name__}: {exc}"})
                    log(f"large -> {name} FAILED: {traceback.format_exc()}")
    finally:
        kill_all()
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)

    rows = summarise(results)
    table = markdown(rows, results, large)
    goals = targets(rows, large, results)
    print(table)
    print()
    print("\n".join(f"- {g}" for g in goals))
    report = {"machine": info, "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "rows": rows, "results": results, "large": large, "targets": goals}
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))
    if args.markdown:
        args.markdown.write_text(table + "\n\n" + "\n".join(f"- {g}" for g in goals) + "\n")
    failed = any("error" in r for r in results) or any("error" in g for g in large)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
