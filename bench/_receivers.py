"""The receivers under test, each started fresh on loopback ports in a temp dir.

- ``serve``: ``dicom-archive serve`` on the embedded backends (ARCHIVE_FSYNC default: true)
- ``distributed``: ``scp``, ``indexer`` and ``query`` processes on the real services of
  ``scripts/services.sh`` (own bucket, queue, index and schema, removed afterwards)
- ``orthanc``: Orthanc (Debian package) on SQLite, no plugins, TCP_NODELAY=1
- ``storescp``: DCMTK storescp writing files only (``--fork``: one process per association)
- ``pynetdicom``: pynetdicom's own storescp app writing files only (the floor of a pynetdicom receiver)
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
import uuid
from pathlib import Path
from collections.abc import Sequence
from typing import Any

from _util import ROOT, THIS_BUILD, Batch, Build, Proc, free_port, http_json
from tests.conftest import _services_env

# DCMTK reads TCP_NODELAY from the environment; the product doc's Orthanc numbers use it.
DCMTK_ENV = {"TCP_NODELAY": "1"}



class Receiver:
    label = ""
    aet = "ARCHIVE"
    ours = False  # our archive: has /metrics and QIDO
    sender_flags: tuple[str, ...] = ()  # storescu options to reach it (TLS)
    tls_args: Any = None  # pynetdicom's, for the probe

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.dicom_port = free_port()
        self.procs: dict[str, Proc] = {}

    # --- lifecycle
    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        for proc in reversed(list(self.procs.values())):
            proc.stop()
        self.procs.clear()

    def cleanup(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)

    def roots(self) -> dict[str, int]:
        """Processes whose trees are sampled; the first is the receiver's own."""
        return {name: p.pid for name, p in self.procs.items()}

    def logs(self) -> str:
        return "\n".join(f"---- {n} ----\n{p.log_tail(20)}" for n, p in self.procs.items())

    # --- observation (ours only)
    scp_metrics: str | None = None
    indexer_metrics: str | None = None
    qido: str | None = None  # base URL of /dicom-web

    def stored(self, batch: Batch) -> int:
        """How many instances of the batch the receiver holds (searchable for ours)."""
        raise NotImplementedError


class _OurReceiver(Receiver):
    ours = True

    def stored(self, batch: Batch) -> int:
        assert self.qido is not None
        status, body = http_json(f"{self.qido}/studies?StudyInstanceUID={','.join(batch.studies)}"
                                 f"&limit={len(batch.studies)}", timeout=10)
        if status != 200:
            raise RuntimeError(f"QIDO answered {status}: {body}")
        return sum(int(row.get("00201208", {}).get("Value", [0])[0]) for row in body or [])


def _loop_label(env: dict[str, str]) -> str:
    return ", standard asyncio loop" if env.get("ARCHIVE_EVENT_LOOP") == "asyncio" else ""


class Serve(_OurReceiver):
    def __init__(self, workdir: Path, workers: int = 1, fsync: bool = True, engine: str = "asyncio",
                 build: Build = THIS_BUILD, tls: bool = False, extra_env: dict[str, str] | None = None) -> None:
        super().__init__(workdir)
        self.extra_env = dict(extra_env or {})
        self.workers = workers
        self.fsync = fsync
        self.engine = engine
        self.build = build
        self.tls = tls  # send to the DICOM TLS port, mutual TLS (a client certificate per sender)
        self.label = "serve (embedded)" + (f", {workers} SCP workers" if workers > 1 else "") + (
            "" if fsync else ", ARCHIVE_FSYNC=false") + ("" if engine == "asyncio" else f", {engine} engine") + (
            _loop_label(self.extra_env)) + (", TLS port (mutual TLS)" if tls else "") + (f" [{build.tag}]" if build.tag else "")
        self.http_port = free_port()
        http = f"http://127.0.0.1:{self.http_port}"
        self.scp_metrics = self.indexer_metrics = f"{http}/metrics"
        self.qido = f"{http}/dicom-web"
        self.tls_env: dict[str, str] = {}
        if tls:
            self._pki()

    def _pki(self) -> None:
        """A CA, the archive's certificate and one client certificate for every sender (AE titles
        BENCH0..3 and BENCHPROBE: each certificate's CN is the calling AE title it binds)."""
        import ssl

        from tests.e2e.pki import CA

        ca = CA(self.workdir / "pki")
        server = ca.issue("archive", hosts=("127.0.0.1",))
        self.tls_env = {"ARCHIVE_TLS_CERT": str(server.cert), "ARCHIVE_TLS_KEY": str(server.key),
                        "ARCHIVE_TLS_CLIENT_CA": str(ca.pem), "ARCHIVE_DICOM_TLS_PORT": str(self.dicom_port),
                        "ARCHIVE_DICOM_PORT": str(free_port())}
        self.sender_flags = ("+cf", str(ca.pem))  # the CA storescu checks our certificate against
        self.client_certs = {f"BENCH{i}": ca.issue(f"BENCH{i}") for i in range(4)}
        probe = ca.issue("BENCHPROBE")
        context = ssl.create_default_context(cafile=str(ca.pem))
        context.load_cert_chain(str(probe.cert), str(probe.key))
        self.tls_args = (context, "127.0.0.1")

    def flags_for(self, aet: str) -> tuple[str, ...]:
        """storescu's TLS options for the sender calling as ``aet`` (its own certificate)."""
        if not self.tls:
            return ()
        identity = self.client_certs[aet]
        return ("+tls", str(identity.key), str(identity.cert), *self.sender_flags)

    def start(self) -> None:
        env = {
            "ARCHIVE_DATA_DIR": str(self.workdir / "data"),
            "ARCHIVE_BIND": "127.0.0.1",
            "ARCHIVE_DICOM_PORT": str(self.dicom_port),
            "ARCHIVE_HTTP_PORT": str(self.http_port),
            "ARCHIVE_WORKERS": str(self.workers),
            "ARCHIVE_FSYNC": "true" if self.fsync else "false",
            "ARCHIVE_SCP_ENGINE": self.engine,
            **self.tls_env,  # the TLS port is dicom_port, the plain one elsewhere
            **self.extra_env,
        }
        self.workdir.mkdir(parents=True, exist_ok=True)
        proc = Proc("serve", [self.build.python, "-m", "archive.cli", "serve"], self.workdir / "serve.log", env,
                    cwd=self.build.root)
        self.procs["serve"] = proc
        proc.wait_http(f"http://127.0.0.1:{self.http_port}/readyz")
        if self.workers > 1:  # the extra SCP processes start after the parent is ready
            time.sleep(3.0)


def services_env() -> dict[str, str]:
    """The services' settings (.services.env, as the tests read it), overridden by ARCHIVE_* variables."""
    return {**_services_env(), **{k: v for k, v in os.environ.items() if k.startswith("ARCHIVE_")}}


def service_pids(services: Sequence[str]) -> dict[str, int]:
    """The running services' pids, by name, from scripts/services.sh's .services/<name>.pid."""
    pids = {}
    for service in services:
        try:
            pid = int((ROOT / ".services" / f"{service}.pid").read_text().strip())
        except (OSError, ValueError):
            continue
        if Path(f"/proc/{pid}").exists():
            pids[service] = pid
    return pids


DISTRIBUTED_NEEDS = ("ARCHIVE_OBJECT_STORE", "ARCHIVE_S3_ACCESS_KEY", "ARCHIVE_S3_SECRET_KEY",
                     "ARCHIVE_QUEUE", "ARCHIVE_CATALOG", "ARCHIVE_SEARCH")


def distributed_missing() -> list[str]:
    env = services_env()
    return [k for k in DISTRIBUTED_NEEDS if not env.get(k)]


class Distributed(_OurReceiver):
    """The three roles as separate processes, with isolated backends (tests/e2e/distributed.py)."""

    def __init__(self, workdir: Path, build: Build = THIS_BUILD, extra_env: dict[str, str] | None = None) -> None:
        super().__init__(workdir)
        self.build = build
        self.extra_env = dict(extra_env or {})
        self.label = "distributed (scp+indexer+query)" + _loop_label(self.extra_env) + (
            f" [{build.tag}]" if build.tag else "")
        self.name = "bench" + uuid.uuid4().hex[:10]
        self.ports = {"scp": free_port(), "indexer": free_port(), "query": free_port()}
        self.scp_metrics = f"http://127.0.0.1:{self.ports['scp']}/metrics"
        self.indexer_metrics = f"http://127.0.0.1:{self.ports['indexer']}/metrics"
        self.qido = f"http://127.0.0.1:{self.ports['query']}/dicom-web"
        self._backends: Any = None

    def start(self) -> None:
        from tests.e2e.distributed import Distributed as Backends

        self.workdir.mkdir(parents=True, exist_ok=True)
        self._backends = Backends(self.workdir, self.name)
        try:
            self._backends.configure()  # schema, bucket/queue/index names of our own
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # pytest's Skipped when a service is missing
            raise RuntimeError(f"distributed backends: {exc}") from None
        env = dict(self._backends.env)
        for test_only in ("ARCHIVE_STORE_TIMEOUT", "ARCHIVE_QUERY_TIMEOUT", "ARCHIVE_INDEXER_BATCH"):  # product defaults
            env.pop(test_only, None)
        env["ARCHIVE_BIND"] = "127.0.0.1"
        env.update(self.extra_env)
        for role in ("scp", "indexer", "query"):
            role_env = {**env, "ARCHIVE_HTTP_PORT": str(self.ports[role]),
                        "ARCHIVE_DICOM_PORT": str(self.dicom_port if role == "scp" else 0)}
            self.procs[role] = Proc(role, [self.build.python, "-m", "archive.cli", role],
                                    self.workdir / f"{role}.log", role_env, cwd=self.build.root)
        for role, proc in self.procs.items():
            proc.wait_http(f"http://127.0.0.1:{self.ports[role]}/readyz", timeout=120)

    def roots(self) -> dict[str, int]:
        """The roles, then the services (their CPU is part of the cost; RSS is reported per role)."""
        roots = super().roots()
        for service, pid in service_pids(("pg", "rabbitmq", "s3", "opensearch")).items():
            roots[f"service:{service}"] = pid
        return roots

    def cleanup(self) -> None:
        if self._backends is not None:
            self._backends.teardown()
        super().cleanup()


class Orthanc(Receiver):
    label = "Orthanc 1.10 (SQLite)"
    aet = "ORTHANC"

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.http_port = free_port()
        self.rest = f"http://127.0.0.1:{self.http_port}"

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "bench",
            "StorageDirectory": str(self.workdir / "storage"),
            "IndexDirectory": str(self.workdir / "index"),
            "DicomAet": self.aet,
            "DicomPort": self.dicom_port,
            "HttpPort": self.http_port,
            "DicomCheckCalledAet": False,
            "AuthenticationEnabled": False,
            "RemoteAccessAllowed": True,
            "SaveJobs": False,
            "StorageCompression": False,
            "SyncStorageArea": True,  # Orthanc >= 1.7.4 default, stated: fsync like our default
            "Plugins": [],
        }
        path = self.workdir / "orthanc.json"
        path.write_text(json.dumps(config, indent=2))
        proc = Proc("orthanc", ["Orthanc", str(path)], self.workdir / "orthanc.log", DCMTK_ENV)
        self.procs["orthanc"] = proc
        proc.wait_http(f"{self.rest}/system")

    def stored(self, batch: Batch) -> int:
        total = 0
        for study in batch.studies:
            status, body = _post_json(f"{self.rest}/tools/find",
                                      {"Level": "Instance", "Query": {"StudyInstanceUID": study}})
            total += len(body or []) if status == 200 else 0
        return total


def _post_json(url: str, payload: Any) -> tuple[int, Any]:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, None


class StoreSCP(Receiver):
    label = "DCMTK storescp (files only)"
    aet = "STORESCP"

    def start(self) -> None:
        self.out = self.workdir / "out"
        self.out.mkdir(parents=True, exist_ok=True)
        tool = shutil.which("storescp")
        if tool is None:
            raise RuntimeError("storescp is not installed (apt-get install dcmtk)")
        proc = Proc("storescp", [tool, "--fork", "-aet", self.aet, "-od", str(self.out), str(self.dicom_port)],
                    self.workdir / "storescp.log", DCMTK_ENV)
        self.procs["storescp"] = proc
        _wait_port(self.dicom_port, proc)

    def stored(self, batch: Batch) -> int:
        # storescp names files <modality>.<SOP Instance UID>
        names = {p.name for p in self.out.iterdir()}
        return sum(1 for uid in batch.sop_uids if f"CT.{uid}" in names)


def _wait_port(port: int, proc: Proc, timeout: float = 30.0) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited:\n{proc.log_tail()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"{proc.name} does not listen on {port}")


class PynetdicomSCP(StoreSCP):
    """``python -m pynetdicom storescp``: decodes each dataset and writes it as a file."""

    label = "pynetdicom 3 storescp (files only)"

    def start(self) -> None:
        self.out = self.workdir / "out"
        self.out.mkdir(parents=True, exist_ok=True)
        proc = Proc("pynetdicom", [sys.executable, "-m", "pynetdicom", "storescp", "-q", "-aet", self.aet,
                                   "-ba", "127.0.0.1", "-od", str(self.out), str(self.dicom_port)],
                    self.workdir / "pynetdicom.log")
        self.procs["pynetdicom"] = proc
        _wait_port(self.dicom_port, proc)
