"""The query service's cache of objects read from the store (frames, rendering, bulk data)."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from archive.adapters.filesystem_store import FilesystemStore
from archive.core.models import Payload
from archive.core.records import CatalogInstance
from archive.query.objects import ObjectCache, RetrieveError


class CountingStore(FilesystemStore):
    """The real filesystem store, counting the objects read from it."""

    def __init__(self, root: Path) -> None:
        super().__init__(root, fsync=False)
        self.reads: list[str] = []

    async def get(self, key: str) -> AsyncIterator[bytes]:
        self.reads.append(key)
        async for chunk in super().get(key):
            yield chunk


async def _put(store: FilesystemStore, name: str, data: bytes, replace: bool = False) -> CatalogInstance:
    key = f"instances/00/00/{name}.dcm"
    sha = hashlib.sha256(data).hexdigest()
    await store.put(key, Payload((data,), len(data), sha), if_absent=not replace)
    return CatalogInstance(name, "1.2", "1.2.3", key, len(data), sha)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[CountingStore]:
    s = CountingStore(tmp_path / "objects")
    await s.migrate()
    yield s
    await s.close()


async def test_a_second_request_reads_the_local_copy(store: CountingStore, tmp_path: Path) -> None:
    cache = ObjectCache(store, tmp_path / "spool", capacity=10_000)
    (tmp_path / "spool").mkdir()
    instance = await _put(store, "1", b"x" * 1000)
    async with cache.open(instance) as first:
        assert first.read_bytes() == b"x" * 1000
    async with cache.open(instance) as second:
        assert second == first
    assert store.reads == [instance.object_key]


async def test_concurrent_requests_share_one_download(store: CountingStore, tmp_path: Path) -> None:
    cache = ObjectCache(store, tmp_path, capacity=10_000)
    instance = await _put(store, "1", b"y" * 5000)

    async def read() -> bytes:
        async with cache.open(instance) as path:
            await asyncio.sleep(0.01)
            return path.read_bytes()

    assert await asyncio.gather(*(read() for _ in range(5))) == [b"y" * 5000] * 5
    assert store.reads == [instance.object_key]


async def test_least_recently_used_files_go_first_but_never_while_read(store: CountingStore, tmp_path: Path) -> None:
    cache = ObjectCache(store, tmp_path, capacity=2500)
    a, b, c = [await _put(store, n, n.encode() * 1000) for n in "abc"]
    async with cache.open(a) as path_a:
        async with cache.open(b):
            pass
        async with cache.open(c):
            pass  # over capacity: b goes (a is being read)
        assert path_a.exists()
    assert cache.total <= 2500
    async with cache.open(b):
        pass
    assert store.reads.count(b.object_key) == 2  # b was evicted and read again
    assert store.reads.count(a.object_key) == 1


async def test_a_replaced_object_is_not_served_from_the_old_copy(store: CountingStore, tmp_path: Path) -> None:
    cache = ObjectCache(store, tmp_path, capacity=10_000)
    old = await _put(store, "1", b"old" * 10)
    async with cache.open(old) as path:
        assert path.read_bytes() == b"old" * 10
    new = await _put(store, "1", b"new" * 10, replace=True)
    async with cache.open(new) as path:
        assert path.read_bytes() == b"new" * 10


async def test_a_damaged_object_is_an_error_and_not_cached(store: CountingStore, tmp_path: Path) -> None:
    cache = ObjectCache(store, tmp_path, capacity=10_000)
    instance = await _put(store, "1", b"z" * 100)
    (store.root / instance.object_key).write_bytes(b"Z" * 100)
    for _ in range(2):
        with pytest.raises(RetrieveError):
            async with cache.open(instance):
                pass
    assert store.reads == [instance.object_key] * 2
    assert cache.total == 0 and not list(tmp_path.glob("retrieve-*")) and not cache._downloads
