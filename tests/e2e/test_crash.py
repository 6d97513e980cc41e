"""Crashes and outages while instances stream in: nothing answered Success is lost.

After every scenario: each SOP Instance UID answered Success (0x0000) is in the
object store, the catalog and the search index exactly once (QIDO lists it once,
``verify`` agrees), and nothing indexed points to a missing object. The sets of
UIDs are compared, not just counts.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

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
from tests.factories import new_uid

pytestmark = pytest.mark.slow
services = pytest.mark.services


@pytest.fixture
def dist(tmp_path: Path, unique: str) -> Iterator[Distributed]:
    with distributed(tmp_path, unique) as env:
        yield env


def _wait_for(predicate: Callable[[], bool], timeout: float, what: str,
              senders: Sequence[StreamSender] = ()) -> None:
    """Wait for ``predicate``; give up early when the senders it depends on have ended."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if senders and not any(s.is_alive() for s in senders) and not predicate():
            errors = [e for s in senders for e in s.errors[-2:]]
            raise AssertionError(f"the senders ended before {what}: {errors}, "
                                 f"{sum(len(s.answered()) for s in senders)} answered")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def _senders(port: int, count: int, each: int, **kwargs: Any) -> list[StreamSender]:
    """``count`` concurrent associations sending into one study."""
    study = new_uid()
    group = [StreamSender(port, each, study_uid=study, **kwargs) for _ in range(count)]
    for sender in group:
        sender.start()
    return group


def _successes(senders: Sequence[StreamSender]) -> list[str]:
    return [uid for s in senders for uid in s.successes()]


def _join(senders: Sequence[StreamSender], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    for sender in senders:
        sender.join(max(0.1, deadline - time.monotonic()))
    assert not any(s.is_alive() for s in senders), "a sender hangs"


def _indexed_all(query: ArchiveProcess, senders: Sequence[StreamSender], timeout: float = 30.0) -> None:
    wanted = set(_successes(senders))
    study = senders[0].study_uid
    missing: set[str] = set()

    def done() -> bool:
        nonlocal missing
        missing = wanted - set(qido_instance_uids(query.http, study))
        return not missing

    try:
        _wait_for(done, timeout, "the Success'd instances to be searchable")
    except AssertionError:
        raise AssertionError(f"{len(missing)} of {len(wanted)} Success'd instances are not searchable "
                             f"after {timeout} s, e.g. {sorted(missing)[:3]}") from None


def _assert_nothing_lost(query: ArchiveProcess, senders: Sequence[StreamSender], objects: list[str],
                         report: dict[str, Any]) -> None:
    """The invariant every scenario ends with."""
    successes = _successes(senders)
    assert successes, "the senders got no Success at all"
    assert len(successes) == len(set(successes))
    found = qido_instance_uids(query.http, senders[0].study_uid)
    assert len(found) == len(set(found)), "an instance is listed more than once"
    lost = set(successes) - set(found)
    assert not lost, f"{len(lost)} Success'd instances are not searchable, e.g. {sorted(lost)[:3]}"
    dangling = set(found) - set(objects)
    assert not dangling, f"indexed without an object: {sorted(dangling)[:3]}"
    # Anything indexed beyond the Successes was in flight when something died (no answer).
    unanswered = {a.uid for s in senders for a in s.answered() if a.status != 0x0000}
    assert set(found) - set(successes) <= unanswered
    assert report["consistent"] and not any(report["counts"].values()), report
    assert report["objects"] == report["catalog_instances"] == report["search_documents"] == len(found)
    assert len(objects) == len(set(objects)) == report["objects"]


def _embedded_objects(proc: ArchiveProcess) -> list[str]:
    root = Path(proc.env["ARCHIVE_DATA_DIR"]) / "objects" / "instances"
    return [p.name[: -len(".dcm")] for p in root.rglob("*.dcm")]


@services
def test_indexer_killed_mid_stream(dist: Distributed) -> None:
    senders = _senders(dist.scp.dicom_port, 1, 300)
    study = senders[0].study_uid
    _wait_for(lambda: len(_successes(senders)) >= 60 and len(qido_instance_uids(dist.query.http, study)) > 0,
              30, "the indexer to be busy", senders)
    dist.indexer.kill9()
    assert senders[0].is_alive(), "the stream ended before the indexer was killed"
    _join(senders, 60)
    # The receiver does not need the indexer: every store is answered Success.
    assert [a.status for a in senders[0].answered()] == [0x0000] * 300, senders[0].errors
    dist.restart("indexer")
    _indexed_all(dist.query, senders)
    report = verify_until_consistent(dist.env)
    _assert_nothing_lost(dist.query, senders, object_uids(dist.env), report)
    assert report["objects"] == 300


@services
def test_scp_killed_mid_association(dist: Distributed) -> None:
    # Several associations, so that some stores are half-way through when the kill lands.
    senders = _senders(dist.scp.dicom_port, 4, 100)
    _wait_for(lambda: len(_successes(senders)) >= 50, 30, "50 successes", senders)
    dist.scp.kill9()
    _join(senders)
    assert sum(len(s.answered()) for s in senders) < 400, "the associations survived the kill"
    dist.restart("scp")
    assert associate_result(dist.scp.dicom_port, "CRASHSCU")[0]
    _indexed_all(dist.query, senders)
    # An object stored but not yet queued when the scp died is an orphan: re-queue it.
    verify_repair(dist.env)
    report = verify_until_consistent(dist.env)
    _assert_nothing_lost(dist.query, senders, object_uids(dist.env), report)


@services
def test_rabbitmq_outage_during_a_send(dist: Distributed) -> None:
    senders = _senders(dist.scp.dicom_port, 1, 5000, reconnect=True, pause=0.01)
    sender = senders[0]
    down_at = up_at = 0.0
    try:
        _wait_for(lambda: len(sender.successes()) >= 30, 30, "30 successes before the outage", senders)
        stopped = rabbitmqctl("stop_app")
        assert stopped.returncode == 0, stopped.stderr
        down_at = time.monotonic()
        # Keep the broker down for a couple of seconds so that reconnect attempts fail too.
        _wait_for(lambda: sum(a.started > down_at for a in sender.answered()) >= 5
                  and time.monotonic() - down_at > 2.0, 40, "answers during the outage", senders)
    finally:
        restarting_at = time.monotonic()  # the broker may accept connections before start_app returns
        if down_at:  # never leave the shared broker down
            for _ in range(3):
                started = rabbitmqctl("start_app")
                if started.returncode == 0:
                    break
            up_at = time.monotonic()
            assert started.returncode == 0, started.stderr
    # Our processes are not restarted: they reconnect by themselves.
    _wait_for(lambda: sum(a.started > up_at and a.status == 0 for a in sender.answered()) >= 20, 60,
              "successes to resume after the outage", senders)
    sender.stop()
    _join(senders)

    answered = sender.answered()
    during = [a.status for a in answered if a.started > down_at and a.finished < restarting_at]
    assert during and all(status == 0xA700 for status in during), [hex(s) for s in during if s != 0xA700]
    assert {a.status for a in answered} <= {0x0000, 0xA700}, {hex(a.status) for a in answered}
    _indexed_all(dist.query, senders)
    # A refused instance may have left its object (the receiver never deletes after a put:
    # the broker might have taken the message after all); repair indexes such objects.
    verify_repair(dist.env)
    report = verify_until_consistent(dist.env)
    objects = object_uids(dist.env)
    _assert_nothing_lost(dist.query, senders, objects, report)


def test_serve_killed_mid_stream(tmp_path: Path) -> None:
    proc = serve(tmp_path).start()
    try:
        senders = _senders(proc.dicom_port, 4, 100)
        _wait_for(lambda: len(_successes(senders)) >= 50, 30, "50 successes", senders)
        proc.kill9()
        _join(senders)
        assert sum(len(s.answered()) for s in senders) < 400, "the associations survived the kill"
        restart(proc)
        assert associate_result(proc.dicom_port, "CRASHSCU")[0]
        # Messages the killed indexer had claimed stay invisible for the SQLite queue's
        # lease (300 s); their objects have no catalog entry, so repair re-queues them.
        verify_repair(proc.env)
        _indexed_all(proc, senders)
        report = verify_until_consistent(proc.env)
        _assert_nothing_lost(proc, senders, _embedded_objects(proc), report)
    finally:
        proc.stop()
