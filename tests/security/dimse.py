"""Raw DIMSE helpers for the attack suite: a C-STORE of any bytes, PDUs of any length."""

from __future__ import annotations

import socket
import struct
import time

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from tests.e2e.raw_dimse import (
    A_ASSOCIATE_AC,
    C_STORE_RQ,
    COMMAND_LAST,
    DATA_LAST,
    P_DATA_TF,
    associate_rq,
    command,
    p_data,
    recv_pdu,
    status_of,
)
from tests.factories import dataset_bytes

CT = "1.2.840.10008.5.1.4.1.1.2"


def connect(port: int, timeout: float = 10.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=timeout)


FIND = "1.2.840.10008.5.1.4.1.2.2.1"  # Study Root C-FIND: the asyncio engine hands it to pynetdicom


def associated(port: int, calling: str = "ATTACKER", abstract: str = CT) -> socket.socket:
    sock = connect(port)
    sock.sendall(associate_rq([(abstract, ExplicitVRLittleEndian)], calling=calling))
    kind, _ = recv_pdu(sock)
    assert kind == A_ASSOCIATE_AC, kind
    return sock


def store_bytes(port: int, data: bytes, *, sop_class: str = CT, sop_instance: str = "1.2.3") -> int:
    """One C-STORE whose dataset is ``data`` (whatever it holds); the response's Status."""
    sock = associated(port)
    try:
        cmd = command(C_STORE_RQ, 1, sop_class=sop_class, has_dataset=True, sop_instance=sop_instance)
        sock.sendall(p_data(1, COMMAND_LAST, cmd) + p_data(1, DATA_LAST, data))
        kind, body = recv_pdu(sock)
        assert kind == P_DATA_TF, f"PDU {kind} instead of the C-STORE-RSP"
        return status_of(body)
    finally:
        sock.close()


def store_dataset(port: int, ds: Dataset) -> int:
    return store_bytes(port, dataset_bytes(ds), sop_class=str(ds.SOPClassUID), sop_instance=str(ds.SOPInstanceUID))


def pdu_header(kind: int, length: int) -> bytes:
    return struct.pack(">BxI", kind, length)


def closed_by_peer(sock: socket.socket, within: float) -> tuple[bool, list[int]]:
    """Whether the archive closes the connection within ``within`` s; the PDU types it sent first."""
    sock.settimeout(0.2)
    deadline = time.monotonic() + within
    kinds: list[int] = []
    while time.monotonic() < deadline:
        try:
            kind, _ = recv_pdu(sock)
        except TimeoutError:
            continue
        except ConnectionError:
            return True, kinds
        if kind == -1:
            return True, kinds
        kinds.append(kind)
    return False, kinds
