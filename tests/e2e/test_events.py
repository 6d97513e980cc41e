"""Events: signed webhooks from `serve` (a receiver that fails at first: retried, nothing lost), and
the RabbitMQ topic exchange `archive.events` from the distributed roles."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread

from tests.conftest import free_port
from tests.e2e.distributed import distributed
from tests.e2e.harness import metric, serve, wait_until
from tests.e2e.senders import storescu
from tests.e2e.test_forwarding import Destination, _cli, _rules, _series

pytestmark = pytest.mark.dcmtk
SECRET = "hook-secret"


class Hook:
    """A webhook receiver on loopback: answers 503 to the first ``fail`` requests, then 204."""

    def __init__(self, fail: int = 2) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.fail = fail
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                hook.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(503 if len(hook.requests) <= hook.fail else 204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def delivered(self) -> list[dict[str, Any]]:
        """The events of the requests answered 2xx (in order)."""
        out = []
        for n, (_, body) in enumerate(self.requests, start=1):
            if n > self.fail:
                out += json.loads(body)["events"]
        return out

    def stop(self) -> None:
        self.server.shutdown()


def test_webhooks_are_signed_retried_and_carry_every_event(tmp_path: Path) -> None:
    hook = Hook(fail=2)
    dest = Destination(tmp_path / "pacs").start()
    rules = _rules(tmp_path, "rules:\n  - name: all\n    destinations: [PACS]\n")
    archive = serve(tmp_path, ARCHIVE_WEBHOOKS=hook.url, ARCHIVE_WEBHOOK_SECRET=SECRET, ARCHIVE_ROUTING_RULES=str(rules),
                    ARCHIVE_PEERS=f"PACS@127.0.0.1:{dest.port}", ARCHIVE_STUDY_STABLE_SECONDS="1").start()
    try:
        files, uids = _series(tmp_path, "CT", 3)
        study = str(dcmread(files[0]).StudyInstanceUID)
        assert storescu(archive.dicom_port, files).returncode == 0

        def kinds() -> dict[str, list[dict[str, Any]]]:
            out: dict[str, list[dict[str, Any]]] = {}
            for event in hook.delivered():
                out.setdefault(event["type"], []).append(event)
            return out

        def complete() -> bool:
            k = kinds()
            return ({"instance.stored", "study.stable", "forward.succeeded"} <= set(k)
                    and {e["instance"] for e in k["instance.stored"]} == set(uids)
                    and sum(e["instances"] for e in k["forward.succeeded"]) == 3)

        wait_until(complete, timeout=90)
        assert sorted(e["instance"] for e in kinds()["instance.stored"]) == sorted(uids)  # once each, once 2xx
        assert {e["action"] for e in kinds()["instance.stored"]} == {"created"}
        assert [e["study"] for e in kinds()["study.stable"]] == [study]
        assert sum(e["instances"] for e in kinds()["forward.succeeded"]) == 3
        assert {e["destination"] for e in kinds()["forward.succeeded"]} == {"PACS"}
        # the first two requests failed (503) and their events came again: every request signed
        for headers, body in hook.requests:
            expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
            assert headers["x-archive-signature"] == expected
        assert int(hook.requests[-1][0]["x-archive-delivery"]) >= 1
        assert metric(archive, "archive_webhook_deliveries_total", outcome="failed") >= 2
        # a delete is an event too; no patient data in any event
        assert _cli(archive, "delete", study).returncode == 0  # as DELETE /dicom-web/studies/{study}
        wait_until(lambda: "study.deleted" in kinds(), timeout=30)
        (deleted,) = kinds()["study.deleted"]
        assert (deleted["study"], deleted["instances"]) == (study, 3)
        assert all(b"PAT-1" not in body and b"Doe" not in body for _, body in hook.requests)
    finally:
        archive.stop()
        dest.stop()
        hook.stop()


@pytest.mark.services
def test_the_topic_exchange_carries_events_by_routing_key(tmp_path: Path, unique: str) -> None:
    import aio_pika

    with distributed(tmp_path / "dist", unique, start=False) as dist:
        dist.env["ARCHIVE_STUDY_STABLE_SECONDS"] = "1"
        received: list[tuple[str, dict[str, Any]]] = []
        loop = asyncio.new_event_loop()
        ready = threading.Event()
        stop = asyncio.Event()

        async def subscribe() -> None:
            connection = await aio_pika.connect(dist.env["ARCHIVE_QUEUE"])
            async with connection:
                channel = await connection.channel()
                exchange = await channel.declare_exchange("archive.events", aio_pika.ExchangeType.TOPIC, durable=True)
                queue = await channel.declare_queue(exclusive=True)
                await queue.bind(exchange, routing_key="study.*")
                await queue.bind(exchange, routing_key="instance.stored")

                async def on(message: aio_pika.abc.AbstractIncomingMessage) -> None:
                    async with message.process():
                        received.append((message.routing_key or "", json.loads(message.body)))

                await queue.consume(on)
                ready.set()
                await stop.wait()

        thread = threading.Thread(target=lambda: loop.run_until_complete(subscribe()), daemon=True)
        thread.start()
        try:
            assert ready.wait(20)
            dist.start()
            files, uids = _series(tmp_path, "MR", 4)
            study = str(dcmread(files[0]).StudyInstanceUID)
            assert storescu(dist.scp.dicom_port, files).returncode == 0

            def mine(key: str) -> list[dict[str, Any]]:
                return [body for k, body in list(received) if k == key and body["study"] == study]

            wait_until(lambda: len(mine("instance.stored")) >= 4 and mine("study.stable"), timeout=60)
            assert sorted({e["instance"] for e in mine("instance.stored")}) == sorted(uids)
            assert [e["type"] for e in mine("study.stable")] == ["study.stable"]
        finally:
            loop.call_soon_threadsafe(stop.set)
            thread.join(10)
