"""DICOM Upper Layer PDUs (PS3.8 9.3) and DIMSE command sets (PS3.7 E), by hand.

Only what a C-ECHO / C-STORE / C-FIND acceptor needs: parse A-ASSOCIATE-RQ (and its SOP
Class Extended Negotiation), build A-ASSOCIATE-AC/RJ, A-RELEASE-RP, A-ABORT and P-DATA-TF,
decode a request command set (C-CANCEL's too) and encode its response. Everything is little ``struct`` work;
no pydicom ``Dataset`` is built on the hot path.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from archive.core.uids import encode_uid
from archive.ingest.describe import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION

# PS3.8 9.3.1: PDU types
A_ASSOCIATE_RQ = 0x01
A_ASSOCIATE_AC = 0x02
A_ASSOCIATE_RJ = 0x03
P_DATA_TF = 0x04
A_RELEASE_RQ = 0x05
A_RELEASE_RP = 0x06
A_ABORT = 0x07

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"  # PS3.7 A.2.1

# PS3.8 9.3.3.2 Table 9-18: presentation context results
CONTEXT_ACCEPTED = 0
ABSTRACT_SYNTAX_NOT_SUPPORTED = 3
TRANSFER_SYNTAXES_NOT_SUPPORTED = 4

# PS3.8 9.3.8 Table 9-26: A-ABORT source 2 (service-provider) reasons
ABORT_NOT_SPECIFIED = 0
ABORT_UNRECOGNIZED_PDU = 1
ABORT_UNEXPECTED_PDU = 2
ABORT_UNRECOGNIZED_PARAMETER = 4
ABORT_UNEXPECTED_PARAMETER = 5
ABORT_INVALID_PARAMETER = 6

# PS3.7 E.1: Command Field values
C_STORE_RQ = 0x0001
C_STORE_RSP = 0x8001
C_ECHO_RQ = 0x0030
C_ECHO_RSP = 0x8030
C_FIND_RQ = 0x0020
C_FIND_RSP = 0x8020
C_CANCEL_RQ = 0x0FFF
NO_DATASET = 0x0101  # Command Data Set Type (0000,0800): no dataset follows
WITH_DATASET = 0x0001  # any other value: a dataset follows (PS3.7 E.1)

# Sanity caps: nothing a real peer sends comes near them.
MAX_ASSOCIATE_RQ = 1 << 16  # A-ASSOCIATE-RQ variable part
MAX_COMMAND = 1 << 16  # one command set, all fragments together

_HEADER = struct.Struct(">BxI")  # PDU type, reserved, length (PS3.8 9.3.1)
_ITEM = struct.Struct(">BxH")  # item type, reserved, length (PS3.8 9.3.2.x)
_PDV = struct.Struct(">IBB")  # PDV length, presentation context ID, message control header
_ELEMENT = struct.Struct("<HHI")  # implicit VR LE: group, element, length (PS3.5 7.1.3)


class ProtocolError(Exception):
    """The peer broke PS3.8; the association is aborted with ``reason``."""

    def __init__(self, detail: str, reason: int = ABORT_INVALID_PARAMETER) -> None:
        super().__init__(detail)
        self.reason = reason


@dataclass(frozen=True)
class ProposedContext:
    context_id: int
    abstract_syntax: str
    transfer_syntaxes: tuple[str, ...]


@dataclass
class AssociateRQ:
    protocol_version: int
    called_aet: str
    calling_aet: str
    raw_aets: bytes  # bytes 11-42 and 43-74 (AE titles + reserved), echoed in the AC
    application_context: str
    contexts: list[ProposedContext] = field(default_factory=list)
    max_length: int = 0  # the peer's maximum P-DATA-TF length; 0 = unlimited
    implementation_class_uid: str = ""
    implementation_version: str = ""
    extended: dict[str, bytes] = field(default_factory=dict)  # SOP class -> its application information


def pdu_header(data: bytes | memoryview) -> tuple[int, int]:
    """(type, length) of a 6-byte PDU header."""
    kind, length = _HEADER.unpack(data)
    return kind, length


def associate_rq_length(header: bytes) -> int:
    """The length of the A-ASSOCIATE-RQ this 6-byte PDU header announces (PS3.8 9.3.2)."""
    kind, length = pdu_header(header)
    if kind != A_ASSOCIATE_RQ:
        raise ProtocolError(f"expected A-ASSOCIATE-RQ, got PDU 0x{kind:02X}", ABORT_UNEXPECTED_PDU)
    if length > MAX_ASSOCIATE_RQ:
        raise ProtocolError(f"A-ASSOCIATE-RQ of {length} bytes, more than {MAX_ASSOCIATE_RQ}")
    return length


def pdv_header(data: bytes | memoryview) -> tuple[int, int, int]:
    """(length incl. context id and control byte, context id, message control header)."""
    return _PDV.unpack(data)


def _uid(raw: bytes) -> str:
    return raw.rstrip(b"\x00 ").decode("ascii", "replace").strip()


def _items(body: bytes, start: int, end: int) -> list[tuple[int, bytes]]:
    """Split a run of items; a length running past ``end`` is malformed."""
    out = []
    pos = start
    while pos < end:
        if pos + 4 > end:
            raise ProtocolError(f"truncated item header at byte {pos}: {end - pos} of its 4 bytes")
        kind, length = _ITEM.unpack_from(body, pos)
        pos += 4
        if pos + length > end:
            raise ProtocolError(f"item 0x{kind:02X} of {length} bytes at byte {pos - 4} runs past its parent "
                                f"({end - pos} bytes left)")
        out.append((kind, body[pos:pos + length]))
        pos += length
    return out


def parse_associate_rq(body: bytes) -> AssociateRQ:
    """The variable part of an A-ASSOCIATE-RQ (PS3.8 9.3.2), after the 6-byte header."""
    if len(body) < 68:
        raise ProtocolError(f"A-ASSOCIATE-RQ of {len(body)} bytes, shorter than its 68 bytes of fixed fields")
    version = struct.unpack_from(">H", body, 0)[0]
    rq = AssociateRQ(
        protocol_version=version,
        called_aet=body[4:20].decode("ascii", "replace").strip(),
        calling_aet=body[20:36].decode("ascii", "replace").strip(),
        raw_aets=body[4:68],
        application_context="",
    )
    for kind, value in _items(body, 68, len(body)):
        if kind == 0x10:  # 9.3.2.1 Application Context
            rq.application_context = _uid(value)
        elif kind == 0x20:  # 9.3.2.2 Presentation Context
            if len(value) < 4:
                raise ProtocolError(f"presentation context item of {len(value)} bytes, shorter than its 4 fixed bytes")
            abstract = ""
            syntaxes: list[str] = []
            for sub, sub_value in _items(value, 4, len(value)):
                if sub == 0x30:
                    abstract = _uid(sub_value)
                elif sub == 0x40:
                    syntaxes.append(_uid(sub_value))
            rq.contexts.append(ProposedContext(value[0], abstract, tuple(syntaxes)))
        elif kind == 0x50:  # 9.3.2.3 User Information
            for sub, sub_value in _items(value, 0, len(value)):
                if sub == 0x51 and len(sub_value) == 4:  # PS3.8 D.1 Maximum Length
                    rq.max_length = struct.unpack(">I", sub_value)[0]
                elif sub == 0x52:  # PS3.7 D.3.3.2 Implementation Class UID
                    rq.implementation_class_uid = _uid(sub_value)
                elif sub == 0x55:  # PS3.7 D.3.3.2 Implementation Version Name
                    rq.implementation_version = sub_value.decode("ascii", "replace").strip()
                elif sub == 0x56 and len(sub_value) >= 2:  # PS3.7 D.3.3.5 SOP Class Extended Negotiation
                    size = struct.unpack_from(">H", sub_value)[0]
                    if 2 + size <= len(sub_value):
                        rq.extended[_uid(sub_value[2:2 + size])] = bytes(sub_value[2 + size:])
                # other sub-items (async ops, role selection, user identity) are not
                # negotiated: omitted from the AC (PS3.7 D.3.3)
        # unknown item types are skipped (PS3.8 9.3.1: shall be ignored)
    if not rq.application_context:
        raise ProtocolError("A-ASSOCIATE-RQ without an application context item")
    if not rq.contexts:
        raise ProtocolError("A-ASSOCIATE-RQ without presentation contexts")
    return rq


def _item(kind: int, value: bytes) -> bytes:
    return _ITEM.pack(kind, len(value)) + value


def _pdu(kind: int, body: bytes) -> bytes:
    return _HEADER.pack(kind, len(body)) + body


def associate_ac(rq: AssociateRQ, results: list[tuple[int, int, str]], max_length: int,
                 extended: dict[str, bytes] | None = None) -> bytes:
    """A-ASSOCIATE-AC (PS3.8 9.3.3); ``results`` = (context id, result, transfer syntax);
    ``extended``: the SOP Class Extended Negotiation answers (PS3.7 D.3.3.5)."""
    parts = [struct.pack(">HH", 1, 0), rq.raw_aets, _item(0x10, APPLICATION_CONTEXT.encode())]
    for context_id, result, syntax in results:
        # 9.3.3.2: the transfer syntax sub-item is ignored unless the result is acceptance
        sub = _item(0x40, syntax.encode()) if syntax else b""
        parts.append(_item(0x21, struct.pack(">BxBx", context_id, result) + sub))
    user = (
        _item(0x51, struct.pack(">I", max_length))
        + _item(0x52, IMPLEMENTATION_CLASS_UID.encode())
        + _item(0x55, IMPLEMENTATION_VERSION.encode())
    )
    for uid, info in (extended or {}).items():
        raw = uid.encode()
        user += _item(0x56, struct.pack(">H", len(raw)) + raw + info)
    parts.append(_item(0x50, user))
    return _pdu(A_ASSOCIATE_AC, b"".join(parts))


def associate_rj(result: int, source: int, reason: int) -> bytes:
    """A-ASSOCIATE-RJ (PS3.8 9.3.4)."""
    return _pdu(A_ASSOCIATE_RJ, struct.pack(">xBBB", result, source, reason))


def release_rp() -> bytes:
    return _pdu(A_RELEASE_RP, bytes(4))  # PS3.8 9.3.7


def abort(source: int = 2, reason: int = ABORT_NOT_SPECIFIED) -> bytes:
    return _pdu(A_ABORT, struct.pack(">xxBB", source, reason))  # PS3.8 9.3.8


def p_data(context_id: int, data: bytes, max_length: int, *, command: bool = True) -> bytes:
    """P-DATA-TF PDUs carrying a command set (or a dataset), one PDV per PDU, fragmented to
    the peer's maximum length (PS3.8 9.3.5, Annex E: PDV item = 4 + 2 + fragment)."""
    room = len(data) if max_length == 0 else max(1, max_length - 6)
    out = []
    for start in range(0, len(data), room):
        fragment = data[start:start + room]
        last = start + room >= len(data)
        control = (0x02 if last else 0x00) | (0x01 if command else 0x00)  # bit 0: command, bit 1: last
        out.append(_pdu(P_DATA_TF, _PDV.pack(len(fragment) + 2, context_id, control) + fragment))
    return b"".join(out)


@dataclass(frozen=True)
class Command:
    """The request fields of a command set we use (PS3.7 9.3.1, 9.3.5)."""

    field: int
    message_id: int  # 0 in a C-CANCEL-RQ, which has none
    sop_class_uid: str
    sop_instance_uid: str
    has_dataset: bool
    responding_to: int = 0  # C-CANCEL-RQ: the Message ID of the request it cancels


def decode_command(raw: bytes) -> Command:
    """Group 0000 in implicit VR little endian (PS3.7 6.3.1)."""
    values: dict[int, bytes] = {}
    pos, end = 0, len(raw)
    while pos < end:
        if pos + 8 > end:
            raise ProtocolError(f"truncated command element header at byte {pos}")
        group, element, length = _ELEMENT.unpack_from(raw, pos)
        pos += 8
        if group != 0x0000:
            raise ProtocolError(f"command set element ({group:04X},{element:04X}) is not in group 0000")
        if pos + length > end:
            raise ProtocolError(f"command element (0000,{element:04X}) of {length} bytes runs past the command set")
        values[element] = raw[pos:pos + length]
        pos += length

    def us(element: int) -> int:
        value = values.get(element, b"")
        if len(value) != 2:
            raise ProtocolError(f"command element (0000,{element:04X}) missing or not US")
        return int(struct.unpack("<H", value)[0])

    command_field = us(0x0100)
    cancel = command_field == C_CANCEL_RQ  # PS3.7 9.3.2.3: Message ID Being Responded To only
    return Command(
        field=command_field,
        message_id=0 if cancel else us(0x0110),
        sop_class_uid=_uid(values.get(0x0002, b"")),
        sop_instance_uid=_uid(values.get(0x1000, b"")),
        has_dataset=us(0x0800) != NO_DATASET,
        responding_to=us(0x0120) if cancel else 0,
    )


def _element(element: int, value: bytes) -> bytes:
    return _ELEMENT.pack(0, element, len(value)) + value


def encode_response(field: int, message_id: int, sop_class_uid: str, sop_instance_uid: str,
                    status: int, comment: str = "", *, has_dataset: bool = False) -> bytes:
    """A response command set (PS3.7 9.3.1.2, 9.3.2.2, 9.3.5.2), elements in tag order."""
    body = [_element(0x0002, encode_uid(sop_class_uid)),
            _element(0x0100, struct.pack("<H", field)),
            _element(0x0120, struct.pack("<H", message_id)),
            _element(0x0800, struct.pack("<H", WITH_DATASET if has_dataset else NO_DATASET)),
            _element(0x0900, struct.pack("<H", status))]
    if comment and status != 0:
        text = comment[:64].encode("ascii", "replace")
        body.append(_element(0x0902, text + b" " if len(text) % 2 else text))  # LO, space padded
    if sop_instance_uid:
        body.append(_element(0x1000, encode_uid(sop_instance_uid)))
    group = b"".join(body)
    return _element(0x0000, struct.pack("<I", len(group))) + group
