"""The indexer keeps a batch unacknowledged while a backend is down, and acks after both writes."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

from archive.adapters.fts5_search import Fts5Search
from archive.adapters.sqlite_catalog import SqliteCatalog
from archive.adapters.sqlite_queue import SqliteQueue
from archive.core.changes import UpsertOutcome
from archive.core.errors import BackendUnavailable
from archive.core.records import CatalogEntry
from archive.indexer import worker
from archive.indexer.worker import Indexer
from tests.factories import make_ct, make_message


class Outage(SqliteCatalog):
    """The real SQLite catalog, down (BackendUnavailable) for its first ``failures`` upserts."""

    def __init__(self, path: Path, failures: int) -> None:
        super().__init__(path)
        self.failures = failures
        self.attempts = 0

    async def upsert(self, entries: Sequence[CatalogEntry]) -> UpsertOutcome:
        self.attempts += 1
        if self.attempts <= self.failures:
            raise BackendUnavailable("catalog", "connection refused")
        return await super().upsert(entries)


async def _setup(tmp_path: Path, failures: int) -> tuple[SqliteQueue, Outage, Fts5Search, list[str]]:
    queue, catalog, search = SqliteQueue(tmp_path / "q.db"), Outage(tmp_path / "c.db", failures), Fts5Search(tmp_path / "s.db")
    for backend in (queue, catalog, search):
        await backend.migrate()
    uids = []
    for n in range(3):
        message = make_message(make_ct(patient_id=f"P{n}"), tmp_path)
        uids.append(message.sop_instance_uid)
        await queue.publish(message.to_bytes())
    return queue, catalog, search, uids


async def test_a_batch_waits_out_an_outage_then_is_indexed_and_acked(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(worker, "BACKEND_DOWN", worker.Backoff(first=0.01, cap=0.02))
    queue, catalog, search, uids = await _setup(tmp_path, failures=4)
    indexer = Indexer(queue, catalog, search, batch_size=10)
    [deliveries] = [await queue.receive(10, timeout=5)]
    await indexer.handle(deliveries)
    assert catalog.attempts == 5  # four failures waited out, no delivery burnt
    assert [await catalog.get_instance(u) is not None for u in uids] == [True] * 3
    assert await search.count() == 3
    assert (await queue.depth()).ready == 0  # acked after both writes
    for backend in (queue, catalog, search):
        await backend.close()


async def test_stopping_during_an_outage_leaves_the_batch_unacked(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(worker, "BACKEND_DOWN", worker.Backoff(first=30.0, cap=30.0))  # only stop() ends the wait
    queue, catalog, search, _ = await _setup(tmp_path, failures=1_000)
    indexer = Indexer(queue, catalog, search, batch_size=10)
    deliveries = await queue.receive(10, timeout=5)
    handling = asyncio.create_task(indexer.handle(deliveries))
    while catalog.attempts < 1:
        await asyncio.sleep(0.01)
    indexer.stop()
    await asyncio.wait_for(handling, 5)  # the 30 s backoff is cut short
    assert catalog.attempts == 2  # one last try as the wait is cut short, then it gives up
    assert (await queue.depth()).ready == 3  # not acked, not dead-lettered: redelivered later
    assert all(d.delivery_count == 1 for d in deliveries)
    for backend in (queue, catalog, search):
        await backend.close()


class Batches(SqliteCatalog):
    """The real SQLite catalog, recording how many instances each upsert wrote."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.sizes: list[int] = []

    async def upsert(self, entries: Sequence[CatalogEntry], *, changes: bool = True) -> UpsertOutcome:
        outcome = await super().upsert(entries, changes=changes)
        self.sizes.append(len(entries))
        return outcome


class Claims(SqliteQueue):
    """The real SQLite queue, counting the receives that returned messages."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.claims = 0

    async def receive(self, max_messages: int, timeout: float) -> list:  # type: ignore[type-arg]
        out = await super().receive(max_messages, timeout)
        self.claims += bool(out)
        return out


async def _until(condition, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.005)


async def test_while_messages_keep_coming_a_small_batch_lingers_for_more(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(worker, "FLOWING_SECONDS", 60.0)  # the second message counts as "still coming"
    queue, catalog, search = Claims(tmp_path / "q.db"), Batches(tmp_path / "c.db"), Fts5Search(tmp_path / "s.db")
    for backend in (queue, catalog, search):
        await backend.migrate()
    messages = [make_message(make_ct(patient_id=f"P{n}"), tmp_path) for n in range(5)]
    indexer = Indexer(queue, catalog, search, batch_size=10, linger=3.0)
    running = asyncio.create_task(indexer.run())
    await queue.publish(messages[0].to_bytes())  # after a quiet spell: written at once
    await _until(lambda: catalog.sizes == [1])
    await queue.publish(messages[1].to_bytes())  # within a second of it: lingers, and gathers the rest
    await _until(lambda: queue.claims == 2)
    for message in messages[2:]:
        await queue.publish(message.to_bytes())
    await _until(lambda: sum(catalog.sizes) == 5)
    assert catalog.sizes == [1, 4]
    async with asyncio.timeout(10):
        while (await queue.depth()).ready:  # all acked, after the search write
            await asyncio.sleep(0.01)
    indexer.stop()
    await asyncio.wait_for(running, 5)
    for backend in (queue, catalog, search):
        await backend.close()


async def test_a_full_batch_does_not_linger(tmp_path: Path) -> None:
    queue, catalog, search = SqliteQueue(tmp_path / "q.db"), Batches(tmp_path / "c.db"), Fts5Search(tmp_path / "s.db")
    for backend in (queue, catalog, search):
        await backend.migrate()
    for n in range(5):
        await queue.publish(make_message(make_ct(patient_id=f"P{n}"), tmp_path).to_bytes())
    indexer = Indexer(queue, catalog, search, batch_size=2, linger=60.0)
    running = asyncio.create_task(indexer.run())
    await _until(lambda: sum(catalog.sizes) >= 4)  # two full batches (the second "flowing"), no minute's wait
    indexer.stop()  # cuts the last batch's lingering short, if it was received already
    await asyncio.wait_for(running, 5)
    assert catalog.sizes[:2] == [2, 2]
    for backend in (queue, catalog, search):
        await backend.close()


class BreaksOnSecondReceive(SqliteQueue):
    """The real SQLite queue, whose receives after the first fail with an unexpected error."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.receives = 0

    async def receive(self, max_messages: int, timeout: float) -> list:  # type: ignore[type-arg]
        self.receives += 1
        if self.receives > 1:
            raise RuntimeError("unexpected")
        return await super().receive(max_messages, timeout)


async def test_what_a_lingering_batch_claimed_is_kept_when_the_next_receive_fails(tmp_path: Path) -> None:
    queue, catalog, search = BreaksOnSecondReceive(tmp_path / "q.db"), Batches(tmp_path / "c.db"), \
        Fts5Search(tmp_path / "s.db")
    for backend in (queue, catalog, search):
        await backend.migrate()
    await queue.publish(make_message(make_ct(patient_id="P0"), tmp_path).to_bytes())
    indexer = Indexer(queue, catalog, search, batch_size=10, linger=0.01)
    indexer._flowing_until = float("inf")  # noqa: SLF001 (messages are flowing: the batch lingers)
    deliveries = await indexer._next_batch()  # noqa: SLF001
    assert len(deliveries) == 1 and queue.receives == 2  # the second receive failed; the claimed one is kept
    for backend in (queue, catalog, search):
        await backend.close()


def test_on_rabbitmq_a_batch_is_at_most_the_prefetch(tmp_path: Path) -> None:
    from archive.compose import indexer_batch
    from archive.settings import Settings

    embedded = {"ARCHIVE_DATA_DIR": str(tmp_path), "ARCHIVE_INDEXER_BATCH": "500", "ARCHIVE_INDEXER_PREFETCH": "400"}
    assert indexer_batch(Settings.from_env(embedded)) == 500  # the SQLite queue has no prefetch
    rabbit = {**embedded, "ARCHIVE_QUEUE": "amqp://guest:guest@127.0.0.1:5672/"}
    assert indexer_batch(Settings.from_env(rabbit)) == 400
    assert indexer_batch(Settings.from_env({**rabbit, "ARCHIVE_INDEXER_BATCH": "200"})) == 200
