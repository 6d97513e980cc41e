"""The change feed, tombstones and deletes of the Catalog port, against SQLite and PostgreSQL.

The concurrency test runs several writers (each its own catalog, as separate indexer processes
would be: their own connections) while a reader polls: every answer must continue the sequence
the reader had, without a gap, in increasing seq.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path

from archive.core.changes import Deletion
from archive.core.ports import Catalog
from archive.core.query import Query, SingleValue
from archive.core.levels import Level
from archive.core.records import CatalogEntry
from tests.contract.test_catalog import CatalogFactory, catalog, open_catalog  # noqa: F401 (fixtures)
from tests.factories import clones, make_ct, make_message, new_uid


def received(entry: CatalogEntry, at: float) -> CatalogEntry:
    return dataclasses.replace(entry, instance=dataclasses.replace(entry.instance, received_at=at))


def resent(entry: CatalogEntry, sha256: str) -> CatalogEntry:
    return dataclasses.replace(entry, instance=dataclasses.replace(entry.instance, sha256=sha256))


async def feed(catalog: Catalog, since: int = 0) -> list[tuple[int, str, str]]:
    return [(c.seq, c.action, c.sop_instance_uid) for c in await catalog.changes(since, 1000)]


async def studies(catalog: Catalog, study_uid: str) -> list[str]:
    found = await catalog.find(Query(Level.STUDY, (SingleValue("StudyInstanceUID", study_uid),)))
    return [f["0020000D"]["Value"][0] for f in found]


async def test_upsert_writes_created_then_updated_and_a_redelivery_nothing(catalog: Catalog, tmp_path: Path) -> None:
    entries = clones(tmp_path, 3)
    outcome = await catalog.upsert(entries)
    uids = sorted(e.instance.sop_instance_uid for e in entries)
    assert sorted(outcome.created) == uids and outcome.updated == [] and outcome.dropped == []
    assert await feed(catalog) == [(n, "created", uid) for n, uid in enumerate(uids, start=1)]
    again = await catalog.upsert(entries)  # redelivered: the same objects
    assert again.created == again.updated == []
    replaced = await catalog.upsert([resent(entries[0], "1" * 64)])  # another object under the UID
    assert replaced.updated == [entries[0].instance.sop_instance_uid]
    assert await feed(catalog, 3) == [(4, "updated", entries[0].instance.sop_instance_uid)]
    change = (await catalog.changes(3, 10))[0]
    assert (change.study_uid, change.series_uid) == (entries[0].study.study_uid, entries[0].series.series_uid)
    assert abs(change.at - time.time()) < 60
    assert await catalog.changes(4, 10) == []
    assert [c.seq for c in await catalog.changes(0, 2)] == [1, 2]  # limit


async def test_a_rebuild_writes_no_feed_entry_and_the_indexer_announces_what_it_added(catalog: Catalog,
                                                                                       tmp_path: Path) -> None:
    known, new = clones(tmp_path, 2), clones(tmp_path, 2)
    await catalog.upsert(known)
    seq = len(await feed(catalog))
    # reindex / verify --repair: both instances written, no feed entry
    outcome = await catalog.upsert([*known, *new], changes=False)
    assert sorted(outcome.created) == sorted(e.instance.sop_instance_uid for e in new)
    assert await feed(catalog, seq) == []
    assert len(await catalog.locate(Query(Level.IMAGE, (SingleValue("StudyInstanceUID", new[0].study.study_uid),)))) == 2
    # the indexer then writes the same objects from its messages: the rebuilt-only ones are announced once
    await catalog.upsert([*known, *new])
    assert sorted(uid for _, action, uid in await feed(catalog, seq) if action == "created") == \
        sorted(e.instance.sop_instance_uid for e in new)
    after = len(await feed(catalog))
    await catalog.upsert([*known, *new])  # and never again
    assert len(await feed(catalog)) == after


async def test_delete_a_study_removes_it_tombstones_it_and_says_so(catalog: Catalog, tmp_path: Path) -> None:
    study_uid = new_uid()
    doomed = clones(tmp_path, 2, study_uid=study_uid, patient_id="PID-DEL")
    kept = clones(tmp_path, 1, patient_id="PID-KEEP")
    await catalog.upsert(doomed + kept)
    at = time.time()
    deleted = await catalog.delete(Deletion(study_uid), at)
    uids = sorted(e.instance.sop_instance_uid for e in doomed)
    assert sorted(i.sop_instance_uid for i in deleted.instances) == uids
    assert {i.object_key for i in deleted.instances} == {e.instance.object_key for e in doomed}
    assert {i.patient_id for i in deleted.instances} == {"PID-DEL"}  # for the audit trail
    assert deleted.at == at
    assert await studies(catalog, study_uid) == []
    assert [await catalog.get_instance(u) for u in uids] == [None, None]
    assert await catalog.count_instances() == 1
    patients = await catalog.find(Query(Level.PATIENT, (SingleValue("PatientID", "PID-DEL"),)))
    assert patients == []  # the patient left without studies goes too
    assert await catalog.tombstoned(uids + [kept[0].instance.sop_instance_uid]) == set(uids)
    assert [(a, u) for _, a, u in await feed(catalog, 3)] == [("deleted", u) for u in uids]
    assert (await catalog.delete(Deletion(study_uid), time.time())).instances == []  # nothing left: 404


async def test_delete_a_series_or_an_instance_leaves_the_rest(catalog: Catalog, tmp_path: Path) -> None:
    study_uid, series_a, series_b = new_uid(), new_uid(), new_uid()
    a = clones(tmp_path, 2, study_uid=study_uid, series_uid=series_a)
    b = clones(tmp_path, 2, study_uid=study_uid, series_uid=series_b)
    await catalog.upsert(a + b)
    one = a[0].instance.sop_instance_uid
    assert (await catalog.delete(Deletion(study_uid, series_b, one), time.time())).instances == []  # wrong series
    gone = await catalog.delete(Deletion(study_uid, series_a, one), time.time())
    assert [i.sop_instance_uid for i in gone.instances] == [one]
    assert await catalog.count_instances() == 3
    gone = await catalog.delete(Deletion(study_uid, series_b), time.time())
    assert sorted(i.sop_instance_uid for i in gone.instances) == sorted(e.instance.sop_instance_uid for e in b)
    assert await studies(catalog, study_uid) == [study_uid]  # one instance of series A is left
    found = await catalog.find(Query(Level.SERIES, (SingleValue("StudyInstanceUID", study_uid),)))
    assert [f["0020000E"]["Value"][0] for f in found] == [series_a]


async def test_a_tombstone_drops_late_messages_and_a_resend_clears_it(catalog: Catalog, tmp_path: Path) -> None:
    [entry] = clones(tmp_path, 1)
    uid = entry.instance.sop_instance_uid
    await catalog.upsert([entry])
    deleted_at = entry.instance.received_at + 10
    await catalog.delete(Deletion(entry.study.study_uid), deleted_at)
    late = await catalog.upsert([entry, received(entry, deleted_at - 1)])  # redelivered, or late
    assert late.dropped == [uid] and late.created == []
    assert await catalog.get_instance(uid) is None
    assert [a for _, a, _ in await feed(catalog)] == ["created", "deleted"]
    other = clones(tmp_path, 1)[0]  # a batch with a live entry and a dropped one
    mixed = await catalog.upsert([received(entry, deleted_at), other])
    assert mixed.dropped == [uid] and mixed.created == [other.instance.sop_instance_uid]
    again = await catalog.upsert([received(entry, deleted_at + 1)])  # re-sent after the delete
    assert again.created == [uid] and again.dropped == []
    assert await catalog.get_instance(uid) is not None
    assert await catalog.tombstoned([uid]) == set()
    assert [a for _, a, _ in await feed(catalog)] == ["created", "deleted", "created", "created"]
    assert (await catalog.upsert([entry])).dropped == []  # the tombstone is gone: an old message is a redelivery


async def test_the_feed_continues_after_a_restart(open_catalog: CatalogFactory, tmp_path: Path) -> None:
    first = open_catalog()
    await first.migrate()
    await first.upsert(clones(tmp_path, 2))
    await first.close()
    second = open_catalog()
    await second.migrate()
    await second.upsert(clones(tmp_path, 2))
    assert [c.seq for c in await second.changes(0, 100)] == [1, 2, 3, 4]


async def test_concurrent_writers_never_show_a_reader_a_gap(open_catalog: CatalogFactory, tmp_path: Path) -> None:
    """Writers commit out of order; the reader must still see 1, 2, 3, ... with nothing skipped."""
    writers = [open_catalog() for _ in range(4)]
    reader = open_catalog()
    await writers[0].migrate()
    batches = 15
    template = make_message(make_ct(size=4), tmp_path)
    seen: list[int] = []
    done = asyncio.Event()

    async def write(n: int, catalog: Catalog) -> int:
        written = 0
        for b in range(batches):
            batch = []
            for _ in range(1 + (n + b) % 5):  # batches of different sizes: transactions of different lengths
                uid = new_uid()
                copy = dataclasses.replace(template, sop_instance_uid=uid, series_uid=new_uid(),
                                           metadata={**template.metadata, "00080018": {"vr": "UI", "Value": [uid]}})
                batch.append(CatalogEntry.from_message(copy))
            await catalog.upsert(batch)
            written += len(batch)
            if b % 5 == 4:  # and deletes, writing their own entries
                gone = await catalog.delete(Deletion(batch[0].study.study_uid, batch[0].series.series_uid),
                                            time.time())
                written += len(gone.instances)
        return written

    async def read() -> None:
        while True:
            finished = done.is_set()  # read once more after the writers are done
            since = seen[-1] if seen else 0
            got = [c.seq for c in await reader.changes(since, 50)]
            assert got == list(range(since + 1, since + 1 + len(got))), f"after {since}: {got}"
            seen.extend(got)
            if finished and not got:
                return
            await asyncio.sleep(0)

    reading = asyncio.create_task(read())
    counts = await asyncio.gather(*(write(n, w) for n, w in enumerate(writers)))
    done.set()
    await asyncio.wait_for(reading, 60)
    assert seen == list(range(1, sum(counts) + 1))
