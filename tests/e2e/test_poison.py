"""A message that can never be indexed ends in the dead-letter queue; the rest go on."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

from archive.adapters.sqlite_queue import SqliteQueue
from tests.e2e.harness import ROOT, http_json, serve, wait_until
from tests.e2e.senders import pynetdicom_store
from tests.factories import make_ct


def test_poison_message_is_dead_lettered(tmp_path: Path) -> None:
    proc = serve(tmp_path, ARCHIVE_DELIVERY_LIMIT="2").start()
    try:
        queue = SqliteQueue(Path(proc.env["ARCHIVE_DATA_DIR"]) / "queue.db")

        async def publish() -> None:
            await queue.migrate()
            await queue.publish(b'{"version": 1, "key": "instances/../../etc/passwd"}')
            await queue.close()

        asyncio.run(publish())
        ds = make_ct(patient_id="AFTER-POISON")
        assert pynetdicom_store(proc.dicom_port, [ds]) == [0]
        wait_until(lambda: http_json(f"{proc.http}/dicom-web/studies?PatientID=AFTER-POISON")[1])

        def dead() -> dict:
            out = subprocess.run([sys.executable, "-m", "archive.cli", "dead-letters", "--json"],
                                 env={**os.environ, **proc.env}, capture_output=True, text=True, cwd=ROOT)
            assert out.returncode == 0, out.stderr
            return json.loads(out.stdout)

        report = wait_until(lambda: (r := dead())["dead"] == 1 and r, timeout=30)
        assert report["messages"][0]["reason"]
        # what a dashboard or an alert on dead letters sees (read from the queue at the scrape)
        with urllib.request.urlopen(f"{proc.http}/metrics") as response:
            text = response.read().decode()
        assert re.search(r"^archive_queue_dead_messages 1\.0$", text, re.M), text
        assert re.search(r"^archive_queue_ready_messages 0\.0$", text, re.M), text

        # replay (as an operator would once the cause is fixed): back to the indexer, which
        # still cannot index this one, so it is dead-lettered again after the delivery limit
        out = subprocess.run([sys.executable, "-m", "archive.cli", "dead-letters", "--replay", "--json"],
                             env={**os.environ, **proc.env}, capture_output=True, text=True, cwd=ROOT)
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["replayed"] == 1
        wait_until(lambda: dead()["dead"] == 1, timeout=30)
    finally:
        assert proc.stop() == 0
