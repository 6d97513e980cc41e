"""User-space instructions per received instance, by process and library: callgrind (valgrind).

This VM exposes no hardware counters (``perf stat`` counts no instructions), so the receivers run
under valgrind's callgrind, which counts every instruction it executes: `serve` (its receiver and
its indexer child) and Orthanc, each sent ``--warmup`` CT slices of 0.5 MB with DCMTK `storescu`
(one association, fsync on), then, counters zeroed, ``--count`` new ones; once they are all
indexed each process's counters are dumped and split by shared object and function. Kernel work
(fsync, sockets, page cache, thread switches) is not counted: `perf` time shares give that.

Valgrind's virtual CPU has no SHA extensions, so OpenSSL's SHA-256 takes its portable path here
(about 28 instructions a byte); on this machine's CPU (``sha_ni``) it takes a few.

    .venv/bin/python bench/callgrind.py --count 50
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._util import SliceFactory  # noqa: E402


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get_json(url: str) -> object:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def wait(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        try:
            if predicate():
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.5)


def callgrind_pids() -> list[int]:
    out = subprocess.run(["callgrind_control"], capture_output=True, text=True).stdout
    return [int(m.group(1)) for m in re.finditer(r"^PID (\d+):", out, re.MULTILINE)]


def control(option: str, pids: list[int]) -> None:
    for pid in pids:
        subprocess.run(["callgrind_control", option, str(pid)], capture_output=True, check=True)


def split(path: Path) -> tuple[int, collections.Counter[str], collections.Counter[tuple[str, str]]]:
    """Self cost (Ir) of a callgrind output file: total, by object, by (object, function)."""
    names: dict[str, dict[str, str]] = {"ob": {}, "fn": {}, "fl": {}}
    table = {"ob": "ob", "cob": "ob", "fn": "fn", "cfn": "fn"}
    obj = fn = "?"
    skip = False
    objects: collections.Counter[str] = collections.Counter()
    functions: collections.Counter[tuple[str, str]] = collections.Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        if not line:
            continue
        key, eq, value = line.partition("=")
        if eq and key in ("ob", "fn", "cob", "cfn", "fl", "fi", "fe", "cfi", "cfl"):
            m = re.match(r"\((\d+)\)(?: (.*))?", value)
            kind = table.get(key, "fl")
            if m:
                if m.group(2) is not None:
                    names[kind][m.group(1)] = m.group(2)
                value = names[kind].get(m.group(1), "?")
            if key == "ob":
                obj = value.rsplit("/", 1)[-1]
            elif key == "fn":
                fn = value
            continue
        if line.startswith("calls="):
            skip = True  # the next cost line is the call's inclusive cost
            continue
        if line[0].isdigit() or line[0] in "+-*":
            parts = line.split()
            if len(parts) < 2:
                continue
            if skip:
                skip = False
                continue
            n = int(parts[1])
            objects[obj] += n
            functions[(obj, fn)] += n
            total += n
    return total, objects, functions


def measure(name: str, command: list[str], env: dict[str, str], ready: str, count_url,  # type: ignore[no-untyped-def]
            port: int, aet: str, warm: list[Path], files: list[Path], workdir: Path) -> list[dict[str, object]]:
    out = workdir / name
    out.mkdir()
    log = open(out / "log", "w")
    proc = subprocess.Popen(["valgrind", "--tool=callgrind", "--trace-children=yes",
                             f"--callgrind-out-file={out}/%p.out", *command],
                            env=env, stdout=log, stderr=subprocess.STDOUT, cwd=out)
    try:
        wait(lambda: urllib.request.urlopen(ready, timeout=5).status == 200, 600, f"{name} ready")
        storescu = ["storescu", "-aec", aet, "127.0.0.1", str(port)]
        subprocess.run([*storescu, *map(str, warm)], check=True, capture_output=True,
                       env={**os.environ, "TCP_NODELAY": "1"})
        wait(lambda: count_url() >= len(warm), 600, f"{name}: warm-up indexed")
        time.sleep(2)
        pids = callgrind_pids()
        control("-z", pids)
        subprocess.run([*storescu, *map(str, files)], check=True, capture_output=True,
                       env={**os.environ, "TCP_NODELAY": "1"})
        wait(lambda: count_url() >= len(warm) + len(files), 600, f"{name}: all indexed")
        control("-d", pids)
        rows = []
        for pid in pids:
            dumps = sorted(out.glob(f"{pid}.out.*"), key=lambda p: int(p.suffix[1:]))
            total, objects, functions = split(dumps[-1])
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode() if Path(
                f"/proc/{pid}/cmdline").exists() else str(pid)
            process = cmdline.split("archive.cli")[-1].strip() if "archive.cli" in cmdline else command[0]
            rows.append({"receiver": name, "process": process,
                         "total": total / len(files), "objects": objects, "functions": functions,
                         "count": len(files)})
        return rows
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        for pid in callgrind_pids():
            subprocess.run(["kill", "-9", str(pid)], capture_output=True)
        log.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--receivers", default="serve,orthanc")
    parser.add_argument("--top", type=int, default=6, help="functions shown per process")
    args = parser.parse_args()
    if not shutil.which("valgrind") or not shutil.which("storescu"):
        parser.error("needs valgrind and DCMTK's storescu")
    workdir = Path(tempfile.mkdtemp(prefix="archive-callgrind-"))
    factory = SliceFactory(workdir)
    factory.batch(workdir / "warm", args.warmup)
    factory.batch(workdir / "files", args.count)
    warm, files = sorted((workdir / "warm").glob("*.dcm")), sorted((workdir / "files").glob("*.dcm"))
    rows: list[dict[str, object]] = []
    for receiver in args.receivers.split(","):
        dicom, http = free_port(), free_port()
        if receiver == "serve":
            env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root"), "PYTHONPATH": str(ROOT),
                   "ARCHIVE_DATA_DIR": str(workdir / "serve-data"), "ARCHIVE_BIND": "127.0.0.1",
                   "ARCHIVE_DICOM_PORT": str(dicom), "ARCHIVE_HTTP_PORT": str(http), "ARCHIVE_FSYNC": "true"}
            search = f"http://127.0.0.1:{http}/api/search?level=instance&limit=1&facets="
            rows += measure("serve", [sys.executable, "-m", "archive.cli", "serve"], env,
                            f"http://127.0.0.1:{http}/readyz", lambda: get_json(search)["total"],  # type: ignore[index]
                            dicom, "ARCHIVE", warm, files, workdir)
        elif receiver == "orthanc":
            config = workdir / "orthanc.json"
            config.write_text(json.dumps({
                "Name": "callgrind", "StorageDirectory": str(workdir / "orthanc-storage"),
                "IndexDirectory": str(workdir / "orthanc-index"), "DicomAet": "ORTHANC", "DicomPort": dicom,
                "HttpPort": http, "DicomCheckCalledAet": False, "AuthenticationEnabled": False,
                "SaveJobs": False, "StorageCompression": False, "SyncStorageArea": True, "Plugins": []}))
            stats = f"http://127.0.0.1:{http}/statistics"
            rows += measure("orthanc", ["Orthanc", str(config)], {**os.environ, "TCP_NODELAY": "1"},
                            f"http://127.0.0.1:{http}/system",
                            lambda: get_json(stats)["CountInstances"],  # type: ignore[index]
                            dicom, "ORTHANC", warm, files, workdir)
        else:
            parser.error(f"unknown receiver {receiver}")
    print("| receiver | process | M instructions an instance | by library (M) | top functions (M) |")
    print("|---|---|---:|---|---|")
    for row in rows:
        count = int(row["count"])  # type: ignore[call-overload]
        objects = row["objects"].most_common(5)  # type: ignore[attr-defined]
        functions = row["functions"].most_common(args.top)  # type: ignore[attr-defined]
        libs = "; ".join(f"{o} {n / count / 1e6:.2f}" for o, n in objects if n / count >= 5e4)
        tops = "; ".join(f"{f.split(':')[-1][:40]} {n / count / 1e6:.2f}" for (o, f), n in functions)
        print(f"| {row['receiver']} | {row['process']} | {float(row['total']) / 1e6:.2f} | {libs} | {tops} |")  # type: ignore[arg-type]
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
