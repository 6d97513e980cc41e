"""Forwarding on the distributed roles: the indexer queues jobs on RabbitMQ (one quorum queue per
destination), a separate `forwarder` process sends them to DCMTK storescp, the ledger is in
PostgreSQL and the query role reports it (GET /api/forwarding)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.distributed import distributed
from tests.e2e.harness import http_json, wait_until
from tests.e2e.senders import storescu
from tests.e2e.test_forwarding import Destination, _rules, _series

pytestmark = [pytest.mark.services, pytest.mark.dcmtk]


def test_forwarder_role_on_rabbitmq_and_postgresql(tmp_path: Path, unique: str) -> None:
    dest = Destination(tmp_path / "pacs").start()
    rules = _rules(tmp_path, "rules:\n  - name: ct\n    match: {Modality: CT}\n    destinations: [PACS]\n")
    with distributed(tmp_path / "dist", unique, start=False) as dist:
        dist.forward_destinations = ("PACS",)
        dist.env.update({"ARCHIVE_ROUTING_RULES": str(rules), "ARCHIVE_PEERS": f"PACS@127.0.0.1:{dest.port}",
                         "ARCHIVE_STUDY_STABLE_SECONDS": "1"})
        dist.start()
        forwarder = dist.process("forwarder").start()
        dist.extra.append(forwarder)
        try:
            ct, ct_uids = _series(tmp_path, "CT", 12)
            mr, _ = _series(tmp_path, "MR", 3)
            assert storescu(dist.scp.dicom_port, ct + mr).returncode == 0
            wait_until(lambda: set(dest.received()) == set(ct_uids), timeout=90)
            received = dest.received()
            assert all(n == 1 for n in received.values()) and len(received) == 12, received

            def report() -> dict[str, object] | None:
                status, body = http_json(f"{dist.query.http}/api/forwarding?limit=100")
                return body if status == 200 and len(body["forwards"]) == 12 else None

            body = wait_until(report, timeout=30)
            assert {f["outcome"] for f in body["forwards"]} == {"sent"}  # type: ignore[index, union-attr]
            assert body["destinations"] == [{"destination": "PACS", "ready": 0, "dead": 0}]  # type: ignore[index]
            # the change feed in PostgreSQL says both studies became stable
            def stable() -> list[dict[str, object]]:
                feed = http_json(f"{dist.query.http}/api/changes?limit=100")[1]["changes"]
                return [c for c in feed if c["action"] == "stable"]

            wait_until(lambda: len(stable()) == 2, timeout=30)
            assert len({c["study"] for c in stable()}) == 2
        finally:
            dest.stop()
