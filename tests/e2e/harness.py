"""Run real archive processes (``dicom-archive serve`` or the separate roles) for tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]


def http_json(url: str, timeout: float = 5.0, *, headers: dict[str, str] | None = None,
              payload: Any = None) -> tuple[int, Any]:
    """GET ``url`` (POST ``payload`` as JSON when given): the status and the JSON body (None when empty;
    an error's body as JSON when it is, else as text)."""
    data = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(url, data=data, method="GET" if data is None else "POST",
                                     headers={**({"Content-Type": "application/json"} if data else {}), **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = response.read()
            return response.status, json.loads(body) if body else None
    except urllib.error.HTTPError as exc:
        body = exc.read()
        try:
            return exc.code, json.loads(body)
        except ValueError:
            return exc.code, body.decode(errors="replace")


@dataclass
class ArchiveProcess:
    """One ``dicom-archive`` process with its own ports and log file."""

    command: str
    env: dict[str, str]
    log_path: Path
    dicom_port: int = 0
    http_port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    extra_args: list[str] = field(default_factory=list)
    cwd: Path = ROOT  # the attack suite runs it in a sandbox, to see any file written beside it

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self, wait_ready: bool = True, timeout: float = 60.0) -> "ArchiveProcess":
        env = {**os.environ, **self.env}
        env["ARCHIVE_DICOM_PORT"] = str(self.dicom_port)
        env["ARCHIVE_HTTP_PORT"] = str(self.http_port)
        env.setdefault("ARCHIVE_BIND", "127.0.0.1")
        env.setdefault("ARCHIVE_LOG_LEVEL", "INFO")
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "archive.cli", self.command, *self.extra_args],
            env=env, stdout=log, stderr=subprocess.STDOUT, cwd=self.cwd,
        )
        log.close()
        if wait_ready:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.command} exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                status, _ = http_json(f"{self.http}/readyz", timeout=2)
                if status == 200:
                    return
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            time.sleep(0.1)
        raise TimeoutError(f"{self.command} not ready after {timeout} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""

    def stop(self, timeout: float = 40.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()


def serve(tmp_path: Path, **env: str) -> ArchiveProcess:
    """An embedded ``serve`` on fresh ports and a fresh data dir."""
    base = {"ARCHIVE_DATA_DIR": str(tmp_path / "data"), "ARCHIVE_FSYNC": "false"}
    base.update(env)
    return ArchiveProcess("serve", base, tmp_path / "serve.log", free_port(), free_port())


def metric(proc: ArchiveProcess, name: str, **labels: str) -> float:
    """A metric's value from ``/metrics``, summed over the series whose labels include ``labels``."""
    with urllib.request.urlopen(f"{proc.http}/metrics", timeout=5) as response:
        text = response.read().decode()
    wanted = {f'{k}="{v}"' for k, v in labels.items()}
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            series, value = line[len(name):].rsplit(" ", 1)
            if wanted <= set(series.strip("{}").split(",")) - {""}:
                total += float(value)
    return total


def wait_until(predicate: Any, timeout: float = 20.0, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise TimeoutError(f"condition not met within {timeout} s (last value {last!r})")


def verify(env: dict[str, str]) -> tuple[int, dict[str, Any]]:
    result = subprocess.run(
        [sys.executable, "-m", "archive.cli", "verify", "--json"],
        env={**os.environ, **env}, capture_output=True, text=True, cwd=ROOT, timeout=300,
    )
    try:
        report = json.loads(result.stdout)
    except ValueError:
        raise AssertionError(f"verify printed no JSON: {result.stdout}\n{result.stderr}") from None
    return result.returncode, report



def listening(port: int) -> bool:
    """Whether a TCP socket listens on ``port`` (any address), read from /proc: no connection made."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()  # sl local_address rem_address st ...; st 0A = LISTEN
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                return True
    return False

def process_tree(root: int) -> set[int]:
    """``root`` and every process below it (a serve's workers and indexer)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):  # gone meanwhile
                continue
    tree = {root}
    while below := {pid for pid, parent in parents.items() if parent in tree} - tree:
        tree |= below
    return tree


def connection_owner(server_port: int, client_port: int, pids: set[int]) -> int | None:
    """Which of ``pids`` holds the server end of the loopback TCP connection from ``client_port``."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()  # sl local_address rem_address st ... uid timeout inode
        if (int(fields[1].rsplit(":", 1)[1], 16), int(fields[2].rsplit(":", 1)[1], 16)) == (server_port, client_port):
            inodes.add(f"socket:[{fields[9]}]")
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                    return pid
            except OSError:
                continue
    return None
