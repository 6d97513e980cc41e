"""Target ``pdu``: the asyncio receiver's Upper Layer and DIMSE decoding on a byte stream.

The input is what a peer sends on the DICOM port: it is fed to a real
:class:`~archive.scp.asyncio_engine.association.Association` (PS3.8 9.2 state machine:
A-ASSOCIATE-RQ parse, P-DATA-TF/PDV walk, command set decode, dataset spool, release and
abort) over an in-memory stream. The association must end on its own, whatever the bytes:
a peer cannot make :meth:`Association.run` raise, hang or answer with a malformed PDU.
C-STOREs reach a store that accepts without parsing (the header parse is the ``describe``
target). The pure functions are checked on the side: every A-ASSOCIATE-RQ that parses can
be answered (``associate_ac``), every command set that decodes can be answered.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import struct
import tempfile
from pathlib import Path
from typing import Any

from archive.core.audit import NoAudit, StudyTally
from archive.ingest.service import Received
from archive.scp.access import AccessPolicy
from archive.scp.asyncio_engine import pdu
from archive.scp.asyncio_engine.association import Association, AssociationContext
from archive.scp.status import SUCCESS, Status

EXPECTED: tuple[type[BaseException], ...] = (pdu.ProtocolError,)  # from the pure parsers only
_STATE: dict[str, Any] = {}


class _Writer:
    """The transport end of the association: collects what the archive sends."""

    def __init__(self) -> None:
        self.sent = bytearray()
        self.transport = self

    def get_extra_info(self, name: str) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else None

    def write(self, data: bytes) -> None:
        self.sent += data

    async def drain(self) -> None:
        return None

    def close(self) -> None:
        return None

    async def wait_closed(self) -> None:
        return None

    def abort(self) -> None:
        return None


async def _store(received: Received, abstract_syntax: str, tally: StudyTally | None = None,
                 address: str = "") -> Status:
    return SUCCESS


def _context() -> AssociationContext:
    if "context" not in _STATE:
        spool = Path(tempfile.mkdtemp(prefix="fuzz-pdu-"))
        _STATE["context"] = AssociationContext(
            aet="ARCHIVE", check_called_aet=False, policy=AccessPolicy(), load=lambda: 1, max_associations=4,
            max_pdu=16384, acse_timeout=5.0, network_timeout=5.0, spool=spool,
            hasher=concurrent.futures.ThreadPoolExecutor(1), store=_store, audit=NoAudit())
        _STATE["loop"] = asyncio.new_event_loop()
    context: AssociationContext = _STATE["context"]
    return context


async def _run(data: bytes) -> bytes:
    reader = asyncio.StreamReader(limit=1 << 20)
    reader.feed_data(data)
    reader.feed_eof()
    writer = _Writer()
    association = Association(_context(), reader, writer)  # type: ignore[arg-type]
    await asyncio.wait_for(association.run(), 10.0)  # all input is there: only a bug waits
    return bytes(writer.sent)


def _check_answer(sent: bytes) -> None:
    """What the archive sent is a sequence of well-framed PDUs (PS3.8 9.3.1)."""
    pos = 0
    while pos < len(sent):
        assert pos + 6 <= len(sent), "truncated PDU header sent"
        kind, length = struct.unpack_from(">BxI", sent, pos)
        assert kind in (pdu.A_ASSOCIATE_AC, pdu.A_ASSOCIATE_RJ, pdu.P_DATA_TF, pdu.A_RELEASE_RP, pdu.A_ABORT), kind
        pos += 6 + length
    assert pos == len(sent), "PDU length disagrees with what was sent"


def _pure(data: bytes) -> None:
    """The parsers called directly: an A-ASSOCIATE-RQ body, and a command set."""
    try:
        rq = pdu.parse_associate_rq(data[6:])
        pdu.associate_ac(rq, [(cx.context_id, 0, cx.transfer_syntaxes[0] if cx.transfer_syntaxes else "")
                              for cx in rq.contexts], 16384)
    except pdu.ProtocolError:
        pass
    try:
        command = pdu.decode_command(data)
    except pdu.ProtocolError:
        return
    rsp = pdu.encode_response(command.field | 0x8000, command.message_id, command.sop_class_uid,
                              command.sop_instance_uid, 0xC000, "fuzz")
    assert pdu.decode_command(rsp + struct.pack("<HHI", 0, 0x0110, 2) + struct.pack("<H", command.message_id))


def fuzz_one(data: bytes) -> None:
    context = _context()
    loop: asyncio.AbstractEventLoop = _STATE["loop"]
    sent = loop.run_until_complete(_run(data))
    _check_answer(sent)
    _pure(data)
    leftovers = list(context.spool.iterdir())
    assert not leftovers, f"spool files left behind: {leftovers}"
