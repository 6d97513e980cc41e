"""Target ``pdu``: the asyncio receiver's Upper Layer and DIMSE decoding on a byte stream.

The input is what a peer sends on the DICOM port: it is fed to a real
:class:`~archive.scp.asyncio_engine.association.Association` (PS3.8 9.2 state machine:
A-ASSOCIATE-RQ parse, P-DATA-TF/PDV walk, command set decode, dataset spool, release and
abort) on its :class:`~archive.scp.asyncio_engine.stream.PduStream`, fed in pieces of
varying size (as a socket delivers them) by an in-memory transport that honours its flow
control. The association must end on its own, whatever the bytes: a peer cannot make
:meth:`Association.run` raise, hang or answer with a malformed PDU (no timeouts are set, so
a wait that does not end fails the input instead of timing out). C-STOREs reach a store that
accepts without parsing (the header parse is the ``describe`` target). The pure functions
are checked on the side: every A-ASSOCIATE-RQ that parses can be answered
(``associate_ac``), every command set that decodes can be answered.
"""

from __future__ import annotations

import asyncio
import struct
import tempfile
from pathlib import Path
from typing import Any

from archive.core.audit import NoAudit, StudyTally
from archive.ingest.service import Received
from archive.scp.access import AccessPolicy
from archive.scp.asyncio_engine import pdu
from archive.scp.asyncio_engine.association import Association, AssociationContext
from archive.scp.asyncio_engine.stream import PduStream
from archive.scp.status import SUCCESS, Status

EXPECTED: tuple[type[BaseException], ...] = (pdu.ProtocolError,)  # from the pure parsers only
_STATE: dict[str, Any] = {}


class _Transport:
    """The socket end of the association: collects what the archive sends, obeys pause/resume."""

    def __init__(self, protocol: PduStream) -> None:
        self.protocol = protocol
        self.sent = bytearray()
        self.reading = asyncio.Event()
        self.reading.set()
        self.closing = False

    def get_extra_info(self, name: str) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else None

    def write(self, data: bytes) -> None:
        self.sent += data
        if len(self.sent) & 1 and not self.closing:  # now and then, a peer slow to read
            self.protocol.pause_writing()
            asyncio.get_running_loop().call_soon(self._resume_writing)

    def _resume_writing(self) -> None:
        if not self.closing:
            self.protocol.resume_writing()

    def is_closing(self) -> bool:
        return self.closing

    def pause_reading(self) -> None:
        self.reading.clear()

    def resume_reading(self) -> None:
        self.reading.set()

    def close(self) -> None:
        if not self.closing:
            self.closing = True
            self.reading.set()  # a feeder held back by a full buffer sees the end
            asyncio.get_running_loop().call_soon(self.protocol.connection_lost, None)

    abort = close

    async def feed(self, data: bytes) -> None:
        """``data`` into the protocol's buffer in pieces of 1 byte to 64 KiB, one to four of
        them a turn of the loop (as a socket's reads come), then EOF."""
        pos, step = 0, 0
        while pos < len(data) and not self.closing:
            await self.reading.wait()
            for _ in range(1 + data[pos] % 4):
                if self.closing or not self.reading.is_set() or pos >= len(data):
                    break
                room = self.protocol.get_buffer(-1)
                step += 1
                n = min(len(room), len(data) - pos, 1 + (data[pos] * step * 257) % (64 << 10))
                room[:n] = data[pos:pos + n]
                pos += n
                self.protocol.buffer_updated(n)
            await asyncio.sleep(0)
        if not self.closing:
            self.protocol.eof_received()


async def _store(received: Received, abstract_syntax: str, tally: StudyTally | None = None,
                 address: str = "") -> Status:
    return SUCCESS


def _context() -> AssociationContext:
    if "context" not in _STATE:
        spool = Path(tempfile.mkdtemp(prefix="fuzz-pdu-"))
        _STATE["context"] = AssociationContext(
            aet="ARCHIVE", check_called_aet=False, policy=AccessPolicy(), load=lambda: 1, max_associations=4,
            # no timeouts: all input comes at once, so a wait that does not end is a bug, which
            # _run's wait_for reports instead of a timeout hiding it
            max_pdu=16384, acse_timeout=0, network_timeout=0, spool=spool, store=_store, audit=NoAudit())
        _STATE["loop"] = asyncio.new_event_loop()
    context: AssociationContext = _STATE["context"]
    return context


async def _run(data: bytes) -> bytes:
    stream = PduStream()
    transport = _Transport(stream)
    stream.connection_made(transport)  # type: ignore[arg-type]
    feeder = asyncio.create_task(transport.feed(data))
    association = Association(_context(), stream)
    await asyncio.wait_for(association.run(), 10.0)  # all input comes at once: only a bug waits
    await asyncio.wait_for(feeder, 10.0)
    return bytes(transport.sent)


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
