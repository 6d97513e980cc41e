"""The distributed roles on the real services, isolated per test.

``Distributed`` gives one test its own S3 bucket, RabbitMQ queue (and dead-letter
queue), OpenSearch index and PostgreSQL schema, runs ``scp``, ``indexer`` and
``query`` as separate processes on their own ports, and removes what it created
afterwards (best effort). ``StreamSender`` sends a stream of small instances
from a thread and records the status of every one, so crash tests can compare
what was answered Success with what the archive holds. ``rabbitmqctl`` drives
the private RabbitMQ node of ``scripts/services.sh``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian
from pynetdicom import AE

from tests.conftest import ROOT, free_port, service_setting
from tests.e2e.harness import ArchiveProcess, http_json, verify
from tests.factories import make_ct, new_uid

log = logging.getLogger(__name__)

ROLES = ("scp", "indexer", "query")


# ---- per-test backends -------------------------------------------------------------------

def _pg_connect(url: str) -> Any:
    import psycopg

    return psycopg.connect(url, autocommit=True, connect_timeout=5)


def _s3_client(env: dict[str, str]) -> tuple[Any, str]:
    from minio import Minio

    parts = urlsplit(env["ARCHIVE_OBJECT_STORE"])
    client = Minio(parts.netloc, access_key=env["ARCHIVE_S3_ACCESS_KEY"],
                   secret_key=env["ARCHIVE_S3_SECRET_KEY"], secure=False)
    return client, parts.path.strip("/")


def object_uids(env: dict[str, str]) -> list[str]:
    """SOP Instance UIDs of the objects in the test's bucket (read straight from S3)."""
    from archive.core.uids import uid_from_key

    client, bucket = _s3_client(env)
    uids = []
    for obj in client.list_objects(bucket, prefix="instances/", recursive=True):
        uid = uid_from_key(obj.object_name)
        assert uid is not None, f"foreign key in the bucket: {obj.object_name}"
        uids.append(uid)
    return uids


def _drop_bucket(env: dict[str, str]) -> None:
    from minio.deleteobjects import DeleteObject

    client, bucket = _s3_client(env)
    if not client.bucket_exists(bucket):
        return
    names = [DeleteObject(o.object_name) for o in client.list_objects(bucket, recursive=True)]
    for error in client.remove_objects(bucket, names):
        log.warning("could not delete %s: %s", error.name, error.message)
    client.remove_bucket(bucket)


def _drop_queues(url: str, names: list[str]) -> None:
    import aio_pika

    async def go() -> None:
        connection = await aio_pika.connect(url, timeout=5)
        async with connection:
            for name in names:
                channel = await connection.channel()
                try:
                    await channel.queue_delete(name)
                except Exception as exc:  # absent, or declared differently: nothing to do
                    log.debug("queue %s: %s", name, exc)

    asyncio.run(asyncio.wait_for(go(), 15))


def _drop_index(search: str, index: str) -> None:
    for path in (f"/{index}", f"/{index}.studies", f"/_index_template/{index}-template"):
        request = urllib.request.Request(f"{search.rstrip('/')}{path}", method="DELETE")
        try:
            urllib.request.urlopen(request, timeout=10).close()
        except urllib.error.HTTPError as exc:
            if exc.code != 404:
                raise


def schema_tables(catalog_url: str, schema: str) -> set[str]:
    with _pg_connect(catalog_url) as conn:
        rows = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s", (schema,)
        ).fetchall()
    return {r[0] for r in rows}


@dataclass
class Distributed:
    """Isolated backends plus the three role processes of one test."""

    tmp_path: Path
    name: str
    env: dict[str, str] = field(default_factory=dict)
    base_catalog: str = ""
    procs: dict[str, ArchiveProcess] = field(default_factory=dict)
    extra: list[ArchiveProcess] = field(default_factory=list)
    forward_destinations: tuple[str, ...] = ()  # AE titles whose forward queues the teardown drops

    @property
    def scp(self) -> ArchiveProcess:
        return self.procs["scp"]

    @property
    def indexer(self) -> ArchiveProcess:
        return self.procs["indexer"]

    @property
    def query(self) -> ArchiveProcess:
        return self.procs["query"]

    def configure(self) -> None:
        store = service_setting("ARCHIVE_OBJECT_STORE")
        access = service_setting("ARCHIVE_S3_ACCESS_KEY")
        secret = service_setting("ARCHIVE_S3_SECRET_KEY")
        queue = service_setting("ARCHIVE_QUEUE")
        self.base_catalog = service_setting("ARCHIVE_CATALOG")
        search = service_setting("ARCHIVE_SEARCH")
        s3 = urlsplit(store)
        self.tmp_path.mkdir(parents=True, exist_ok=True)
        # The schema exists before any process starts; every connection of the
        # catalog adapter gets it as search_path through libpq's `options`.
        with _pg_connect(self.base_catalog) as conn:
            conn.execute(f'CREATE SCHEMA "{self.name}"')
        sep = "&" if "?" in self.base_catalog else "?"
        catalog = f"{self.base_catalog}{sep}options={quote(f'-csearch_path={self.name}', safe='')}"
        self.env = {
            "ARCHIVE_DATA_DIR": str(self.tmp_path / "data"),
            "ARCHIVE_OBJECT_STORE": f"s3://{s3.netloc}/{self.name}",
            "ARCHIVE_S3_ACCESS_KEY": access,
            "ARCHIVE_S3_SECRET_KEY": secret,
            "ARCHIVE_QUEUE": queue,
            "ARCHIVE_QUEUE_NAME": f"{self.name}.index",
            "ARCHIVE_CATALOG": catalog,
            "ARCHIVE_SEARCH": search,
            "ARCHIVE_SEARCH_INDEX": self.name,
            "ARCHIVE_STORE_TIMEOUT": "20",
            "ARCHIVE_QUERY_TIMEOUT": "20",
            "ARCHIVE_INDEXER_BATCH": "50",
        }

    def process(self, role: str, label: str | None = None) -> ArchiveProcess:
        label = label or role
        dicom = free_port() if role in ("scp", "query") else 0
        env = dict(self.env)
        if role == "query":  # its C-FIND/C-MOVE/C-GET port
            env["ARCHIVE_QUERY_DICOM_PORT"] = str(dicom)
        return ArchiveProcess(role, env, self.tmp_path / f"{label}.log", dicom, free_port())

    def start(self, timeout: float = 60.0) -> "Distributed":
        """Start the three roles at once (as pods would) and wait until all are ready."""
        for role in ROLES:
            self.procs[role] = self.process(role).start(wait_ready=False)
        for role in ROLES:
            self.procs[role].wait_ready(timeout)
        return self

    def another_scp(self, label: str) -> ArchiveProcess:
        proc = self.process("scp", label).start()
        self.extra.append(proc)
        return proc

    def restart(self, role: str) -> ArchiveProcess:
        return restart(self.procs[role])

    def logs(self) -> str:
        return "\n".join(f"---- {p.command} {p.log_path.name} ----\n{p.log_tail(30)}"
                         for p in [*self.procs.values(), *self.extra])

    def stop(self) -> None:
        print(self.logs())  # pytest shows it for failed tests only
        for proc in [*self.extra, *self.procs.values()]:
            try:
                proc.stop(timeout=20)
            except Exception:
                proc.kill9()

    def teardown(self) -> None:
        """Remove the queue, index, bucket and schema this test created (best effort)."""
        if not self.env:
            return
        name = self.env["ARCHIVE_QUEUE_NAME"]
        forward = [f"{name}.forward.{aet}{dead}" for aet in self.forward_destinations for dead in ("", ".dead")]
        steps = (
            ("queues", lambda: _drop_queues(self.env["ARCHIVE_QUEUE"], [name, f"{name}.dead", *forward])),
            ("index", lambda: _drop_index(self.env["ARCHIVE_SEARCH"], self.name)),
            ("bucket", lambda: _drop_bucket(self.env)),
            ("schema", self._drop_schema),
        )
        for what, step in steps:
            try:
                step()
            except Exception as exc:
                log.warning("teardown of %s %s failed: %s", what, self.name, exc)

    def _drop_schema(self) -> None:
        with _pg_connect(self.base_catalog) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{self.name}" CASCADE')


def restart(proc: ArchiveProcess) -> ArchiveProcess:
    """Start a process again on the same ports and data after it stopped or was killed."""
    assert proc.proc is not None and proc.proc.poll() is not None, f"{proc.command} still runs"
    proc.proc = None
    deadline = time.monotonic() + 15
    while True:  # the killed process's port may linger for a moment
        try:
            return proc.start(timeout=60)
        except RuntimeError:
            if time.monotonic() > deadline:
                raise
            proc.proc = None
            time.sleep(0.5)


def verify_repair(env: dict[str, str]) -> dict[str, Any]:
    """``verify --json --repair``: re-queue orphaned objects; returns the report."""
    result = subprocess.run(
        [sys.executable, "-m", "archive.cli", "verify", "--json", "--repair"],
        env={**os.environ, **env}, capture_output=True, text=True, cwd=ROOT, timeout=120,
    )
    try:
        report: dict[str, Any] = json.loads(result.stdout)
    except ValueError:
        raise AssertionError(f"verify --repair printed no JSON: {result.stdout}\n{result.stderr}") from None
    return report


def verify_until_consistent(env: dict[str, str], timeout: float = 30.0) -> dict[str, Any]:
    """Run ``verify`` until it exits 0 (the indexer may still be catching up)."""
    deadline = time.monotonic() + timeout
    while True:
        code, report = verify(env)
        if code == 0:
            assert report["consistent"], report
            return report
        if time.monotonic() > deadline:
            raise AssertionError(f"verify not consistent after {timeout} s: {report}")
        time.sleep(1.0)


@contextmanager
def distributed(tmp_path: Path, name: str, *, start: bool = True) -> Iterator[Distributed]:
    """An isolated distributed archive; ``name`` must be a short lowercase identifier."""
    env = Distributed(tmp_path, name)
    try:
        env.configure()
        if start:
            env.start()
        yield env
    finally:
        env.stop()
        env.teardown()


# ---- QIDO helpers --------------------------------------------------------------------------

def qido_instance_uids(base_http: str, study_uid: str, page: int = 500) -> list[str]:
    """Every SOP Instance UID QIDO lists for a study (paged; duplicates kept)."""
    uids: list[str] = []
    offset = 0
    for _ in range(100):
        status, body = http_json(f"{base_http}/dicom-web/studies/{study_uid}/instances"
                                 f"?limit={page}&offset={offset}", timeout=10)
        assert status == 200, body
        uids += [row["00080018"]["Value"][0] for row in body or []]
        if len(body or []) < page:
            return uids
        offset += page
    raise AssertionError("QIDO paging did not end")


# ---- a recording sender --------------------------------------------------------------------

def with_meta(ds: Dataset, transfer_syntax: str = ExplicitVRLittleEndian) -> Dataset:
    """pynetdicom 3 picks the presentation context from file_meta.TransferSyntaxUID."""
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = UID(transfer_syntax)
    return ds


@dataclass
class Sent:
    uid: str
    status: int  # -1: no answer (association aborted or timed out)
    started: float
    finished: float


class StreamSender(threading.Thread):
    """Send small CT instances of one study until ``count`` or stopped; record each status.

    One association carries many instances; when it is aborted (the receiver died)
    the sender reconnects only if ``reconnect`` is set, otherwise it ends. Every
    answer is kept in ``sent`` in sending order.
    """

    def __init__(self, port: int, count: int, *, reconnect: bool = False, pause: float = 0.0,
                 study_uid: str | None = None, patient_id: str = "CRASH-1") -> None:
        super().__init__(daemon=True)
        self.port = port
        self.count = count
        self.reconnect = reconnect
        self.pause = pause
        self.study_uid = study_uid or new_uid()
        self.series_uid = new_uid()
        self.patient_id = patient_id
        self.sent: list[Sent] = []
        self.errors: list[str] = []
        self._halt = threading.Event()
        self._lock = threading.Lock()

    def stop(self) -> None:
        self._halt.set()

    def successes(self) -> list[str]:
        with self._lock:
            return [s.uid for s in self.sent if s.status == 0x0000]

    def answered(self) -> list[Sent]:
        with self._lock:
            return list(self.sent)

    def _dataset(self, n: int) -> Any:
        return with_meta(make_ct(study_uid=self.study_uid, series_uid=self.series_uid,
                                 patient_id=self.patient_id, instance_number=n + 1, seed=n, size=16))

    def run(self) -> None:
        try:
            self._run()
        except Exception as exc:  # reported through ``errors``; the test decides
            self.errors.append(f"sender crashed: {type(exc).__name__}: {exc}")

    def _run(self) -> None:
        ae = AE(ae_title="CRASHSCU")
        ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian])
        ae.acse_timeout = 10
        ae.dimse_timeout = 40
        ae.network_timeout = 40
        n = 0
        while n < self.count and not self._halt.is_set():
            assoc = ae.associate("127.0.0.1", self.port, ae_title="ARCHIVE")
            if not assoc.is_established:
                self.errors.append("association not established")
                if not self.reconnect:
                    return
                time.sleep(0.2)
                continue
            raw = assoc.dul.socket.socket if assoc.dul.socket is not None else None
            if raw is not None:  # else Nagle + delayed ACK stall each C-STORE ~40 ms
                raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                while n < self.count and not self._halt.is_set() and assoc.is_established:
                    ds = self._dataset(n)
                    started = time.monotonic()
                    try:
                        answer = assoc.send_c_store(ds)
                        status = int(answer.Status) if "Status" in answer else -1
                    except Exception as exc:  # aborted under us
                        self.errors.append(f"{type(exc).__name__}: {exc}")
                        status = -1
                    with self._lock:
                        self.sent.append(Sent(str(ds.SOPInstanceUID), status, started, time.monotonic()))
                    n += 1
                    if status == -1:  # no answer: the association is gone or useless
                        assoc.abort()
                        break
                    if self.pause:
                        time.sleep(self.pause)
            finally:
                if assoc.is_established:
                    assoc.release()
            if not self.reconnect:
                return


# ---- RabbitMQ node control ------------------------------------------------------------------

# The node name scripts/services.sh gives its private RabbitMQ (renamed with a port offset).
_OFFSET = int(os.environ.get("SERVICES_PORT_OFFSET", "0") or 0)
RABBIT_NODE = f"archive{_OFFSET}@localhost" if _OFFSET else "archive@localhost"
RABBIT_BIN = "/usr/lib/rabbitmq/bin/rabbitmqctl"


def _rabbit_dir() -> Path:
    return Path(os.environ.get("SERVICES_DIR", ROOT / ".services")) / "rabbitmq"


def _rabbit_env() -> dict[str, str]:
    """The environment scripts/services.sh gives its CLI tools (rabbit_env)."""
    base = _rabbit_dir()
    return {
        **os.environ,
        "HOME": str(base / "home"),  # the Erlang cookie
        "RABBITMQ_CONF_ENV_FILE": str(base / "rabbitmq-env.conf"),
        "RABBITMQ_CONFIG_FILE": str(base / "rabbitmq.conf"),
        "RABBITMQ_ADVANCED_CONFIG_FILE": str(base / "advanced.config"),
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(base / "enabled_plugins"),
        "RABBITMQ_NODENAME": RABBIT_NODE,
        "ERL_EPMD_ADDRESS": "127.0.0.1",
        "RABBITMQ_CTL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
    }


def rabbitmqctl(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    if not Path(RABBIT_BIN).exists() or not (_rabbit_dir() / "home").exists():
        from tests.conftest import missing

        missing("the private RabbitMQ node of scripts/services.sh is not here")
    return subprocess.run([RABBIT_BIN, "-n", RABBIT_NODE, *args], env=_rabbit_env(),
                          capture_output=True, text=True, timeout=timeout)
