"""Running the roles: start-up, the HTTP listener, and ordered graceful shutdown.

Shutdown on SIGTERM/SIGINT: stop accepting (DICOM listener), drain running
associations with a deadline, let the indexer finish its batch, close the
HTTP listener, close the backends.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import signal
import ssl
import subprocess
import sys
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass

from aiohttp import web

from archive import web as archive_web
from archive.auth import access as http_access
from archive.auth.https import server_context as https_context
from archive.compose import Backends, Events, ForwardQueues, WebhookQueues, audit_trail, indexer_batch
from archive.core.audit import AuditEvent, AuditTrail, EventKind, Outcome, Subtype
from archive.core.identity import Principal, PrincipalKind
from archive.core.ports import Backend
from archive.forward.router import Router
from archive.forward.rules_file import RulesFile
from archive.forward.worker import Forwarder
from archive.indexer.worker import Indexer
from archive.ingest.service import IngestService
from archive.query.dimse.commitment import commitment_service
from archive.query.dimse.find import AsyncioFind
from archive.query.dimse.service import QueryRetrieve, query_retrieve_service
from archive.query.forwarding import Forwarding
from archive.query.routes import add_routes
from archive.scp.access import AccessPolicy, OnRefusal, Refusal
from archive.scp.asyncio_engine import AsyncioReceiver
from archive.scp.portal import Portal
from archive.scp.pynetdicom_engine import DicomServer, DimseService, StoreSCP
from archive.scp.spool import process_spool
from archive.scp.tls import server_context as dicom_server_context, tls_args
from archive.settings import Settings

log = logging.getLogger(__name__)
DRAIN_SECONDS = 30.0


def security_configuration(settings: Settings) -> str:
    """What guards the archive, for the start-up audit record (no secrets, no patient data)."""
    aets = ",".join(settings.allowed_aets) or "any"
    networks = ",".join(str(n) for n in settings.allowed_networks) or "any"
    collector = settings.audit_syslog.split("://", 1)[0] if settings.audit_syslog else "none"
    if settings.oidc_issuer:
        http = f"OpenID Connect access tokens from {settings.oidc_issuer} and API keys"
    elif settings.http_insecure_open:
        http = "open to the network without authentication (ARCHIVE_HTTP_INSECURE_OPEN)"
    else:
        http = "loopback clients, or an API key"
    http += "; HTTPS" if settings.http_tls_cert else "; plain HTTP"
    tls = (f"TLS port {settings.dicom_tls_port}{' (mutual)' if settings.tls_client_ca else ''}"
           if settings.dicom_tls else "TLS off")
    plain = "plain port on" if settings.dicom_plain else "plain port off"
    return (f"DICOM: calling AE titles {aets}; networks {networks}; AE config {settings.ae_config or 'none'}; "
            f"{tls}; {plain}. HTTP: {http}. Audit: file {settings.audit_file}; syslog {collector}")


def audit_refusals(trail: AuditTrail, our_aet: str) -> OnRefusal:
    """The access policy's refusals as Security Alerts (PS3.15 A.5.3.11): an operation refused for
    want of permission (Use of Restricted Function) and a failed TLS handshake (Node
    Authentication). A rejected association is recorded by the engine that rejected it
    (archive.scp.audit.rejected), so not here."""
    def record(refusal: Refusal) -> None:
        if refusal.what == "association":
            return
        subtype = Subtype.NODE_AUTHENTICATION if refusal.what == "tls" else Subtype.USE_OF_RESTRICTED_FUNCTION
        status = f" (0x{refusal.status:04X})" if refusal.status is not None else ""
        trail.record(AuditEvent(EventKind.SECURITY_ALERT, Principal(PrincipalKind.AE, refusal.calling_aet,
                                                                    refusal.address),
                                Outcome.MINOR_FAILURE, subtype=subtype, service=our_aet,
                                detail=f"{refusal.what} refused: {refusal.reason}{status}"))
    return record


def _activity(trail: AuditTrail, settings: Settings, subtype: Subtype, detail: str = "") -> None:
    """Application Activity (PS3.15 A.5.3.1): the archive started or stopped, by this OS user."""
    import getpass
    import socket

    try:
        launcher = getpass.getuser()
    except Exception:  # no user name for this uid (a container)
        launcher = str(os.getuid())
    trail.record(AuditEvent(EventKind.APPLICATION_ACTIVITY, Principal(PrincipalKind.LOCAL, launcher,
                                                                      socket.gethostname()),
                            subtype=subtype, service=settings.aet, detail=detail))


async def _wait_for_signal() -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down")


async def _start_http(app: web.Application, settings: Settings, stack: AsyncExitStack, *,
                      port: int | None = None, what: str = "HTTP", context: ssl.SSLContext | None = None) -> int:
    """Serve ``app`` on ``port`` (default ARCHIVE_HTTP_PORT); HTTPS with ``context``."""
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=10, max_line_size=archive_web.MAX_REQUEST_LINE)
    await runner.setup()
    stack.push_async_callback(runner.cleanup)
    site = web.TCPSite(runner, settings.bind, settings.http_port if port is None else port, reuse_port=True,
                       ssl_context=context)
    await site.start()
    bound = int(runner.addresses[0][1])  # the bound port (ARCHIVE_HTTP_PORT=0: one the kernel chose)
    log.info(f"{what} listening", extra={"port": bound, "tls": context is not None})
    return bound


def _child_env(settings: Settings) -> dict[str, str]:
    """Children see exactly the parent's settings (CLI flags and secrets included)."""
    return os.environ | settings.to_env()


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Linux: SIGTERM this child when its parent dies, even by kill -9 (no orphans)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _forget_metrics(pid: int) -> None:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)


class Children:
    """Role processes started by `serve`/`scp`: restarted if they die, drained on stop."""

    def __init__(self, settings: Settings) -> None:
        self.env = _child_env(settings)
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.flags: dict[str, tuple[str, ...]] = {}
        self.stopping = False

    def spawn(self, role: str, *flags: str) -> None:
        proc = subprocess.Popen(
            [sys.executable, "-m", "archive.cli", role, "--worker-child", *flags],
            env=self.env, preexec_fn=_die_with_parent,
        )
        self.procs.append((role, proc))
        log.info("child started", extra={"role": role, "pid": proc.pid})

    async def supervise(self) -> None:
        while not self.stopping:
            await asyncio.sleep(1.0)
            for i, (role, proc) in enumerate(list(self.procs)):
                if proc.poll() is not None and not self.stopping:
                    log.error("child exited; restarting", extra={"role": role, "pid": proc.pid,
                                                                "returncode": proc.returncode})
                    self.procs.remove((role, proc))
                    _forget_metrics(proc.pid)
                    self.spawn(role, *self.flags.get(role, ()))

    def stop(self) -> None:
        self.stopping = True
        for _, proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for role, proc in self.procs:
            try:
                proc.wait(timeout=DRAIN_SECONDS + 5)
            except subprocess.TimeoutExpired:
                log.error("child did not stop in time; killed", extra={"role": role, "pid": proc.pid})
                proc.kill()


@dataclass(frozen=True)
class Roles:
    """What one process runs; each command has its named constructor."""

    receive: bool = False
    """The DICOM receiver (C-ECHO, C-STORE) on ARCHIVE_DICOM_PORT, with ARCHIVE_WORKERS - 1 more
    receiver processes sharing the port."""
    query_dimse: bool = False
    """C-FIND, C-MOVE, C-GET and Storage Commitment: on the receiver's port and AE when
    ``receive`` (one AE for every service), else on ARCHIVE_QUERY_DICOM_PORT."""
    query_http: bool = False
    """The query service's HTTP routes: DICOMweb (QIDO-RS, WADO-RS, STOW-RS), WADO-URI, search."""
    index: bool = False
    """The indexer: queue -> catalog and search index."""
    index_in_child: bool = False
    """Run the indexer in a supervised child process, so that it does not share the receiver's
    interpreter lock."""
    http: bool = True
    """The HTTP listener (/healthz, /readyz, /metrics, and the query routes if any)."""
    worker_child: bool = False
    """A receiver started by another one: joins its DICOM port (SO_REUSEPORT), starts no workers."""
    forward: bool = False
    """The forwarder: forward queues -> peers (ARCHIVE_ROUTING_RULES)."""
    forward_in_child: bool = False
    """`serve`: run the forwarder in a supervised child process when a rules file is set."""

    @classmethod
    def serve(cls) -> "Roles":
        """`serve`: every role, the indexer in a child process."""
        return cls(receive=True, query_dimse=True, query_http=True, index=True, index_in_child=True,
                   forward_in_child=True)

    @classmethod
    def scp(cls, *, worker_child: bool = False, with_query: bool = False) -> "Roles":
        """`scp`; ``worker_child``: one of serve's or scp's extra receivers (no HTTP listener),
        ``with_query``: also the query/retrieve services, as serve's receivers have."""
        return cls(receive=True, query_dimse=with_query, http=not worker_child, worker_child=worker_child)

    @classmethod
    def indexer(cls, *, child: bool = False) -> "Roles":
        """`indexer`; ``child``: serve's indexer process (no HTTP listener)."""
        return cls(index=True, http=not child)

    @classmethod
    def forwarder(cls, *, child: bool = False) -> "Roles":
        """`forwarder`; ``child``: serve's forwarder process (no HTTP listener)."""
        return cls(forward=True, http=not child)

    @classmethod
    def query(cls) -> "Roles":
        """`query`: the HTTP query service and the DIMSE query/retrieve services."""
        return cls(query_http=True, query_dimse=True)


def main(settings: Settings, roles: Roles) -> None:
    """Run ``roles`` to the end on the event loop ARCHIVE_EVENT_LOOP names."""
    factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    if settings.event_loop == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        loop = type(runner.get_loop())
        log.info("event loop", extra={"loop": f"{loop.__module__}.{loop.__qualname__}"})
        runner.run(run(settings, roles))


async def run(settings: Settings, roles: Roles) -> None:
    """Run ``roles`` until SIGTERM/SIGINT."""
    backends = Backends.from_settings(settings)
    # Each role migrates and watches only the backends it uses: a receiver stays ready
    # while the catalog is down, because its Success needs only object store and queue.
    needed: list[Backend] = []
    if roles.receive:
        needed += [backends.store, backends.queue]
    if roles.index:
        needed += [backends.queue, backends.catalog, backends.search]
    if roles.query_http:  # QIDO and search read catalog and index; WADO reads objects; STOW-RS ingests
        needed += [backends.catalog, backends.search, backends.store, backends.queue]
    if roles.query_dimse:
        needed += [backends.catalog, backends.store]
    if roles.forward:
        needed += [backends.store, backends.catalog]
    used = list(dict.fromkeys(needed))
    # A certificate that cannot be loaded stops the process before anything listens
    https = None
    if roles.http and settings.http_tls_cert:
        https = https_context(settings.http_tls_cert, settings.http_tls_key)
    async with AsyncExitStack() as stack:
        trail = audit_trail(settings)  # closed last: the stop record goes out after everything else
        stack.callback(trail.close)
        stack.push_async_callback(backends.close)
        for backend in used:
            await backend.migrate()
        queue = backends.queue if backends.queue in used else None
        access = http_access.Access.from_settings(settings, backends.api_keys)
        stack.push_async_callback(access.close)
        app = archive_web.base_app(used, queue, auth=http_access.middleware(access),
                                   with_metrics=settings.metrics_port is None, data_dir=settings.data_dir)
        app[archive_web.AUDIT] = trail
        forward_queues = ForwardQueues(settings)
        stack.push_async_callback(forward_queues.close)
        events = Events(settings)  # the topic exchange (RabbitMQ) and the webhooks' queues
        stack.push_async_callback(events.close)
        if roles.query_http:
            forwarding = Forwarding(backends.ledger, forward_queues, tuple(destinations(settings)))
            add_routes(app, backends.catalog, settings.query_limit, backends.search, store=backends.store,
                       ingest=IngestService(backends.store, backends.queue, settings.duplicate_policy),
                       settings=settings, audit=trail, forwarding=forwarding, events=events)

        children = Children(settings)
        portal = Portal(asyncio.get_running_loop())
        dicom = roles.receive or roles.query_dimse
        # a wrong ARCHIVE_AE_CONFIG stops here; refused operations and failed handshakes are audited
        dicom_access = AccessPolicy.from_settings(settings, audit_refusals(trail, settings.aet)) if dicom else None
        tls = dicom_tls_context(settings, dicom_access) if dicom and dicom_access is not None else None
        qr_services: list[DimseService] = []
        finder: AsyncioFind | None = None  # C-FIND on the asyncio engine
        if roles.query_dimse:
            qr = QueryRetrieve(backends.catalog, backends.store, process_spool(settings.data_dir), trail)
            qr_services.append(query_retrieve_service(qr, portal, settings, dicom_access))
            if settings.scp_engine == "asyncio" and dicom_access is not None:
                finder = AsyncioFind(qr, settings, dicom_access)
            qr_services.append(commitment_service(backends.catalog, backends.store, portal, settings, trail, dicom_access))
        store_scp: StoreSCP | None = None
        asyncio_scp: AsyncioReceiver | None = None
        qr_server: DicomServer | None = None
        if roles.receive:
            ingest = IngestService(backends.store, backends.queue, settings.duplicate_policy)
            multi = settings.workers > 1 and not roles.worker_child
            reuse_port = roles.worker_child or multi
            if settings.scp_engine == "asyncio":
                # C-ECHO/C-STORE/C-FIND associations stay with the asyncio engine; the others are
                # handed to the pynetdicom server, which then listens on no plain port of its own.
                # The TLS port is pynetdicom's (docs/security.md: why the asyncio engine does not
                # terminate TLS).
                if qr_services or tls is not None:
                    store_scp = StoreSCP(settings, ingest, portal, qr_services, access=dicom_access, audit=trail)
                    store_scp.start(listen=False)
                if settings.dicom_plain:
                    asyncio_scp = AsyncioReceiver(settings, ingest, asyncio.get_running_loop(),
                                                  handover=store_scp if qr_services else None, access=dicom_access,
                                                  audit=trail, find=finder)
                    await asyncio_scp.start(reuse_port=reuse_port)
            else:
                store_scp = StoreSCP(settings, ingest, portal, qr_services, access=dicom_access, audit=trail)
                store_scp.start(reuse_port=reuse_port, listen=settings.dicom_plain)
            if tls is not None and store_scp is not None:
                store_scp.start_tls(settings.dicom_tls_port, tls, reuse_port=reuse_port)
            if qr_services and multi:
                children.flags["scp"] = ("--with-query",)  # workers share the port and every service
            for _ in range(settings.workers - 1 if multi else 0):
                children.spawn("scp", *children.flags.get("scp", ()))
        if qr_services and not roles.receive:
            qr_server = DicomServer(settings, qr_services, role="query", access=dicom_access, audit=trail)
            if finder is not None and settings.dicom_plain:
                # C-ECHO/C-FIND associations on the asyncio engine, the others (C-MOVE, C-GET,
                # commitment) handed to the pynetdicom server; one process: a taken port is an error
                qr_server.start(listen=False)
                asyncio_scp = AsyncioReceiver(settings, None, asyncio.get_running_loop(), handover=qr_server,
                                              access=dicom_access, audit=trail, find=finder, role="query")
                await asyncio_scp.start(port=settings.query_dicom_port)
            else:
                qr_server.start(port=settings.query_dicom_port, listen=settings.dicom_plain)
            if tls is not None:
                qr_server.start_tls(settings.query_dicom_tls_port, tls)

        worker: Indexer | Forwarder | None = None
        worker_task: asyncio.Task[None] | None = None
        if roles.index and roles.index_in_child:
            children.spawn("indexer")
        elif roles.index:
            router = Router(RulesFile(settings.routing_rules, destinations(settings)), forward_queues,
                            backends.catalog) if settings.routing_rules else None
            worker = Indexer(backends.queue, backends.catalog, backends.search,
                             batch_size=indexer_batch(settings),
                             linger=settings.indexer_linger,
                             router=router, stability=backends.stability, stable_seconds=settings.study_stable_seconds,
                             events=events)
            worker_task = asyncio.create_task(worker.run(), name="indexer")
        if roles.forward_in_child and (destinations(settings) or settings.routing_rules or settings.webhooks):
            children.spawn("forwarder")  # a rule or a manual send may name any configured destination
        elif roles.forward:
            from archive import ae_config

            configured = destinations(settings)
            rules = RulesFile(settings.routing_rules, configured) if settings.routing_rules else None

            def names() -> list[str]:  # the rules may name DICOMweb URLs of their own
                return configured + list(rules.current().destinations if rules is not None else ())

            webhook_queues = WebhookQueues(settings)
            stack.push_async_callback(webhook_queues.close)
            worker = Forwarder(names, ae_config.load(settings), forward_queues, backends.store, backends.ledger,
                               settings, trail, events, webhook_queues)
            worker_task = asyncio.create_task(worker.run(), name="forwarder")
        supervisor = asyncio.create_task(children.supervise(), name="children") if children.procs else None

        if roles.http:
            level, text = access.describe()
            log.log(level, text)
            prefetch = asyncio.create_task(access.prefetch(), name="oidc-keys")  # noqa: RUF006 - awaited below
            await _start_http(app, settings, stack, context=https)
            if settings.metrics_port is not None:  # plain HTTP: for Prometheus on the cluster network
                await _start_http(archive_web.metrics_app(queue, settings.data_dir), settings, stack,
                                  port=settings.metrics_port, what="metrics")
            await prefetch
        announce = not roles.worker_child and roles.http  # one Application Activity per command, not per child
        if announce:
            _activity(trail, settings, Subtype.APPLICATION_START, security_configuration(settings))
        await _wait_for_signal()
        if announce:
            _activity(trail, settings, Subtype.APPLICATION_STOP)

        # Ordered shutdown: stop accepting and drain, then the indexers, then HTTP and backends.
        children.stopping = True
        if supervisor is not None:
            supervisor.cancel()
        draining = []  # both engines drain at once (handed-over associations are store_scp's)
        if asyncio_scp is not None:
            draining.append(asyncio_scp.stop(DRAIN_SECONDS))
        if store_scp is not None:
            draining.append(asyncio.to_thread(store_scp.stop, DRAIN_SECONDS))
        await asyncio.gather(*draining)
        if qr_server is not None:
            await asyncio.to_thread(qr_server.stop, DRAIN_SECONDS)
        await asyncio.to_thread(children.stop)
        if worker is not None and worker_task is not None:
            worker.stop()
            try:
                await asyncio.wait_for(worker_task, DRAIN_SECONDS)
            except asyncio.TimeoutError:
                worker_task.cancel()
    log.info("stopped")


def destinations(settings: Settings) -> list[str]:
    """What a rule or a manual send may name as a destination: the peers we open associations to (an
    address in ARCHIVE_PEERS or ARCHIVE_AE_CONFIG) and the DICOMweb entries (a url in ARCHIVE_AE_CONFIG)."""
    from archive import ae_config
    from archive.forward.targets import configured

    return configured(ae_config.load(settings))


def dicom_tls_context(settings: Settings, access: AccessPolicy) -> ssl.SSLContext | None:
    """The DICOM TLS port's context (None: no TLS port), after checking that every peer we reach
    over TLS has a context that loads: a wrong file stops the process at start, not a C-MOVE."""
    for entry in access.config.entries.values():
        if entry.tls is not None:
            tls_args(entry, settings)
    config = access.config
    log.info("DICOM access", extra={
        "tls": settings.dicom_tls, "plain_port": settings.dicom_plain,
        "mutual_tls": bool(settings.tls_client_ca), "ae_config": config.source or "none",
        "ae_titles": len(config.entries), "unknown_callers": "rejected" if config.restricted else "accepted"})
    return dicom_server_context(settings) if settings.dicom_tls else None


async def migrate(settings: Settings) -> None:
    backends = Backends.from_settings(settings)
    try:
        await backends.migrate()
    finally:
        await backends.close()
