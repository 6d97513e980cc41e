"""Object store on S3 (MinIO, SeaweedFS, AWS) through the ``minio`` client.

Uploads stream from the payload's parts; objects larger than ``part_size`` go
up as multipart uploads, so memory stays bounded by one part. The SHA-256 is
stored as user metadata (``x-amz-meta-sha256``).

Create-if-absent (every instance a receiver stores) is one conditional PutObject
(``If-None-Match: *``; a ``412`` means the key exists) for an object of one part,
when the server honours the header: the store finds that out at its first such
write, by writing a probe key twice (the second write must be refused) and
removing it. Otherwise, and for multipart objects, it asks HEAD first, then PUTs:
two requests, and two writers of one key at once can both write.
"""

from __future__ import annotations

import asyncio
import io
import logging
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import urllib3
from minio.error import MinioException, S3Error

from archive.adapters._executor import Blocking
from archive.compat import minio as minio_compat
from archive.core.errors import BackendUnavailable, ObjectNotFound
from archive.core.models import ObjectInfo, Payload, PutResult

log = logging.getLogger(__name__)

_META = "sha256"
PROBE_PREFIX = ".archive-probe/"  # conditional-write probes: never an archive key (instances/...)
_NOT_FOUND = {"NoSuchKey", "NoSuchObject", "NotFound", "ResourceNotFound"}
_HEADER_REFUSED = {"NotImplemented", "InvalidArgument", "InvalidRequest"}  # If-None-Match not taken


class _PayloadReader(io.RawIOBase):
    """A read()-able view of a payload for the minio client."""

    def __init__(self, payload: Payload) -> None:
        self._chunks: Iterator[bytes] = payload.chunks()
        self._buffer = bytearray()

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        while size < 0 or len(self._buffer) < size:
            chunk = next(self._chunks, None)
            if chunk is None:
                break
            self._buffer += chunk  # bytearray: amortised append, no quadratic copying
        if size < 0 or size >= len(self._buffer):
            data = bytes(self._buffer)
            self._buffer.clear()
        else:
            data = bytes(self._buffer[:size])
            del self._buffer[:size]
        return data


def _unavailable(exc: Exception) -> BackendUnavailable:
    return BackendUnavailable("object store", f"{type(exc).__name__}: {exc}")


class S3Store:
    name = "s3"
    syncs_adoptable = False  # uploads: an adoptable payload is read like any other

    def __init__(
        self,
        endpoint: str,
        bucket: str,
        access_key: str,
        secret_key: str,
        *,
        secure: bool = False,
        region: str | None = None,
        part_size: int = 8 * 1024 * 1024,
    ) -> None:
        self.bucket = bucket
        self.part_size = part_size
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=5, read=60),
            maxsize=16,
            retries=urllib3.Retry(total=2, backoff_factor=0.2, status_forcelist=(500, 502, 503, 504)),
        )
        self._client = minio_compat.Client(
            endpoint, access_key=access_key, secret_key=secret_key, secure=secure, region=region, http_client=http
        )
        self._io = Blocking("s3-store", workers=16)
        self._conditional: bool | None = None  # If-None-Match honoured; None until probed
        self._probing = asyncio.Lock()

    async def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return await self._io.run(fn, *args, **kwargs)
        except S3Error as exc:
            if exc.code in _NOT_FOUND:
                raise ObjectNotFound(str(kwargs.get("object_name") or (args[1] if len(args) > 1 else ""))) from exc
            raise _unavailable(exc) from exc
        except (MinioException, urllib3.exceptions.HTTPError, OSError) as exc:  # a bare 5xx, a proxy's page
            raise _unavailable(exc) from exc

    async def migrate(self) -> None:
        if not await self._call(self._client.bucket_exists, self.bucket):
            try:
                await self._call(self._client.make_bucket, self.bucket)
            except BackendUnavailable as exc:
                if "BucketAlreadyOwnedByYou" not in str(exc) and "BucketAlreadyExists" not in str(exc):
                    raise

    async def _conditional_writes(self) -> bool:
        """Whether the server refuses a second ``If-None-Match: *`` write of a key: probed at the
        first create-if-absent write (a role that never writes never probes)."""
        async with self._probing:
            if self._conditional is None:
                self._conditional = await self._probe()
                log.info("object store: conditional writes %s",
                         "used" if self._conditional else "not supported: HEAD, then PUT")
        return self._conditional

    async def _probe(self) -> bool:
        key = f"{PROBE_PREFIX}{uuid.uuid4().hex}"
        headers = {"Content-Type": "application/octet-stream"}
        try:
            first = await self._call(minio_compat.put_if_absent, self._client, self.bucket, key, b"1", headers)
            second = await self._call(minio_compat.put_if_absent, self._client, self.bucket, key, b"2", headers)
            return first and not second
        except BackendUnavailable as exc:
            cause = exc.__cause__
            if isinstance(cause, S3Error) and cause.code in _HEADER_REFUSED:
                return False  # the server refused the header itself
            raise  # unreachable, denied, clock skew...: this write fails, the next one probes again
        finally:
            try:
                await self._call(self._client.remove_object, self.bucket, key)
            except BackendUnavailable as exc:  # listings skip the prefix; say so and go on
                log.warning("object store: probe key %s not removed: %s", key, exc)

    def _put_absent(self, key: str, payload: Payload) -> bool:
        headers = {"Content-Type": "application/dicom", f"x-amz-meta-{_META}": payload.sha256}
        data = b"".join(payload.chunks())
        return minio_compat.put_if_absent(self._client, self.bucket, key, data, headers, payload.sha256)

    async def ping(self) -> None:
        if not await self._call(self._client.bucket_exists, self.bucket):
            raise BackendUnavailable("object store", f"bucket {self.bucket} does not exist (run migrate)")

    async def close(self) -> None:
        self._io.shutdown()

    async def put(self, key: str, payload: Payload, *, if_absent: bool = True) -> PutResult:
        if if_absent and payload.size <= self.part_size and await self._conditional_writes():
            for _ in range(3):  # refused, then gone before the HEAD (a delete between): write again
                if await self._call(self._put_absent, key, payload):
                    return PutResult(created=True, info=ObjectInfo(key, payload.size, payload.sha256))
                existing = await self.head(key)
                if existing is not None:
                    return PutResult(created=False, info=existing)
            raise BackendUnavailable("object store", f"{key}: refused as existing, then not found, three times")
        if if_absent:
            # No conditional write: check first. Two writers of the same key at once
            # both write; the last one wins and verify reports a checksum mismatch if
            # their contents differed.
            existing = await self.head(key)
            if existing is not None:
                return PutResult(created=False, info=existing)
        reader = _PayloadReader(payload)
        multipart = payload.size > self.part_size
        await self._call(
            self._client.put_object,
            self.bucket,
            key,
            reader,
            length=-1 if multipart else payload.size,
            part_size=self.part_size if multipart else 0,
            content_type="application/dicom",
            metadata={_META: payload.sha256},
            # One part in flight: memory stays near one part whatever the object's size.
            num_parallel_uploads=1,
        )
        return PutResult(created=True, info=ObjectInfo(key, payload.size, payload.sha256))

    async def head(self, key: str) -> ObjectInfo | None:
        try:
            stat = await self._call(self._client.stat_object, self.bucket, key)
        except ObjectNotFound:
            return None
        meta = {k.lower(): v for k, v in (stat.metadata or {}).items()}
        sha = meta.get(f"x-amz-meta-{_META}") or meta.get(_META)
        return ObjectInfo(key, int(stat.size or 0), sha)

    async def get(self, key: str) -> AsyncIterator[bytes]:
        response = await self._call(self._client.get_object, self.bucket, key)
        try:
            while True:
                chunk = await self._io.run(response.read, 1 << 20)
                if not chunk:
                    break
                yield chunk
        finally:
            response.close()
            response.release_conn()

    async def get_range(self, key: str, start: int, length: int) -> bytes:
        response = await self._call(self._client.get_object, self.bucket, key, offset=start, length=length)
        try:
            return bytes(await self._io.run(response.read))
        finally:
            response.close()
            response.release_conn()

    async def delete(self, key: str) -> None:
        await self._call(self._client.remove_object, self.bucket, key)

    async def list(self, prefix: str = "") -> AsyncIterator[ObjectInfo]:
        iterator = iter(
            await self._call(self._client.list_objects, self.bucket, prefix=prefix, recursive=True)
        )
        sentinel = object()
        while True:
            item = await self._call(next, iterator, sentinel)
            if item is sentinel:
                break
            if item.is_dir or item.object_name.startswith(PROBE_PREFIX):
                continue
            info = await self.head(item.object_name)
            if info is not None:
                yield info
