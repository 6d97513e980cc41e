"""``dicom-archive reindex``: rebuild the catalog and the search index from the object store alone.

Every stored object is read (its header, up to the pixel data) and written to the catalog and the
search index as the indexer would, in batches, while the archive keeps running: the catalog and
the index keep answering queries throughout (each instance's rows are replaced in one upsert,
never removed first), and what is ingested meanwhile is indexed by the indexer as usual.

- Derived data only: the change feed, tombstones, the forwarding ledger, study-stable notes and
  API keys are kept; no change-feed entry, event or forwarding rule fires (the upserts are written
  with ``changes=False``, and nothing goes through the queue).
- An object whose SOP Instance UID has a tombstone is what a delete cut short: left alone
  (``verify --repair`` finishes the delete).
- Pipelined: a batch is written (catalog, then search index) while the next one is read.
- The search index's study documents (OpenSearch: ``archive.adapters.opensearch_studies``) are
  recomputed at the end, every study's, so that study lists read them from then on.
- Resumable: objects are listed in key order and the last key of each committed batch is saved in
  a state file (``--state``, by default under ARCHIVE_DATA_DIR); a run started again after a crash
  continues after it, unless ``--restart``.
- Progress: done/total, rate and ETA on a terminal (a line every 10 s otherwise), and as gauges on
  ARCHIVE_METRICS_PORT when it is set (``archive_reindex_objects``, ``archive_reindex_done``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from archive import metrics
from archive.core.errors import ObjectNotFound
from archive.core.flatten import flatten
from archive.core.models import IndexMessage
from archive.core.ports import Catalog, ObjectStore, SearchIndex, StudyDocumentsSearch
from archive.core.records import CatalogEntry
from archive.core.uids import uid_from_key
from archive.ops.rebuild import message_of

log = logging.getLogger(__name__)

BATCH = 100
READERS = 8  # objects read at once


@dataclass
class Progress:
    total: int = 0  # objects listed
    done: int = 0  # objects handled (this run and the run it resumes)
    indexed: int = 0
    tombstoned: int = 0
    unreadable: int = 0
    started: float = field(default_factory=time.monotonic)
    resumed_after: str = ""

    @property
    def rate(self) -> float:
        elapsed = time.monotonic() - self.started
        return self.indexed / elapsed if elapsed > 0 else 0.0


@dataclass
class Report:
    objects: int  # handled: listed when the run went past them (those a resumed run skips included)
    indexed: int
    tombstoned: int
    unreadable: int
    seconds: float
    resumed_after: str

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


class State:
    """The last key of the last committed batch, in a JSON file (written atomically)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> str:
        try:
            return str(json.loads(self.path.read_text()).get("after", ""))
        except (OSError, ValueError):
            return ""

    def save(self, after: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"after": after, "at": time.time()}))
        os.replace(tmp, self.path)

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)


async def _count(store: ObjectStore) -> int:
    return sum([1 async for info in store.list("instances/") if uid_from_key(info.key)])


async def _read(store: ObjectStore, keys: list[str]) -> list[IndexMessage | None]:
    gate = asyncio.Semaphore(READERS)

    async def one(key: str) -> IndexMessage | None:
        async with gate:
            try:
                return await message_of(store, key)
            except ObjectNotFound:  # deleted since it was listed
                return None

    return list(await asyncio.gather(*(one(k) for k in keys)))


async def _write(catalog: Catalog, search: SearchIndex, messages: list[IndexMessage], progress: Progress) -> None:
    tombstoned = await catalog.tombstoned([m.sop_instance_uid for m in messages])
    live = [m for m in messages if m.sop_instance_uid not in tombstoned]
    progress.tombstoned += len(messages) - len(live)
    if live:
        await catalog.upsert([CatalogEntry.from_message(m) for m in live], changes=False)
        now = time.time()
        await search.upsert([flatten(m, indexed_at=now) for m in live])
    progress.indexed += len(live)


async def reindex(store: ObjectStore, catalog: Catalog, search: SearchIndex, state: State, *,
                  restart: bool = False, batch: int = BATCH,
                  on_progress: Callable[[Progress], None] | None = None) -> Report:
    if restart:
        state.clear()
    after = state.load()
    progress = Progress(resumed_after=after)
    progress.total = await _count(store)
    metrics.REINDEX_OBJECTS.set(progress.total)
    if after:
        log.info("reindex resumes", extra={"after": after})
    keys: list[str] = []
    # One batch is written while the next is read; writes run one at a time, in key order, so the
    # state file never names a key past an unwritten batch.
    writing: asyncio.Task[None] | None = None

    async def commit(batch_keys: list[str], messages: list[IndexMessage | None]) -> None:
        found = [m for m in messages if m is not None]
        progress.unreadable += len(messages) - len(found)
        await _write(catalog, search, found, progress)
        progress.done += len(batch_keys)
        state.save(batch_keys[-1])
        metrics.REINDEX_DONE.set(progress.done)
        if on_progress is not None:
            on_progress(progress)

    async def flush() -> None:
        nonlocal writing
        batch_keys = keys.copy()
        keys.clear()
        messages = await _read(store, batch_keys)
        if writing is not None:
            await writing
        writing = asyncio.create_task(commit(batch_keys, messages))

    try:
        async for info in store.list("instances/"):
            if uid_from_key(info.key) is None:
                continue
            if after and info.key <= after:  # committed by the run this one resumes
                progress.done += 1
                continue
            keys.append(info.key)
            if len(keys) >= batch:
                await flush()
        if keys:
            await flush()
        if writing is not None:
            await writing
    finally:
        if writing is not None and not writing.done():
            writing.cancel()
            await asyncio.gather(writing, return_exceptions=True)
    if isinstance(search, StudyDocumentsSearch):  # every study's document, those of emptied studies too
        studies = await search.rebuild_study_documents()
        log.info("study documents rebuilt", extra={"studies": studies})
    state.clear()
    return Report(progress.done, progress.indexed, progress.tombstoned, progress.unreadable,
                  round(time.monotonic() - progress.started, 3), after)
