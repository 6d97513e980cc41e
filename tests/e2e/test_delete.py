"""Delete and the change feed end to end: `serve` (embedded) and the distributed roles.

Instances go in by C-STORE (pynetdicom); an admin deletes the study over HTTP (a reader's or a
writer's API key gets 403); then QIDO-RS, C-FIND, the search API and WADO no longer find it, its
objects are gone, the change feed lists created ... then deleted, Storage Commitment answers
0x0112, the audit trail holds DICOM Study Deleted (110105); an old index message published again
is dropped (the tombstone), a re-send after the delete is found again; the feed read across a
restart continues without gap or repeat.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind  # type: ignore[attr-defined]

from archive.compose import message_queue
from archive.core.models import IndexMessage
from archive.settings import Settings
from tests.e2e.auth_client import call
from tests.e2e.distributed import Distributed, distributed, object_uids, restart, verify_until_consistent
from tests.e2e.harness import ROOT, ArchiveProcess, serve, wait_until
from tests.e2e.senders import pynetdicom_store
from tests.e2e.test_commitment import Reports, _action_information, _request
from tests.factories import make_ct, make_message, new_uid


@dataclass
class Archive:
    """One archive under test, embedded or distributed: where to store, query, and what to run."""

    kind: str
    env: dict[str, str]
    store_port: int  # C-STORE
    query_port: int  # C-FIND, Storage Commitment
    http: str
    data_dir: Path
    keys: dict[str, str] = field(default_factory=dict)  # role -> API key
    serve: ArchiveProcess | None = None
    cluster: Distributed | None = None

    def objects(self) -> set[str]:
        """SOP Instance UIDs with an object in the object store."""
        if self.cluster is not None:
            return set(object_uids(self.env))
        root = self.data_dir / "objects"
        return {p.name[:-4] for p in root.rglob("*.dcm")} if root.exists() else set()

    def logs(self) -> str:
        if self.serve is not None:
            return self.serve.log_path.read_text(errors="replace")
        assert self.cluster is not None
        return self.cluster.indexer.log_path.read_text(errors="replace")

    def restart(self) -> None:
        """Stop and start the process(es) that hold the catalog and answer HTTP."""
        procs = [self.serve] if self.serve is not None else [self.cluster.indexer, self.cluster.query]  # type: ignore[union-attr]
        for proc in procs:
            assert proc is not None
            proc.stop()
        for proc in procs:
            assert proc is not None
            restart(proc)


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "archive.cli", *args], env={**os.environ, **env},
                          capture_output=True, text=True, cwd=ROOT, timeout=120)


def _keys(env: dict[str, str]) -> dict[str, str]:
    keys = {}
    for role in ("reader", "writer", "admin"):
        created = cli(env, "api-key", "create", f"delete-test-{role}", "--role", role)
        assert created.returncode == 0, created.stderr
        keys[role] = created.stdout.strip()
    return keys


@pytest.fixture(scope="module", params=["embedded", "distributed"])
def archive(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Archive]:
    tmp = tmp_path_factory.mktemp(f"delete-{request.param}")
    if request.param == "embedded":
        proc = serve(tmp).start()
        try:
            found = Archive("embedded", proc.env, proc.dicom_port, proc.dicom_port, proc.http, tmp / "data",
                            serve=proc)
            found.keys = _keys(proc.env)
            yield found
        finally:
            proc.stop()
        return
    with distributed(tmp, "del" + new_uid()[-10:].replace(".", "")) as cluster:
        found = Archive("distributed", cluster.env, cluster.scp.dicom_port, cluster.query.dicom_port,
                        cluster.query.http, tmp / "data", cluster=cluster)
        found.keys = _keys(cluster.env)
        yield found


def store_study(archive: Archive, count: int, study: str | None = None) -> list[Dataset]:
    study, series = study or new_uid(), new_uid()
    datasets = [make_ct(study_uid=study, series_uid=series, instance_number=i + 1, seed=i, size=16)
                for i in range(count)]
    assert pynetdicom_store(archive.store_port, datasets) == [0] * count
    return datasets


def qido(archive: Archive, study: str) -> list[str]:
    status, _, body = call(f"{archive.http}/dicom-web/studies/{study}/instances")
    assert status == 200, body
    return sorted(row["00080018"]["Value"][0] for row in body or [])


def searchable(archive: Archive, study: str) -> int:
    status, _, body = call(f"{archive.http}/api/search?level=instance&StudyInstanceUID={study}")
    assert status == 200, body
    return int(body["total"])


def indexed(archive: Archive, datasets: list[Dataset]) -> None:
    """Wait until every instance is in the catalog and the search index."""
    uids = sorted(str(ds.SOPInstanceUID) for ds in datasets)
    study = str(datasets[0].StudyInstanceUID)
    wait_until(lambda: set(uids) <= set(qido(archive, study)) and searchable(archive, study) >= len(uids),
               timeout=60)


def cfind(archive: Archive, study: str) -> list[str]:
    ae = AE(ae_title="FINDSCU")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate("127.0.0.1", archive.query_port, ae_title="ARCHIVE")
    assert assoc.is_established
    ds = Dataset()
    ds.QueryRetrieveLevel = "IMAGE"
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = study, "", ""
    found = []
    try:
        for status, identifier in assoc.send_c_find(ds, StudyRootQueryRetrieveInformationModelFind):
            if status is not None and int(status.Status) in (0xFF00, 0xFF01) and identifier is not None:
                found.append(str(identifier.SOPInstanceUID))
    finally:
        assoc.release()
    return sorted(found)


def changes(archive: Archive, since: int = 0, token: str | None = None) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    while True:
        status, _, body = call(f"{archive.http}/api/changes?since={since}&limit=50", token)
        assert status == 200, body
        out += body["changes"]
        if len(body["changes"]) < 50:
            return out
        since = body["changes"][-1]["seq"]


def actions_of(feed: list[dict[str, Any]], uids: set[str]) -> list[tuple[str, str]]:
    return [(c["action"], c["instance"]) for c in feed if c["instance"] in uids]


def publish(archive: Archive, message: IndexMessage) -> None:
    async def go() -> None:
        queue = message_queue(Settings.from_env(archive.env))
        try:
            await queue.publish(message.to_bytes())
        finally:
            await queue.close()

    asyncio.run(go())


def commitment(archive: Archive, refs: list[tuple[str, str]]) -> Dataset:
    reports = Reports()
    assert _request(_Port(archive.query_port), _action_information(new_uid(), refs), reports,  # type: ignore[arg-type]
                    release_at_once=False) == 0
    return reports.wait()[1]


@dataclass
class _Port:
    dicom_port: int


def test_delete_a_study(archive: Archive, tmp_path: Path) -> None:
    datasets = store_study(archive, 3)
    study, series = str(datasets[0].StudyInstanceUID), str(datasets[0].SeriesInstanceUID)
    uids = {str(ds.SOPInstanceUID) for ds in datasets}
    old = make_message(datasets[0], tmp_path)  # an index message received before the delete
    indexed(archive, datasets)
    assert uids <= archive.objects()
    before = changes(archive)
    assert sorted(actions_of(before, uids)) == sorted(("created", u) for u in uids)
    assert changes(archive, token=archive.keys["reader"]) == before  # the feed: reader role

    url = f"{archive.http}/dicom-web/studies/{study}"
    for role in ("reader", "writer"):
        assert call(url, archive.keys[role], method="DELETE")[0] == 403, role
    assert qido(archive, study) == sorted(uids)  # refused: nothing changed
    status, _, body = call(url, archive.keys["admin"], method="DELETE")
    assert status == 204, body

    assert qido(archive, study) == []
    assert cfind(archive, study) == []
    assert searchable(archive, study) == 0
    assert call(f"{url}/series/{series}/instances/{old.sop_instance_uid}")[0] == 404  # WADO-RS
    assert not uids & archive.objects()
    after = changes(archive, before[-1]["seq"])
    assert [c["seq"] for c in after] == list(range(before[-1]["seq"] + 1, before[-1]["seq"] + 4))
    assert sorted(actions_of(after, uids)) == sorted(("deleted", u) for u in uids)
    assert all(c["study"] == study and c["series"] == series and c["time"].endswith("Z") for c in after)
    assert call(url, archive.keys["admin"], method="DELETE")[0] == 404  # nothing left

    report = commitment(archive, [(str(ds.SOPClassUID), str(ds.SOPInstanceUID)) for ds in datasets])
    assert {(str(i.ReferencedSOPInstanceUID), int(i.FailureReason)) for i in report.FailedSOPSequence} == {
        (u, 0x0112) for u in uids}

    audit = archive.data_dir / "audit" / "audit.log"  # the file of the process that served the DELETE
    [record] = wait_until(lambda: [line for line in audit.read_text().splitlines()
                                   if '"110105"' in line and study in line], timeout=10)
    assert 'UserID="delete-test-admin"' in record and 'EventActionCode="D"' in record
    status, _, metrics = call(f"{archive.http}/metrics")
    assert re.search(rb"^archive_deleted_instances_total 3\.0$", metrics, re.M), metrics[:200]

    # the old message published again: the tombstone drops it
    publish(archive, old)
    wait_until(lambda: "index messages of deleted instances dropped" in archive.logs() and
               old.sop_instance_uid in archive.logs(), timeout=60)
    assert qido(archive, study) == [] and searchable(archive, study) == 0

    # a re-send after the delete is stored and found again
    resent = [datasets[0]]
    assert pynetdicom_store(archive.store_port, resent) == [0]
    indexed(archive, resent)
    assert cfind(archive, study) == [old.sop_instance_uid]
    assert old.sop_instance_uid in archive.objects()
    again = changes(archive, after[-1]["seq"])
    assert actions_of(again, {old.sop_instance_uid}) == [("created", old.sop_instance_uid)]
    report = commitment(archive, [(str(datasets[0].SOPClassUID), old.sop_instance_uid)])
    assert "FailedSOPSequence" not in report or not report.FailedSOPSequence
    verify_until_consistent(archive.env)  # object store, catalog and search index agree


def test_delete_a_series_and_an_instance_from_the_command_line(archive: Archive) -> None:
    datasets = store_study(archive, 2)
    study, series = str(datasets[0].StudyInstanceUID), str(datasets[0].SeriesInstanceUID)
    other = store_study(archive, 1, study=study)  # a second series of the study
    indexed(archive, datasets + other)
    first, second = (str(ds.SOPInstanceUID) for ds in datasets)
    assert cli(archive.env, "delete", study, series, new_uid()).returncode == 1  # nothing matched
    done = cli(archive.env, "delete", study, series, first)
    assert done.returncode == 0, done.stderr
    assert qido(archive, study) == sorted([second, str(other[0].SOPInstanceUID)])
    url = f"{archive.http}/dicom-web/studies/{study}/series/{series}"
    assert call(url, method="DELETE")[0] == 204  # loopback without sign-in configured: every role
    assert qido(archive, study) == [str(other[0].SOPInstanceUID)]
    assert not {first, second} & archive.objects()
    assert call(f"{archive.http}/dicom-web/studies/{study}/series/1.2.3.bad..uid", method="DELETE")[0] == 400


def test_the_feed_across_a_restart(archive: Archive) -> None:
    """A follower reading the feed while the archive restarts misses nothing and repeats nothing."""
    first = store_study(archive, 2)
    indexed(archive, first)
    seen = changes(archive)
    archive.restart()
    second = store_study(archive, 2)
    indexed(archive, second)
    later = changes(archive, seen[-1]["seq"])
    seqs = [c["seq"] for c in seen + later]
    assert seqs == list(range(1, len(seqs) + 1))  # from the start: no gap, no repeat
    assert {str(ds.SOPInstanceUID) for ds in first + second} <= {c["instance"] for c in seen + later}
    assert all(c["action"] in ("created", "updated", "deleted") for c in seen + later)
