"""Object store on a local filesystem (the embedded default).

Writes go to a temporary file in the target directory, are fsynced, and are
published with ``os.link`` (atomic, fails if the key exists) so that a
concurrent or crashed writer never leaves a half-written object under a key.
An adoptable payload (a receiver's spool file that already is the whole object)
is fsynced and linked in place, without a copy, when it is on the same filesystem.
The SHA-256 is kept in an extended attribute when the filesystem supports it.
"""

from __future__ import annotations

import errno
import hashlib
import os
import tempfile
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

from archive.adapters._executor import Blocking
from archive.core.errors import BackendUnavailable, ObjectNotFound
from archive.core.models import FilePart, ObjectInfo, Payload, PutResult

_XATTR = "user.archive.sha256"
_CHUNK = 1 << 20


def _safe_key(key: str) -> str:
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\x00" in key:
        raise ValueError(f"unsafe object key {key!r}")
    return key


class FilesystemStore:
    name = "filesystem"

    def __init__(self, root: Path, fsync: bool = True) -> None:
        self.root = Path(root)
        self.fsync = fsync
        self.syncs_adoptable = fsync  # an adoptable payload's file is fsynced, then linked
        self._io = Blocking("fs-store", workers=8)

    def _path(self, key: str) -> Path:
        return self.root / _safe_key(key)

    async def migrate(self) -> None:
        await self._io.run(self.root.mkdir, parents=True, exist_ok=True)

    async def ping(self) -> None:
        if not os.access(self.root, os.W_OK):
            raise BackendUnavailable("object store", f"{self.root} is not writable")

    async def close(self) -> None:
        self._io.shutdown()

    def _fsync_path(self, path: Path) -> None:
        """fsync a file or a directory (a directory holds the names just linked in it)."""
        if self.fsync:
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def _adopt(self, key: str, target: Path, payload: Payload, if_absent: bool) -> PutResult | None:
        """Link an adoptable payload's file in place; None when it is on another filesystem."""
        (part,) = payload.parts
        source = part.path if isinstance(part, FilePart) else part
        assert isinstance(source, Path) and (not isinstance(part, FilePart) or part.offset == 0)
        self._fsync_path(source)
        try:
            os.setxattr(source, _XATTR, payload.sha256.encode("ascii"))
        except OSError:
            pass  # no xattr support: head() computes the checksum instead
        try:
            if if_absent:
                os.link(source, target)
            else:
                staged = target.parent / f".tmp-{uuid.uuid4().hex}"
                os.link(source, staged)
                try:
                    os.replace(staged, target)
                except OSError:
                    staged.unlink(missing_ok=True)
                    raise
        except FileExistsError:
            existing = self._head(key)
            assert existing is not None
            return PutResult(created=False, info=existing)
        except OSError as exc:
            if exc.errno in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
                return None  # another filesystem, or links not allowed: copy instead
            raise
        self._fsync_path(target.parent)
        return PutResult(created=True, info=ObjectInfo(key, payload.size, payload.sha256))

    def _put(self, key: str, payload: Payload, if_absent: bool) -> PutResult:
        target = self._path(key)
        if payload.adoptable:
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                adopted = self._adopt(key, target, payload, if_absent)
            except OSError as exc:
                raise BackendUnavailable("object store", f"{exc.strerror or exc}") from exc
            if adopted is not None:
                return adopted
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        except OSError as exc:
            raise BackendUnavailable("object store", str(exc)) from exc
        try:
            with os.fdopen(fd, "wb") as fh:
                for chunk in payload.chunks(_CHUNK):
                    fh.write(chunk)
                fh.flush()
                if self.fsync:
                    os.fsync(fh.fileno())
            try:
                os.setxattr(tmp, _XATTR, payload.sha256.encode("ascii"))
            except OSError:
                pass  # no xattr support: head() computes the checksum instead
            if if_absent:
                try:
                    os.link(tmp, target)
                except FileExistsError:
                    existing = self._head(key)
                    assert existing is not None
                    return PutResult(created=False, info=existing)
            else:
                os.replace(tmp, target)
            self._fsync_path(target.parent)
            return PutResult(created=True, info=ObjectInfo(key, payload.size, payload.sha256))
        except OSError as exc:  # disk full, read-only, permissions, I/O: the store cannot take it now
            raise BackendUnavailable("object store", f"{exc.strerror or exc}") from exc
        finally:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass

    async def put(self, key: str, payload: Payload, *, if_absent: bool = True) -> PutResult:
        return await self._io.run(self._put, key, payload, if_absent)

    def _head(self, key: str) -> ObjectInfo | None:
        path = self._path(key)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return None
        try:
            sha = os.getxattr(path, _XATTR).decode("ascii")
        except OSError:
            digest = hashlib.sha256()
            with open(path, "rb") as fh:
                while chunk := fh.read(_CHUNK):
                    digest.update(chunk)
            sha = digest.hexdigest()
        return ObjectInfo(key, size, sha)

    async def head(self, key: str) -> ObjectInfo | None:
        return await self._io.run(self._head, key)

    async def get(self, key: str) -> AsyncIterator[bytes]:
        path = self._path(key)
        try:
            fh = await self._io.run(open, path, "rb")
        except FileNotFoundError as exc:
            raise ObjectNotFound(key) from exc
        try:
            while chunk := await self._io.run(fh.read, _CHUNK):
                yield chunk
        finally:
            fh.close()

    def _get_range(self, key: str, start: int, length: int) -> bytes:
        try:
            with open(self._path(key), "rb") as fh:
                fh.seek(start)
                return fh.read(length)
        except FileNotFoundError as exc:
            raise ObjectNotFound(key) from exc

    async def get_range(self, key: str, start: int, length: int) -> bytes:
        return await self._io.run(self._get_range, key, start, length)

    def _delete(self, key: str) -> None:
        try:
            self._path(key).unlink()
        except FileNotFoundError:
            pass

    async def delete(self, key: str) -> None:
        await self._io.run(self._delete, key)

    def _list_dir(self, directory: Path) -> tuple[list[Path], list[Path]]:
        dirs: list[Path] = []
        files: list[Path] = []
        try:
            with os.scandir(directory) as it:
                for entry in it:
                    if entry.name.startswith(".tmp-"):
                        continue
                    (dirs if entry.is_dir(follow_symlinks=False) else files).append(Path(entry.path))
        except FileNotFoundError:
            pass
        return sorted(dirs), sorted(files)

    async def list(self, prefix: str = "") -> AsyncIterator[ObjectInfo]:
        stack = [self.root]
        while stack:
            directory = stack.pop()
            dirs, files = await self._io.run(self._list_dir, directory)
            stack.extend(reversed(dirs))
            for path in files:
                key = path.relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    info = await self._io.run(self._head, key)
                    if info is not None:
                        yield info
