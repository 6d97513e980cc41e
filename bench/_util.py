"""Pieces of the ingest benchmark: test data, processes, RSS/CPU sampling, metrics.

Everything here targets 127.0.0.1 only. Every process is started in its own
session (process group) and registered, so ``kill_all`` can end whole trees,
even when the benchmark is interrupted.
"""

from __future__ import annotations

import atexit
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.conftest import free_port  # noqa: E402  (re-exported for the bench modules)
from tests.e2e.harness import http_json  # noqa: E402

@dataclass(frozen=True)
class Build:
    """Which archive code runs: a checkout and the interpreter that has it installed (editable)."""

    python: str
    root: Path  # the processes start here, so `-m archive.cli` imports this checkout's package
    tag: str = ""  # shown after the receiver's label and key, e.g. "baseline"

    @classmethod
    def checkout(cls, root: Path, tag: str) -> "Build":
        python = root / ".venv" / "bin" / "python"
        if not python.exists():
            raise SystemExit(f"{root}: no .venv/bin/python (make install there first)")
        return cls(str(python), root.resolve(), tag)


THIS_BUILD = Build(sys.executable, ROOT)


UID_ROOT = "1.2.826.0.1.3680043.10.1437.9."  # same root as tests/factories.py
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def http_text(url: str, timeout: float = 5.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return str(response.read().decode())


def request_json(url: str, body: dict[str, Any] | None = None, method: str = "POST",
                 timeout: float = 600) -> dict[str, Any]:
    """A JSON request and its JSON answer (OpenSearch's REST API, for the benches that probe it)."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return dict(json.load(response))


# ---- test data -----------------------------------------------------------------------------

# Placeholders of the template; every generated UID has exactly the same length,
# so the file's element lengths never change when they are replaced.
_PH = {kind: f"{UID_ROOT}9999999.{kind}.99999999{kind}" for kind in (1, 2, 3)}


class SliceFactory:
    """0.5 MB CT slices (512x512, 16 bit, Explicit VR LE) with fresh UIDs on every call.

    One template is encoded with pydicom once; each file is the template with its
    study, series and SOP Instance UID placeholders replaced (same length).
    """

    def __init__(self, workdir: Path, size: int = 512) -> None:
        from tests.factories import make_ct, write_part10

        self.run = random.randint(1_000_000, 8_999_999)  # first UID component of this run
        self.counter = 0
        ds = make_ct(study_uid=_PH[1], series_uid=_PH[2], sop_uid=_PH[3], size=size,
                     patient_id="BENCH-1", patient_name="Bench^Ingest", seed=7)
        path = write_part10(ds, workdir / "template.dcm")
        self.template = path.read_bytes()
        path.unlink()
        for kind, ph in _PH.items():
            expected = 2 if kind == 3 else 1  # SOP Instance UID also in the File Meta
            assert self.template.count(ph.encode()) == expected, (kind, self.template.count(ph.encode()))
        self.file_size = len(self.template)

    def _uid(self, kind: int, n: int) -> str:
        uid = f"{UID_ROOT}{self.run}.{kind}.{100_000_000 + n}"
        assert len(uid) == len(_PH[kind]), uid
        return uid

    def batch(self, directory: Path, count: int, studies: int = 1) -> "Batch":
        """Write ``count`` never-sent-before files, spread over ``studies`` studies."""
        directory.mkdir(parents=True, exist_ok=True)
        batch = Batch(directory)
        per_study = -(-count // studies)
        tpl = self.template
        for i in range(count):
            if i % per_study == 0:
                self.counter += 1
                study, series = self._uid(1, self.counter), self._uid(2, self.counter)
                batch.studies.append(study)
            self.counter += 1
            sop = self._uid(3, self.counter)
            data = (tpl.replace(_PH[1].encode(), study.encode())
                    .replace(_PH[2].encode(), series.encode())
                    .replace(_PH[3].encode(), sop.encode()))
            path = directory / f"{i:06d}.dcm"
            path.write_bytes(data)
            batch.files.append(path)
            batch.sop_uids.append(sop)
            batch.study_of[sop] = study
        return batch


@dataclass
class Batch:
    directory: Path
    files: list[Path] = field(default_factory=list)
    sop_uids: list[str] = field(default_factory=list)
    studies: list[str] = field(default_factory=list)
    study_of: dict[str, str] = field(default_factory=dict)

    @property
    def bytes(self) -> int:
        return sum(p.stat().st_size for p in self.files)

    def remove(self) -> None:
        for p in self.files:
            p.unlink(missing_ok=True)
        try:
            self.directory.rmdir()
        except OSError:
            pass


def write_large_instance(path: Path, size: int, chunk: int = 8 << 20) -> str:
    """A multi-frame CT of about ``size`` bytes, streamed to disk (never in memory).

    Part 10 header and attributes come from pydicom; the Pixel Data element
    header (Explicit VR LE, OW, 4-byte length) and its value are written by hand.
    Returns the SOP Instance UID.
    """
    from pydicom.uid import generate_uid

    from tests.factories import make_ct, write_part10

    frame = 512 * 512 * 2
    frames = max(1, size // frame)
    ds = make_ct(size=512, patient_id="BENCH-BIG", sop_uid=generate_uid(prefix=UID_ROOT))
    del ds.PixelData
    ds.NumberOfFrames = frames
    write_part10(ds, path)
    length = frames * frame
    zeros = bytes(chunk)
    with open(path, "ab") as f:
        # (7FE0,0010) OW, reserved 2 bytes, 32-bit length  (PS3.5 7.1.2)
        f.write(b"\xe0\x7f\x10\x00OW\x00\x00" + length.to_bytes(4, "little"))
        left = length
        while left:
            n = min(chunk, left)
            f.write(zeros[:n])
            left -= n
    return str(ds.SOPInstanceUID)


# ---- processes -------------------------------------------------------------------------------

_LIVE: list["Proc"] = []


class Proc:
    """A process in its own session; ``stop`` ends its whole process group."""

    def __init__(self, name: str, argv: list[str], log_path: Path, env: dict[str, str] | None = None,
                 cwd: Path = ROOT) -> None:
        self.name = name
        self.log_path = log_path
        log = open(log_path, "ab")
        self.popen = subprocess.Popen(argv, env={**os.environ, **(env or {})}, cwd=cwd, stdout=log,
                                      stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                      start_new_session=True)
        log.close()
        self.pid = self.popen.pid
        _LIVE.append(self)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""

    def wait_http(self, url: str, timeout: float = 90.0, ok: tuple[int, ...] = (200,)) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"{self.name} exited with {self.popen.returncode}:\n{self.log_tail()}")
            try:
                status, _ = http_json(url, timeout=2)
                if status in ok:
                    return
            except (OSError, ValueError):
                pass
            time.sleep(0.1)
        raise TimeoutError(f"{self.name} not ready after {timeout} s:\n{self.log_tail()}")

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM to the group, SIGKILL to the group after ``timeout``."""
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(self.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.popen.wait(wait)
            except subprocess.TimeoutExpired:
                continue
            # The leader is gone; give the rest of the group a moment, then make sure.
            time.sleep(0.2)
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            break
        if self in _LIVE:
            _LIVE.remove(self)


def kill_all() -> None:
    for proc in list(_LIVE):
        try:
            proc.stop(timeout=10)
        except Exception:  # best effort at exit
            pass


atexit.register(kill_all)


def _on_signal(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def install_signal_handlers() -> None:
    signal.signal(signal.SIGTERM, _on_signal)


# ---- RSS and CPU of process trees -----------------------------------------------------------

def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                out += [int(x) for x in f.read().split()]
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return out


def tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        todo += _children(p)
    return pids


def _stat(pid: int) -> tuple[int, float] | None:
    """(RSS bytes, CPU seconds including its reaped children) of one process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # fields[0] is field 3 (state): utime=14, stime=15, cutime=16, cstime=17, rss=24
    cpu = sum(int(fields[i]) for i in (11, 12, 13, 14)) / CLK_TCK
    return int(fields[21]) * PAGE, cpu


class TreeSampler(threading.Thread):
    """Every ``interval`` s: RSS summed over each root's process tree; peak and CPU use."""

    def __init__(self, roots: dict[str, int], interval: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.roots = roots
        self.interval = interval
        self.peak: dict[str, int] = {k: 0 for k in roots}
        self._first_cpu: dict[int, float] = {}
        self._last_cpu: dict[int, float] = {}
        self._owner: dict[int, str] = {}
        self._name: dict[int, str] = {}
        self._halt = threading.Event()
        self._baseline = True
        self.sample()  # CPU baseline of the processes alive at start
        self._baseline = False

    def sample(self) -> set[int]:
        seen: set[int] = set()
        for label, root in self.roots.items():
            total = 0
            for pid in tree(root):
                stat = _stat(pid)
                if stat is None:
                    continue
                total += stat[0]
                seen.add(pid)
                # processes born later count from zero
                self._first_cpu.setdefault(pid, stat[1] if self._baseline else 0.0)
                self._last_cpu[pid] = stat[1]
                self._owner[pid] = label
                if not self._name.get(pid):  # "" while the process is still starting
                    self._name[pid] = process_name(pid)
            self.peak[label] = max(self.peak[label], total)
        return seen

    def run(self) -> None:
        while not self._halt.wait(self.interval):
            self.sample()

    def cpu_so_far(self) -> float:
        """CPU seconds of all sampled trees since the start (samples now)."""
        alive = self.sample()
        return sum(last - self._first_cpu.get(pid, 0.0) for pid, last in list(self._last_cpu.items())
                   if pid in alive)

    def stop(self) -> dict[str, dict[str, Any]]:
        self._halt.set()
        if self.is_alive():
            self.join(5)
        alive = self.sample()
        cpu: dict[str, float] = {k: 0.0 for k in self.roots}
        by_process: dict[str, dict[str, float]] = {k: {} for k in self.roots}
        for pid, last in self._last_cpu.items():
            # A child that is gone was reaped by its parent in the tree, whose cutime/cstime
            # now hold all of its CPU time: counting its samples too would count it twice.
            if pid in alive:
                used = last - self._first_cpu.get(pid, 0.0)
                cpu[self._owner[pid]] += used
                named, name = by_process[self._owner[pid]], self._name.get(pid) or str(pid)
                named[name] = named.get(name, 0.0) + used
        return {label: {"peak_rss_mb": self.peak[label] / 2**20, "cpu_s": cpu[label], "by_process": by_process[label]}
                for label in self.roots}


def process_name(pid: int) -> str:
    """A process's role for the tables: ``archive.cli``'s subcommand (``serve``, ``indexer`` for
    serve's indexer child, ``scp``...), else its program's name; "" when it cannot be told yet
    (a process still in exec has no arguments to read) or any more."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return ""
    if "archive.cli" in argv and argv.index("archive.cli") + 1 < len(argv):
        return argv[argv.index("archive.cli") + 1]
    return Path(argv[0]).name if argv else ""


def cpu_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    total = sum(values[:8])  # user nice system idle iowait irq softirq steal
    return total - idle, total


def children_cpu() -> float:
    """CPU seconds of this process's waited-for children (the senders)."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# ---- Prometheus text ------------------------------------------------------------------------

_LINE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)')


def scrape(url: str) -> dict[str, float]:
    """``name{labels}`` -> value of a /metrics page (empty when unreachable)."""
    try:
        text = http_text(url, timeout=5)
    except OSError:
        return {}
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = _LINE.match(line)
        if m:
            out[m.group(1) + (m.group(2) or "")] = float(m.group(3))
    return out


def histogram_delta(before: dict[str, float], after: dict[str, float], name: str) -> list[tuple[float, float]]:
    """Cumulative (upper bound, count) buckets observed between two scrapes."""
    buckets = []
    for key, value in after.items():
        if key.startswith(name + "_bucket{"):
            le = re.search(r'le="([^"]+)"', key)
            assert le is not None
            bound = float("inf") if le.group(1) == "+Inf" else float(le.group(1))
            buckets.append((bound, value - before.get(key, 0.0)))
    return sorted(buckets)


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """Prometheus' histogram_quantile: linear interpolation inside the bucket."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    total = buckets[-1][1]
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if bound == float("inf"):
                return lower_bound  # open-ended bucket: the highest finite bound
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (count - lower_count)
        lower_bound, lower_count = bound, count
    return None


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..1)."""
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, int(round(q * len(ordered) + 0.5)) - 1))
    return ordered[index]
