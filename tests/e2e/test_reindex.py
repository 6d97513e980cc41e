"""`dicom-archive reindex` against a running `serve`: the catalog's instance rows and the search
documents are wiped (derived data lost), then rebuilt from the object store while DCMTK storescu
keeps sending. Everything stored is found again, a delete cut short is not brought back, the
change feed, API keys and tombstones are kept and no feed entry is written for a rebuilt instance,
verify agrees; a reindex killed midway resumes where it left off."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from pydicom import dcmread

from archive.adapters.fts5_search import Fts5Search
from archive.core.uids import object_key
from tests.e2e.harness import ArchiveProcess, http_json, serve, verify, wait_until
from tests.e2e.senders import storescu
from tests.e2e.test_forwarding import _cli, _series

pytestmark = pytest.mark.dcmtk


def _count(archive: ArchiveProcess, study: str) -> int:
    status, body = http_json(f"{archive.http}/dicom-web/studies/{study}/instances")
    return len(body or []) if status == 200 else 0


def _feed(archive: ArchiveProcess) -> list[dict[str, object]]:
    return http_json(f"{archive.http}/api/changes?limit=1000")[1]["changes"]


def _wipe(data: Path) -> None:
    """The derived data lost: every instance, series, study and patient row, every search document."""
    with sqlite3.connect(data / "catalog.db") as con:
        for table in ("instances", "series", "studies", "patients"):
            con.execute(f"DELETE FROM {table}")
    search = Fts5Search(data / "search.db")

    async def clear() -> None:
        ids = [i async for i in search.ids()]
        await search.delete(ids)
        await search.close()

    asyncio.run(clear())


def _reindex(archive: ArchiveProcess, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "archive.cli", "reindex", *args], env={**os.environ, **archive.env},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_reindex_rebuilds_online_keeps_what_is_not_derived_and_resumes(tmp_path: Path) -> None:
    archive = serve(tmp_path).start()
    data = Path(archive.env["ARCHIVE_DATA_DIR"])
    try:
        studies = [_series(tmp_path, "CT", 10) for _ in range(4)]
        assert storescu(archive.dicom_port, [f for files, _ in studies for f in files]).returncode == 0
        uids = {str(dcmread(files[0]).StudyInstanceUID): set(u) for files, u in studies}
        for study in uids:
            wait_until(lambda: _count(archive, study) == 10, timeout=30)
        key = _cli(archive, "api-key", "create", "script", "--role", "reader").stdout.strip()
        # a delete cut short: the study's catalog rows and tombstones are there, one object is back
        deleted = next(iter(uids))
        kept = data / "objects" / object_key(sorted(uids[deleted])[0])
        shutil.copy(kept, tmp_path / "kept.dcm")
        assert _cli(archive, "delete", deleted).returncode == 0
        kept.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(tmp_path / "kept.dcm", kept)
        feed_before = _feed(archive)
        _wipe(data)
        assert all(_count(archive, study) == 0 for study in uids)

        sender_files, sender_uids = _series(tmp_path, "MR", 15)
        sending = threading.Thread(target=lambda: storescu(archive.dicom_port, sender_files))
        sending.start()  # ingest goes on during the rebuild
        run = _reindex(archive, "--batch", "7")
        out, err = run.communicate(timeout=300)
        sending.join(60)
        assert run.returncode == 0, err
        words = out.split()
        indexed, objects = int(words[1]), int(words[3])  # "reindexed N of M objects ..."
        assert 30 <= indexed <= 45 and objects == indexed + 1 and "1 tombstoned" in out, out  # + those sent meanwhile
        for study, members in uids.items():
            if study != deleted:
                assert _count(archive, study) == 10, study
        assert _count(archive, deleted) == 0  # the tombstone keeps it out
        new_study = str(dcmread(sender_files[0]).StudyInstanceUID)
        wait_until(lambda: _count(archive, new_study) == 15, timeout=30)
        # the feed: entries before, plus "created" for the instances sent meanwhile only
        feed_after = _feed(archive)
        assert feed_after[:len(feed_before)] == feed_before
        added = feed_after[len(feed_before):]
        assert {(c["action"], c["instance"]) for c in added} == {("created", u) for u in sender_uids}
        assert http_json(f"{archive.http}/dicom-web/studies", headers={"Authorization": f"Bearer {key}"})[0] == 200
        # verify: the cut-short delete's object is the one leftover it names (repair finishes that delete)
        code, report = verify(archive.env)
        assert report["catalog_instances"] == report["search_documents"] == 45, report

        # killed midway, then resumed
        _wipe(data)
        run = _reindex(archive, "--batch", "2")
        state = data / "reindex.json"
        wait_until(lambda: state.exists(), timeout=60, interval=0.01)
        run.send_signal(signal.SIGKILL)
        run.wait(30)
        after = json.loads(state.read_text())["after"]
        resumed = _reindex(archive)
        out, err = resumed.communicate(timeout=300)
        assert resumed.returncode == 0 and f"resumed after {after}" in out, (out, err)
        assert not state.exists()
        for study in [*uids, new_study]:
            if study != deleted:
                assert _count(archive, study) in (10, 15), study
        wait_until(lambda: verify(archive.env)[1]["catalog_instances"] == 45, timeout=30)
    finally:
        archive.stop()
