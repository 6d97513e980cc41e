"""The object-store contract, run against the filesystem and S3 (SeaweedFS/MinIO)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from minio import Minio
from minio.error import S3Error

from archive.adapters.filesystem_store import FilesystemStore
from archive.adapters.s3_store import PROBE_PREFIX, S3Store
from archive.compat import minio as minio_compat
from archive.core.errors import ObjectNotFound
from archive.core.models import Payload
from archive.core.ports import ObjectStore
from tests.conftest import service_setting


def payload(*parts: bytes | Path) -> Payload:
    digest = hashlib.sha256()
    size = 0
    for p in parts:
        data = p if isinstance(p, bytes) else p.read_bytes()
        digest.update(data)
        size += len(data)
    return Payload(parts=tuple(parts), size=size, sha256=digest.hexdigest())


# The S3 implementations of scripts/services.sh: the setting names of each (URL, access key, secret key).
S3_SERVICES = {
    "seaweedfs": ("ARCHIVE_OBJECT_STORE", "ARCHIVE_S3_ACCESS_KEY", "ARCHIVE_S3_SECRET_KEY"),
    "minio": ("MINIO_OBJECT_STORE", "MINIO_ACCESS_KEY", "MINIO_SECRET_KEY"),
}


async def _store(kind: str, tmp_path: Path, unique: str) -> AsyncIterator[ObjectStore]:
    if kind == "filesystem":
        backend: ObjectStore = FilesystemStore(tmp_path / "objects")
    else:
        url_name, access_name, secret_name = S3_SERVICES[kind]
        netloc = urlsplit(service_setting(url_name)).netloc
        access, secret = service_setting(access_name), service_setting(secret_name)
        backend = S3Store(netloc, f"test-{unique}", access, secret, part_size=5 * 1024 * 1024)
    await backend.migrate()
    await backend.migrate()  # idempotent
    yield backend
    async for info in backend.list():
        await backend.delete(info.key)
    await backend.close()
    if kind != "filesystem":  # a bucket left behind keeps SeaweedFS volumes until it runs out
        Minio(netloc, access, secret, secure=False).remove_bucket(f"test-{unique}")


@pytest.fixture(params=["filesystem", *S3_SERVICES])
async def store(request: pytest.FixtureRequest, tmp_path: Path, unique: str) -> AsyncIterator[ObjectStore]:
    async for backend in _store(request.param, tmp_path, unique):
        yield backend


@pytest.fixture(params=list(S3_SERVICES))
async def s3(request: pytest.FixtureRequest, tmp_path: Path, unique: str) -> AsyncIterator[S3Store]:
    async for backend in _store(request.param, tmp_path, unique):
        assert isinstance(backend, S3Store)
        yield backend


async def read_all(store: ObjectStore, key: str) -> bytes:
    return b"".join([chunk async for chunk in store.get(key)])


async def test_put_get_head_range_delete(store: ObjectStore, tmp_path: Path) -> None:
    body = tmp_path / "body"
    body.write_bytes(os.urandom(100_000))
    p = payload(b"HEADER", body)
    result = await store.put("instances/aa/bb/1.2.3.dcm", p)
    assert result.created
    assert await read_all(store, "instances/aa/bb/1.2.3.dcm") == b"HEADER" + body.read_bytes()
    info = await store.head("instances/aa/bb/1.2.3.dcm")
    assert info is not None and info.size == p.size and info.sha256 == p.sha256
    assert await store.get_range("instances/aa/bb/1.2.3.dcm", 2, 4) == b"ADER"
    assert await store.head("instances/aa/bb/missing.dcm") is None
    await store.delete("instances/aa/bb/1.2.3.dcm")
    assert await store.head("instances/aa/bb/1.2.3.dcm") is None
    with pytest.raises(ObjectNotFound):
        await read_all(store, "instances/aa/bb/1.2.3.dcm")


async def test_put_if_absent_keeps_first(store: ObjectStore) -> None:
    first = payload(b"first")
    assert (await store.put("instances/00/11/9.dcm", first)).created
    second = await store.put("instances/00/11/9.dcm", payload(b"second"))
    assert not second.created and second.info.sha256 == first.sha256
    assert await read_all(store, "instances/00/11/9.dcm") == b"first"
    replaced = await store.put("instances/00/11/9.dcm", payload(b"second"), if_absent=False)
    assert replaced.created
    assert await read_all(store, "instances/00/11/9.dcm") == b"second"


async def test_s3_create_if_absent_is_one_conditional_write(s3: S3Store, request: pytest.FixtureRequest) -> None:
    """Both S3 servers here honour If-None-Match: of eight writers of one key at once, exactly one
    creates it (HEAD then PUT would let several write, the last one winning), and the probe that
    found that out left nothing behind. (The filesystem links: create-if-absent already.)"""
    store = s3
    assert store._conditional is None  # not probed before a write (a reading role never probes)
    payloads = [payload(f"writer {i}".encode() * 100) for i in range(8)]
    results = await asyncio.gather(*(store.put("instances/ee/ff/race.dcm", p) for p in payloads))
    assert store._conditional is True
    left = list(store._client.list_objects(store.bucket, prefix=PROBE_PREFIX, recursive=True))
    assert left == []
    created = [p for p, r in zip(payloads, results) if r.created]
    assert len(created) == 1
    assert all(r.info.sha256 == created[0].sha256 for r in results)
    assert hashlib.sha256(await read_all(store, "instances/ee/ff/race.dcm")).hexdigest() == created[0].sha256
    # The upload is signed with the checksum the archive computed: MinIO (as AWS) refuses a body
    # that does not match it, and nothing is stored; SeaweedFS checks the signature, not the body.
    wrong = hashlib.sha256(b"other").hexdigest()
    if "minio" in request.node.name:
        with pytest.raises(S3Error, match="XAmzContentSHA256Mismatch"):
            minio_compat.put_if_absent(store._client, store.bucket, "instances/ee/ff/bad.dcm", b"body", {}, wrong)
        assert await store.head("instances/ee/ff/bad.dcm") is None
    else:
        assert minio_compat.put_if_absent(store._client, store.bucket, "instances/ee/ff/bad.dcm", b"body", {}, wrong)
    store._conditional = False  # a server without conditional writes: HEAD, then PUT
    again = await store.put("instances/ee/ff/race.dcm", payloads[0])
    assert not again.created and again.info.sha256 == created[0].sha256
    assert (await store.put("instances/ee/ff/other.dcm", payloads[0])).created


async def test_large_object_streams_multipart(store: ObjectStore, tmp_path: Path) -> None:
    big = tmp_path / "big"
    with open(big, "wb") as fh:
        for _ in range(12):
            fh.write(os.urandom(1024 * 1024))
    p = payload(b"H" * 132, big)
    assert (await store.put("instances/cc/dd/big.dcm", p)).created
    info = await store.head("instances/cc/dd/big.dcm")
    assert info is not None and info.size == p.size and info.sha256 == p.sha256
    digest = hashlib.sha256()
    async for chunk in store.get("instances/cc/dd/big.dcm"):
        assert len(chunk) <= 1 << 20  # streamed, never the whole object at once
        digest.update(chunk)
    assert digest.hexdigest() == p.sha256


async def test_list_prefix(store: ObjectStore) -> None:
    for i in range(5):
        await store.put(f"instances/0{i}/00/{i}.dcm", payload(str(i).encode()))
    await store.put("other/x", payload(b"x"))
    keys = sorted([info.key async for info in store.list("instances/")])
    assert keys == [f"instances/0{i}/00/{i}.dcm" for i in range(5)]


async def test_filesystem_refuses_unsafe_keys(tmp_path: Path) -> None:
    store = FilesystemStore(tmp_path / "objects")
    await store.migrate()
    for key in ("../escape", "/abs", "a/../../b", "a//b", ""):
        with pytest.raises(ValueError):
            await store.put(key, payload(b"x"))
    assert not (tmp_path / "escape").exists()
    await store.close()


async def test_adoptable_payload_is_stored_and_kept_first(store: ObjectStore, tmp_path: Path) -> None:
    """A receiver's spool file that is the whole object: stored as is, first kept, replaceable."""
    spool = tmp_path / "spool-1.dcm"
    spool.write_bytes(os.urandom(50_000))
    first = Payload((spool,), payload(spool).size, payload(spool).sha256, adoptable=True)
    assert (await store.put("instances/ad/op/1.dcm", first)).created
    body = spool.read_bytes()
    spool.unlink()  # the receiver removes its spool name after the commit
    assert await read_all(store, "instances/ad/op/1.dcm") == body
    info = await store.head("instances/ad/op/1.dcm")
    assert info is not None and info.sha256 == first.sha256 and info.size == len(body)

    other = tmp_path / "spool-2.dcm"
    other.write_bytes(b"different")
    second = Payload((other,), len(b"different"), hashlib.sha256(b"different").hexdigest(), adoptable=True)
    kept = await store.put("instances/ad/op/1.dcm", second)
    assert not kept.created and kept.info.sha256 == first.sha256
    assert await read_all(store, "instances/ad/op/1.dcm") == body
    assert (await store.put("instances/ad/op/1.dcm", second, if_absent=False)).created
    assert await read_all(store, "instances/ad/op/1.dcm") == b"different"
    assert [i.key async for i in store.list("instances/ad/")] == ["instances/ad/op/1.dcm"]  # no staging left


async def test_filesystem_links_an_adoptable_payload_and_copies_across_filesystems(tmp_path: Path) -> None:
    store = FilesystemStore(tmp_path / "objects")
    await store.migrate()
    body = b"whole object"
    spool = tmp_path / "spool.dcm"
    spool.write_bytes(body)
    p = Payload((spool,), len(body), hashlib.sha256(body).hexdigest(), adoptable=True)
    assert (await store.put("a/1.dcm", p)).created
    assert (tmp_path / "objects" / "a" / "1.dcm").stat().st_ino == spool.stat().st_ino  # linked, not copied

    # a spool on another filesystem (tmpfs) cannot be linked: the store copies it
    other = Path("/dev/shm")
    if not other.is_dir() or other.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("no second filesystem at /dev/shm")
    with tempfile.NamedTemporaryFile(dir=other, suffix=".dcm") as elsewhere:
        elsewhere.write(body)
        elsewhere.flush()
        p = Payload((Path(elsewhere.name),), len(body), hashlib.sha256(body).hexdigest(), adoptable=True)
        assert (await store.put("a/2.dcm", p)).created
        copied = tmp_path / "objects" / "a" / "2.dcm"
        assert copied.read_bytes() == body and copied.stat().st_dev != os.stat(elsewhere.name).st_dev
    assert not list((tmp_path / "objects" / "a").glob(".tmp-*"))
    await store.close()
