"""A DICOM requestor on a plain socket, PDU by PDU: for tests that hold an association open or
a C-STORE half-sent (a barrier a serial server cannot pass), and for malformed input.

Built by hand from PS3.8 9.3 (PDUs) and PS3.7 E (command sets), not from the code under test.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator, Sequence

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from tests.factories import dataset_bytes

# PDU types (PS3.8 9.3.1)
A_ASSOCIATE_RQ, A_ASSOCIATE_AC, A_ASSOCIATE_RJ, P_DATA_TF, A_RELEASE_RQ, A_RELEASE_RP, A_ABORT = range(1, 8)
APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"  # PS3.7 A.2.1
C_STORE_RQ = 0x0001
C_FIND_RQ, C_CANCEL_RQ = 0x0020, 0x0FFF
# message control header of a PDV (PS3.8 E.2): bit 0 command, bit 1 last fragment
DATA, COMMAND_LAST, DATA_LAST = 0x00, 0x03, 0x02


def item(kind: int, value: bytes) -> bytes:
    return struct.pack(">BxH", kind, len(value)) + value


def associate_rq(contexts: Sequence[tuple[str, str]] = ((Verification, ImplicitVRLittleEndian),), *,
                 calling: str = "RAWSCU", called: str = "ARCHIVE", unknown_items: bool = False) -> bytes:
    """An A-ASSOCIATE-RQ proposing each (abstract syntax, transfer syntax) as contexts 1, 3, 5...

    ``unknown_items``: with an item and a user-information sub-item of unknown types, which an
    acceptor ignores (PS3.8 9.3.1).
    """
    cxs = b"".join(item(0x20, bytes([2 * n + 1, 0, 0, 0]) + item(0x30, abstract.encode()) + item(0x40, syntax.encode()))
                   for n, (abstract, syntax) in enumerate(contexts))
    user = item(0x51, struct.pack(">I", 16384)) + item(0x52, b"1.2.3.4")
    if unknown_items:
        user += item(0x59, b"unknown sub-item")
    body = (struct.pack(">HH", 1, 0) + called.encode().ljust(16) + calling.encode().ljust(16) + bytes(32)
            + item(0x10, APPLICATION_CONTEXT.encode()) + (item(0x99, b"unknown item") if unknown_items else b"")
            + cxs + item(0x50, user))
    return struct.pack(">BxI", A_ASSOCIATE_RQ, len(body)) + body


def recv_pdu(sock: socket.socket) -> tuple[int, bytes]:
    """The next PDU's type and body; (-1, b"") once the peer has closed."""
    head = sock.recv(6, socket.MSG_WAITALL)
    if len(head) < 6:
        return -1, b""
    kind, length = struct.unpack(">BxI", head)
    return kind, sock.recv(length, socket.MSG_WAITALL)


def element(tag: int, value: bytes) -> bytes:
    """A command element, Implicit VR Little Endian, group 0000."""
    return struct.pack("<HHI", 0, tag, len(value)) + value


def _uid(value: str) -> bytes:
    raw = value.encode()
    return raw + b"\x00" * (len(raw) % 2)


def command(field: int, message_id: int, *, sop_class: str | None = Verification, has_dataset: bool = False,
            sop_instance: str = "", responding_to: int | None = None) -> bytes:
    """A request's command set (PS3.7 E.1): Command Group Length first. ``responding_to``: a
    C-CANCEL-RQ's Message ID Being Responded To (then no Message ID; ``sop_class=None`` for none)."""
    ids = (element(0x0110, struct.pack("<H", message_id)) if responding_to is None
           else element(0x0120, struct.pack("<H", responding_to)))
    body = ((element(0x0002, _uid(sop_class)) if sop_class is not None else b"")
            + element(0x0100, struct.pack("<H", field)) + ids
            + (element(0x0700, struct.pack("<H", 0)) if field in (C_STORE_RQ, C_FIND_RQ) else b"")  # Priority: medium
            + element(0x0800, struct.pack("<H", 0x0000 if has_dataset else 0x0101))
            + (element(0x1000, _uid(sop_instance)) if sop_instance else b""))
    return element(0x0000, struct.pack("<I", len(body))) + body


def p_data(context_id: int, control: int, value: bytes) -> bytes:
    """One P-DATA-TF with one PDV."""
    pdv = struct.pack(">IBB", len(value) + 2, context_id, control) + value
    return struct.pack(">BxI", P_DATA_TF, len(pdv)) + pdv


def pdvs(p_data_body: bytes) -> Iterator[tuple[int, int, bytes]]:
    """(presentation context, message control header, fragment) of each PDV of a P-DATA-TF (PS3.8 9.3.5)."""
    at = 0
    while at < len(p_data_body):
        length, context_id, control = struct.unpack_from(">IBB", p_data_body, at)
        yield context_id, control, p_data_body[at + 6:at + 4 + length]
        at += 4 + length


def response_fields(cmd: bytes) -> tuple[int, bool]:
    """(Status, whether a dataset follows) of a whole response command set."""
    status, follows, at = None, False, 0
    while at + 8 <= len(cmd):
        _, tag, size = struct.unpack_from("<HHI", cmd, at)
        if tag == 0x0900:
            status = int(struct.unpack_from("<H", cmd, at + 8)[0])
        elif tag == 0x0800:
            follows = struct.unpack_from("<H", cmd, at + 8)[0] != 0x0101
        at += 8 + size
    if status is None:
        raise ValueError("no Status in the response")
    return status, follows


def status_of(p_data_body: bytes) -> int:
    """The Status (0000,0900) of the response command in a P-DATA-TF's first PDV."""
    return response_fields(next(pdvs(p_data_body))[2])[0]


class RawAssociation:
    """One association on a plain socket: request, C-STOREs sent in two halves, release."""

    def __init__(self, port: int, contexts: Sequence[tuple[str, str]], *, timeout: float = 10.0) -> None:
        self.contexts = list(contexts)
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self._rest: tuple[int, bytes] | None = None

    @property
    def local_port(self) -> int:
        return int(self.sock.getsockname()[1])

    def associate(self) -> int:
        """The type of the PDU that answers the request (A_ASSOCIATE_AC when accepted)."""
        self.sock.sendall(associate_rq(self.contexts))
        return recv_pdu(self.sock)[0]

    def begin_store(self, ds: Dataset, message_id: int = 1) -> None:
        """Send the C-STORE-RQ and the first half of its dataset: the store is then in flight."""
        context_id = 2 * [str(a) for a, _ in self.contexts].index(str(ds.SOPClassUID)) + 1
        syntax = self.contexts[context_id // 2][1]
        data = dataset_bytes(ds, implicit=syntax == ImplicitVRLittleEndian)
        assert syntax in (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
        cmd = command(C_STORE_RQ, message_id, sop_class=str(ds.SOPClassUID), has_dataset=True,
                      sop_instance=str(ds.SOPInstanceUID))
        half = len(data) // 2
        self.sock.sendall(p_data(context_id, COMMAND_LAST, cmd) + p_data(context_id, DATA, data[:half]))
        self._rest = (context_id, data[half:])

    def finish_store(self) -> int:
        """Send the rest of the dataset; the C-STORE-RSP's Status."""
        assert self._rest is not None
        context_id, rest = self._rest
        self._rest = None
        self.sock.sendall(p_data(context_id, DATA_LAST, rest))
        kind, body = recv_pdu(self.sock)
        assert kind == P_DATA_TF, f"PDU type {kind} instead of the C-STORE-RSP"
        return status_of(body)

    def release(self) -> int:
        """The type of the PDU that answers an A-RELEASE-RQ (A_RELEASE_RP when released)."""
        self.sock.sendall(struct.pack(">BxI", A_RELEASE_RQ, 4) + bytes(4))
        return recv_pdu(self.sock)[0]

    def close(self) -> None:
        self.sock.close()
