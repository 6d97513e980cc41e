"""Running the roles: start-up, the HTTP listener, and ordered graceful shutdown.

Shutdown on SIGTERM/SIGINT: stop accepting (DICOM listener), drain running
associations with a deadline, let the indexer finish its batch, close the
HTTP listener, close the backends.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
from contextlib import AsyncExitStack

from aiohttp import web

from archive import web as archive_web
from archive.compose import Backends
from archive.indexer.worker import Indexer
from archive.ingest.service import IngestService
from archive.query.app import add_routes
from archive.scp.portal import Portal
from archive.scp.server import StoreSCP
from archive.settings import Settings

log = logging.getLogger(__name__)
DRAIN_SECONDS = 30.0


async def _wait_for_signal() -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down")


async def _start_http(app: web.Application, settings: Settings, stack: AsyncExitStack) -> int:
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=10)
    await runner.setup()
    stack.push_async_callback(runner.cleanup)
    site = web.TCPSite(runner, settings.bind, settings.http_port, reuse_port=True)
    await site.start()
    port = int(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]
    log.info("HTTP listening", extra={"port": port})
    return port


def _spawn_scp_workers(count: int, settings: Settings) -> list[subprocess.Popen[bytes]]:
    """Extra SCP processes sharing the DICOM port through SO_REUSEPORT."""
    env = os.environ.copy()
    env.update({
        "ARCHIVE_DATA_DIR": str(settings.data_dir),
        "ARCHIVE_OBJECT_STORE": settings.object_store,
        "ARCHIVE_QUEUE": settings.queue,
        "ARCHIVE_CATALOG": settings.catalog,
        "ARCHIVE_SEARCH": settings.search,
        "ARCHIVE_AET": settings.aet,
        "ARCHIVE_BIND": settings.bind,
        "ARCHIVE_DICOM_PORT": str(settings.dicom_port),
        "ARCHIVE_WORKERS": "1",
    })
    return [
        subprocess.Popen([sys.executable, "-m", "archive.cli", "scp", "--worker-child"], env=env)
        for _ in range(count)
    ]


def _stop_children(children: list[subprocess.Popen[bytes]]) -> None:
    for child in children:
        child.send_signal(signal.SIGTERM)
    for child in children:
        try:
            child.wait(timeout=DRAIN_SECONDS + 5)
        except subprocess.TimeoutExpired:
            child.kill()


async def run(settings: Settings, *, scp: bool, indexer: bool, query: bool, http: bool = True,
              reuse_port: bool = False, spawn_workers: bool = True) -> None:
    """Run the chosen roles in this process until SIGTERM/SIGINT."""
    backends = Backends.from_settings(settings)
    async with AsyncExitStack() as stack:
        stack.push_async_callback(backends.close)
        await backends.migrate()
        used = [backends.catalog, backends.search] if query and not (scp or indexer) else backends.all()
        app = archive_web.base_app(used)
        if query:
            add_routes(app, backends.catalog, settings.query_limit)

        store_scp: StoreSCP | None = None
        children: list[subprocess.Popen[bytes]] = []
        if scp:
            ingest = IngestService(backends.store, backends.queue, settings.duplicate_policy)
            store_scp = StoreSCP(settings, ingest, Portal(asyncio.get_running_loop()))
            multi = settings.workers > 1 and spawn_workers
            store_scp.start(reuse_port=reuse_port or multi)
            if multi:
                children = _spawn_scp_workers(settings.workers - 1, settings)

        worker: Indexer | None = None
        worker_task: asyncio.Task[None] | None = None
        if indexer:
            worker = Indexer(backends.queue, backends.catalog, backends.search, batch_size=settings.indexer_batch)
            worker_task = asyncio.create_task(worker.run(), name="indexer")

        if http:
            await _start_http(app, settings, stack)
        await _wait_for_signal()

        # Ordered shutdown: stop accepting and drain, then the indexer, then HTTP and backends.
        if store_scp is not None:
            await asyncio.to_thread(store_scp.stop, DRAIN_SECONDS)
        if children:
            await asyncio.to_thread(_stop_children, children)
        if worker is not None and worker_task is not None:
            worker.stop()
            try:
                await asyncio.wait_for(worker_task, DRAIN_SECONDS)
            except asyncio.TimeoutError:
                worker_task.cancel()
    log.info("stopped")


async def migrate(settings: Settings) -> None:
    backends = Backends.from_settings(settings)
    try:
        await backends.migrate()
    finally:
        await backends.close()
