"""The DIMSE message being received: its command set, then a spool file and its digest
(a C-FIND's small identifier stays in memory).

A C-STORE's dataset goes from the receive buffer into a spool file that starts with the File
Meta the stored object will have (built from the command's UIDs), so that the file can become
the object without a copy. Each fragment is digested as it is written, on the event loop, from
the same view of the receive buffer (:mod:`stream`): a hashing thread would need its own copy
of the bytes, and its hand-offs measured no faster (docs/benchmarks.md).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path
from typing import BinaryIO

from archive.core.uids import uid_problem
from archive.ingest.describe import file_meta_bytes
from archive.ingest.service import Spooled
from archive.scp.asyncio_engine import pdu


def stored_header(command: pdu.Command, syntax: str) -> bytes:
    """The File Meta a C-STORE's object will start with, if the command's UIDs can make one."""
    if command.field != pdu.C_STORE_RQ or uid_problem(command.sop_class_uid) or uid_problem(command.sop_instance_uid):
        return b""  # prepare() refuses the instance or rebuilds the header from the dataset
    return file_meta_bytes(command.sop_class_uid, command.sop_instance_uid, syntax)


class Message:
    """Command bytes, then (if the command announces one) the dataset in a spool file."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.context_id = 0
        self.command = bytearray()
        self.parsed: pdu.Command | None = None
        self.expect_dataset = False
        self.spool: BinaryIO | None = None
        self.inline: bytearray | None = None  # a C-FIND's identifier, kept in memory instead
        self.path: Path | None = None
        self.header = b""
        self.digest: hashlib._Hash | None = None  # with a header: of the whole file
        self.size = 0

    def open(self, directory: Path, header: bytes) -> None:
        """Start the spool file; with a header, digest it all as it is written."""
        fd, name = tempfile.mkstemp(prefix="asyncio-", suffix=".dcm", dir=directory)
        self.spool, self.path = os.fdopen(fd, "wb"), Path(name)
        self.header = header
        if header:
            self.spool.write(header)
            self.digest, self.size = hashlib.sha256(header), len(header)

    def write(self, fragment: bytes | memoryview) -> None:
        """Append a dataset fragment (a view of the receive buffer: used before returning)."""
        assert self.spool is not None
        self.spool.write(fragment)
        if self.digest is not None:
            self.digest.update(fragment)
            self.size += len(fragment)

    def spooled(self) -> Spooled | None:
        """The spool file as the object it will become (None: no header, nothing digested)."""
        if self.digest is None:
            return None
        return Spooled(self.header, self.size, self.digest.hexdigest())

    def close(self) -> Path:
        assert self.spool is not None and self.path is not None
        self.spool.close()
        return self.path

    def discard(self) -> None:
        if self.spool is not None and self.path is not None:
            self.spool.close()
            with contextlib.suppress(OSError):
                os.unlink(self.path)
        self.spool = None
        self.path = None
