"""The asyncio engine's hand-made PDUs (PS3.8 9.3) and command sets (PS3.7 E) against pynetdicom's."""

from __future__ import annotations

import re
import struct
from io import BytesIO

import pytest
from pynetdicom import pdu as pn
from pynetdicom import pdu_primitives as primitives
from pynetdicom.dimse_messages import C_ECHO_RQ, C_STORE_RQ, C_STORE_RSP
from pynetdicom.dimse_primitives import C_ECHO, C_STORE
from pynetdicom.dsutils import decode, encode
from pynetdicom.presentation import build_context

from archive.ingest.describe import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION
from archive.scp.asyncio_engine import pdu

CT = "1.2.840.10008.5.1.4.1.1.2"
VERIFICATION = "1.2.840.10008.1.1"
EXPLICIT, IMPLICIT = "1.2.840.10008.1.2.1", "1.2.840.10008.1.2"


def _pynetdicom_rq(*, user: bool = True) -> bytes:
    """An A-ASSOCIATE-RQ as pynetdicom encodes it, with sub-items we do not negotiate."""
    request = primitives.A_ASSOCIATE()
    request.application_context_name = pdu.APPLICATION_CONTEXT
    request.calling_ae_title = "STORESCU"
    request.called_ae_title = "ARCHIVE"
    ct, echo = build_context(CT, [EXPLICIT, IMPLICIT]), build_context(VERIFICATION, [IMPLICIT])
    ct.context_id, echo.context_id = 1, 3
    request.presentation_context_definition_list = [ct, echo]
    if user:
        maximum = primitives.MaximumLengthNotification()
        maximum.maximum_length_received = 16382
        implementation = primitives.ImplementationClassUIDNotification()
        implementation.implementation_class_uid = "1.2.826.0.1.3680043.9.3811.2.0"
        version = primitives.ImplementationVersionNameNotification()
        version.implementation_version_name = "PYNETDICOM_200"
        role = primitives.SCP_SCU_RoleSelectionNegotiation()
        role.sop_class_uid, role.scu_role, role.scp_role = CT, True, True
        identity = primitives.UserIdentityNegotiation()
        identity.user_identity_type, identity.primary_field = 1, b"user"
        request.user_information = [maximum, implementation, version, role, identity]
    return bytes(pn.A_ASSOCIATE_RQ(request).encode())


def _split(stream: bytes) -> list[bytes]:
    """The PDUs of a byte stream."""
    out = []
    while stream:
        _, length = pdu.pdu_header(stream[:6])
        out.append(stream[:6 + length])
        stream = stream[6 + length:]
    return out


# --- round trips against pynetdicom ------------------------------------------------------

def test_associate_rq_from_pynetdicom() -> None:
    raw = _pynetdicom_rq()
    assert pdu.associate_rq_length(raw[:6]) == len(raw) - 6
    rq = pdu.parse_associate_rq(raw[6:])
    assert (rq.protocol_version, rq.called_aet, rq.calling_aet) == (1, "ARCHIVE", "STORESCU")
    assert rq.application_context == pdu.APPLICATION_CONTEXT
    assert rq.contexts == [pdu.ProposedContext(1, CT, (EXPLICIT, IMPLICIT)),
                           pdu.ProposedContext(3, VERIFICATION, (IMPLICIT,))]
    assert rq.max_length == 16382
    assert rq.implementation_class_uid == "1.2.826.0.1.3680043.9.3811.2.0"
    assert rq.implementation_version == "PYNETDICOM_200"


def test_associate_ac_read_by_pynetdicom() -> None:
    rq = pdu.parse_associate_rq(_pynetdicom_rq()[6:])
    raw = pdu.associate_ac(rq, [(1, pdu.CONTEXT_ACCEPTED, EXPLICIT), (3, pdu.ABSTRACT_SYNTAX_NOT_SUPPORTED, "")], 32768)
    ac = pn.A_ASSOCIATE_AC()
    ac.decode(raw)
    assert ac.pdu_length == len(raw) - 6
    accepted = ac.to_primitive()
    assert accepted.application_context_name == pdu.APPLICATION_CONTEXT
    assert (accepted.called_ae_title, accepted.calling_ae_title) == ("ARCHIVE", "STORESCU")  # echoed (PS3.8 9.3.3)
    results = {cx.context_id: (cx.result, cx.transfer_syntax) for cx in accepted.presentation_context_definition_results_list}
    assert results == {1: (pdu.CONTEXT_ACCEPTED, [EXPLICIT]), 3: (pdu.ABSTRACT_SYNTAX_NOT_SUPPORTED, [])}
    assert accepted.maximum_length_received == 32768
    assert accepted.implementation_class_uid == IMPLEMENTATION_CLASS_UID
    user = {type(item).__name__: item for item in accepted.user_information}
    # role selection and user identity are not negotiated: absent from the AC (PS3.7 D.3.3)
    assert set(user) == {"MaximumLengthNotification", "ImplementationClassUIDNotification",
                         "ImplementationVersionNameNotification"}
    assert user["ImplementationVersionNameNotification"].implementation_version_name == IMPLEMENTATION_VERSION


def test_associate_rj_release_rp_and_abort_read_by_pynetdicom() -> None:
    rj = pn.A_ASSOCIATE_RJ()
    rj.decode(pdu.associate_rj(0x02, 0x03, 0x02))
    assert (rj.result, rj.source, rj.reason_diagnostic) == (0x02, 0x03, 0x02)
    rp = pn.A_RELEASE_RP()
    rp.decode(pdu.release_rp())
    assert rp.pdu_type == pdu.A_RELEASE_RP and rp.pdu_length == 4
    abort = pn.A_ABORT_RQ()
    abort.decode(pdu.abort(2, pdu.ABORT_INVALID_PARAMETER))
    assert (abort.source, abort.reason_diagnostic) == (2, pdu.ABORT_INVALID_PARAMETER)


@pytest.mark.parametrize("max_length", [0, 16, 64, 16384])
def test_p_data_is_fragmented_to_the_peers_maximum_length(max_length: int) -> None:
    command = pdu.encode_response(pdu.C_STORE_RSP, 7, CT, "1.2.3.4.5", 0)
    fragments = []
    for raw in _split(pdu.p_data(5, command, max_length)):
        p_data = pn.P_DATA_TF()
        p_data.decode(raw)
        if max_length:
            assert p_data.pdu_length <= max_length  # PS3.8 D.1: the whole variable field
        [item] = p_data.presentation_data_value_items  # one PDV per PDU
        assert item.presentation_context_id == 5
        fragments.append(item.presentation_data_value)
    assert all(f[0] == 0x01 for f in fragments[:-1]) and fragments[-1][0] == 0x03  # command; last
    assert b"".join(f[1:] for f in fragments) == command
    assert len(fragments) == (1 if max_length in (0, 16384) else -(-len(command) // (max_length - 6)))


def test_response_read_by_pynetdicom_as_a_dimse_message() -> None:
    raw = pdu.encode_response(pdu.C_STORE_RSP, 7, CT, "1.2.3.4.5", 0xA900, "Dataset UIDs differ")
    assert decode(BytesIO(raw), True, True).CommandGroupLength == len(raw) - 12
    message = C_STORE_RSP()
    complete = False
    for part in _split(pdu.p_data(1, raw, 40)):
        p_data = pn.P_DATA_TF()
        p_data.decode(part)
        complete = message.decode_msg(p_data.to_primitive())
    assert complete
    response = message.message_to_primitive()
    assert (response.Status, response.MessageIDBeingRespondedTo) == (0xA900, 7)
    assert (response.AffectedSOPClassUID, response.AffectedSOPInstanceUID) == (CT, "1.2.3.4.5")
    assert response.ErrorComment == "Dataset UIDs differ"


def test_success_response_has_no_error_comment() -> None:
    ds = decode(BytesIO(pdu.encode_response(pdu.C_ECHO_RSP, 3, VERIFICATION, "", 0, "ignored")), True, True)
    assert ds.Status == 0 and "ErrorComment" not in ds and "AffectedSOPInstanceUID" not in ds


def test_request_command_sets_encoded_by_pynetdicom() -> None:
    store = C_STORE()
    store.MessageID, store.AffectedSOPClassUID, store.AffectedSOPInstanceUID = 7, CT, "1.2.3.4.5"
    store.Priority, store.DataSet = 2, BytesIO(b"\x00" * 10)
    message = C_STORE_RQ()
    message.primitive_to_message(store)
    assert pdu.decode_command(encode(message.command_set, True, True)) == pdu.Command(
        pdu.C_STORE_RQ, 7, CT, "1.2.3.4.5", has_dataset=True)
    echo = C_ECHO()
    echo.MessageID, echo.AffectedSOPClassUID = 9, VERIFICATION
    echo_message = C_ECHO_RQ()
    echo_message.primitive_to_message(echo)
    assert pdu.decode_command(encode(echo_message.command_set, True, True)) == pdu.Command(
        pdu.C_ECHO_RQ, 9, VERIFICATION, "", has_dataset=False)


# --- malformed input ---------------------------------------------------------------------

def _item(kind: int, value: bytes) -> bytes:
    return struct.pack(">BxH", kind, len(value)) + value


FIXED = struct.pack(">HH", 1, 0) + b"ARCHIVE".ljust(16) + b"STORESCU".ljust(16) + bytes(32)
APPLICATION = _item(0x10, pdu.APPLICATION_CONTEXT.encode())
CONTEXT = _item(0x20, bytes([1, 0, 0, 0]) + _item(0x30, CT.encode()) + _item(0x40, EXPLICIT.encode()))


@pytest.mark.parametrize("body, message", [
    (FIXED[:40], "shorter than its 68 bytes of fixed fields"),
    (FIXED + APPLICATION + CONTEXT + b"\x50\x00", "truncated item header at byte"),
    (FIXED + APPLICATION + b"\x20\x00\xff\xff" + bytes(8), "item 0x20 of 65535 bytes at byte 93 runs past its parent"),
    # a sub-item longer than its presentation context item
    (FIXED + APPLICATION + _item(0x20, bytes([1, 0, 0, 0]) + b"\x30\x00\x00\x40" + CT.encode()),
     "item 0x30 of 64 bytes at byte 4 runs past its parent (25 bytes left)"),
    (FIXED + APPLICATION + _item(0x20, bytes([1, 0])), "presentation context item of 2 bytes"),
    (FIXED + CONTEXT, "without an application context item"),
    (FIXED + APPLICATION + _item(0x50, _item(0x51, struct.pack(">I", 16384))), "without presentation contexts"),
])
def test_malformed_associate_rq(body: bytes, message: str) -> None:
    with pytest.raises(pdu.ProtocolError, match=re.escape(message)) as caught:
        pdu.parse_associate_rq(body)
    assert caught.value.reason == pdu.ABORT_INVALID_PARAMETER


def test_associate_rq_of_an_impossible_length_or_another_type() -> None:
    with pytest.raises(pdu.ProtocolError, match="A-ASSOCIATE-RQ of 4294967295 bytes, more than 65536"):
        pdu.associate_rq_length(b"\x01\x00\xff\xff\xff\xff")
    with pytest.raises(pdu.ProtocolError, match="expected A-ASSOCIATE-RQ, got PDU 0x04") as caught:
        pdu.associate_rq_length(b"\x04\x00\x00\x00\x00\x10")
    assert caught.value.reason == pdu.ABORT_UNEXPECTED_PDU


def _element(group: int, element: int, value: bytes) -> bytes:
    return struct.pack("<HHI", group, element, len(value)) + value


def _command(*elements: bytes) -> bytes:
    body = b"".join(elements)
    return _element(0, 0x0000, struct.pack("<I", len(body))) + body


FIELD = _element(0, 0x0100, struct.pack("<H", pdu.C_ECHO_RQ))
MESSAGE_ID = _element(0, 0x0110, struct.pack("<H", 1))
NO_DATASET = _element(0, 0x0800, struct.pack("<H", pdu.NO_DATASET))


@pytest.mark.parametrize("raw, message", [
    (_command(FIELD, MESSAGE_ID, NO_DATASET, _element(0x0008, 0x0016, b"1.2\x00")),
     "command set element (0008,0016) is not in group 0000"),
    (_command(FIELD, MESSAGE_ID, NO_DATASET)[:-1], "command element (0000,0800) of 2 bytes runs past the command set"),
    (_command(FIELD, MESSAGE_ID, NO_DATASET) + b"\x00\x00", "truncated command element header at byte"),
    (_command(MESSAGE_ID, NO_DATASET), "command element (0000,0100) missing or not US"),
    (_command(FIELD, NO_DATASET), "command element (0000,0110) missing or not US"),
    (_command(FIELD, MESSAGE_ID, _element(0, 0x0800, b"\x01\x01\x00\x00")), "command element (0000,0800) missing or not US"),
])
def test_malformed_command_set(raw: bytes, message: str) -> None:
    with pytest.raises(pdu.ProtocolError, match=re.escape(message)):
        pdu.decode_command(raw)
