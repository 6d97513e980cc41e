"""Crashes and outages while instances stream in: nothing answered Success is lost.

After every scenario: each SOP Instance UID answered Success (0x0000) is in the
object store, the catalog and the search index exactly once (QIDO lists it once,
``verify`` agrees), and nothing indexed points to a missing object.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.e2e.distributed import (
    Distributed,
    StreamSender,
    distributed,
    object_uids,
    qido_instance_uids,
    rabbitmqctl,
    restart,
    verify_repair,
    verify_until_consistent,
)
from tests.e2e.harness import ArchiveProcess, serve
from tests.e2e.senders import associate_result

pytestmark = pytest.mark.slow


@pytest.fixture
def dist(tmp_path: Path, unique: str) -> Iterator[Distributed]:
    with distributed(tmp_path, unique) as env:
        yield env


def _wait_for(predicate: Callable[[], bool], timeout: float, what: str,
              sender: StreamSender | None = None) -> None:
    """Wait for ``predicate``; give up early when the sender it depends on has ended."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if sender is not None and not sender.is_alive() and not predicate():
            raise AssertionError(f"the sender ended before {what}: {sender.errors[-3:]}, "
                                 f"{len(sender.answered())} answered")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def _indexed_all(query: ArchiveProcess, sender: StreamSender, timeout: float = 45.0) -> None:
    wanted = set(sender.successes())
    _wait_for(lambda: wanted <= set(qido_instance_uids(query.http, sender.study_uid)), timeout,
              f"{len(wanted)} Success'd instances to be searchable")


def _assert_nothing_lost(query: ArchiveProcess, sender: StreamSender, objects: list[str],
                         report: dict) -> None:
    """The invariant every scenario ends with."""
    successes = sender.successes()
    assert successes, "the sender got no Success at all"
    assert len(successes) == len(set(successes))
    found = qido_instance_uids(query.http, sender.study_uid)
    assert len(found) == len(set(found)), "an instance is listed more than once"
    lost = set(successes) - set(found)
    assert not lost, f"{len(lost)} Success'd instances are not searchable, e.g. {sorted(lost)[:3]}"
    dangling = set(found) - set(objects)
    assert not dangling, f"indexed without an object: {sorted(dangling)[:3]}"
    # Anything beyond the Successes was in flight when something died (no answer).
    unanswered = {s.uid for s in sender.answered() if s.status != 0x0000}
    assert set(found) - set(successes) <= unanswered
    assert report["consistent"] and not any(report["counts"].values()), report
    assert report["objects"] == report["catalog_instances"] == report["search_documents"]
    assert report["objects"] >= len(successes)
    assert len(objects) == len(set(objects)) == report["objects"]


def _embedded_objects(proc: ArchiveProcess) -> list[str]:
    root = Path(proc.env["ARCHIVE_DATA_DIR"]) / "objects" / "instances"
    return [p.name[: -len(".dcm")] for p in root.rglob("*.dcm")]


def test_indexer_killed_mid_stream(dist: Distributed) -> None:
    sender = StreamSender(dist.scp.dicom_port, 300)
    sender.start()
    _wait_for(lambda: len(sender.successes()) >= 60
              and len(qido_instance_uids(dist.query.http, sender.study_uid)) > 0, 30,
              "the indexer to be busy", sender)
    dist.indexer.kill9()
    assert sender.is_alive(), "the stream ended before the indexer was killed"
    time.sleep(0.5)  # stores keep being answered with the indexer down
    sender.join(60)
    assert not sender.is_alive()
    assert [s.status for s in sender.answered()] == [0x0000] * 300, sender.errors
    dist.restart("indexer")
    _indexed_all(dist.query, sender)
    report = verify_until_consistent(dist.env)
    _assert_nothing_lost(dist.query, sender, object_uids(dist.env), report)
    assert report["objects"] == 300


def test_scp_killed_mid_association(dist: Distributed) -> None:
    sender = StreamSender(dist.scp.dicom_port, 300)
    sender.start()
    _wait_for(lambda: len(sender.successes()) >= 50, 30, "50 successes", sender)
    dist.scp.kill9()
    sender.join(30)
    assert not sender.is_alive()
    assert len(sender.answered()) < 300, "the association survived the kill"
    assert sender.answered()[-1].status == -1 or sender.errors  # the association was cut
    dist.restart("scp")
    assert associate_result(dist.scp.dicom_port, "CRASHSCU")[0]
    _indexed_all(dist.query, sender)
    # An object stored but not yet queued when the scp died is an orphan: re-queue it.
    verify_repair(dist.env)
    report = verify_until_consistent(dist.env)
    _assert_nothing_lost(dist.query, sender, object_uids(dist.env), report)


def test_rabbitmq_outage_during_a_send(dist: Distributed) -> None:
    sender = StreamSender(dist.scp.dicom_port, 5000, reconnect=True, pause=0.01)
    sender.start()
    down_at = up_at = 0.0
    try:
        _wait_for(lambda: len(sender.successes()) >= 30, 30, "30 successes before the outage", sender)
        stopped = rabbitmqctl("stop_app")
        assert stopped.returncode == 0, stopped.stderr
        down_at = time.monotonic()
        _wait_for(lambda: sum(s.started > down_at for s in sender.answered()) >= 5, 40,
                  "answers during the outage", sender)
    finally:
        if down_at:
            started = rabbitmqctl("start_app")
            up_at = time.monotonic()
            assert started.returncode == 0, started.stderr
    _wait_for(lambda: sum(s.started > up_at and s.status == 0 for s in sender.answered()) >= 20, 60,
              "successes to resume after the outage", sender)
    sender.stop()
    sender.join(30)

    answered = sender.answered()
    during = [s.status for s in answered if s.started > down_at and s.finished < up_at]
    assert during and all(status == 0xA700 for status in during), [hex(s) for s in during]
    assert {s.status for s in answered} <= {0x0000, 0xA700}, {hex(s.status) for s in answered}
    _indexed_all(dist.query, sender)
    report = verify_until_consistent(dist.env)
    _assert_nothing_lost(dist.query, sender, object_uids(dist.env), report)
    # Refused instances left nothing behind.
    refused = {s.uid for s in answered if s.status == 0xA700}
    assert not refused & set(object_uids(dist.env))


def test_serve_killed_mid_stream(tmp_path: Path) -> None:
    proc = serve(tmp_path).start()
    try:
        sender = StreamSender(proc.dicom_port, 300)
        sender.start()
        _wait_for(lambda: len(sender.successes()) >= 50, 30, "50 successes", sender)
        proc.kill9()
        sender.join(30)
        assert not sender.is_alive()
        assert len(sender.answered()) < 300, "the association survived the kill"
        restart(proc)
        assert associate_result(proc.dicom_port, "CRASHSCU")[0]
        _indexed_all(proc, sender)
        verify_repair(proc.env)
        report = verify_until_consistent(proc.env)
        _assert_nothing_lost(proc, sender, _embedded_objects(proc), report)
    finally:
        proc.stop()
