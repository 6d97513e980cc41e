"""DICOM senders for tests: pynetdicom (any dataset, any status) and DCMTK storescu."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.pdu_primitives import A_ASSOCIATE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from tests.conftest import require_tool


def pynetdicom_store(
    port: int,
    datasets: Sequence[Dataset],
    *,
    calling_aet: str = "TESTSCU",
    called_aet: str = "ARCHIVE",
    transfer_syntax: str = ExplicitVRLittleEndian,
) -> list[int]:
    """Send each dataset in one association; return the C-STORE statuses."""
    ae = AE(ae_title=calling_aet)
    for sop_class in sorted({str(ds.SOPClassUID) for ds in datasets}):
        # One context per transfer syntax, as DCMTK does: the acceptor picks per context.
        ae.add_requested_context(sop_class, [transfer_syntax])
        if transfer_syntax != ExplicitVRLittleEndian:
            ae.add_requested_context(sop_class, [ExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", port, ae_title=called_aet)
    if not assoc.is_established:
        raise ConnectionError("association not established")
    statuses = []
    try:
        for ds in datasets:
            if "TransferSyntaxUID" not in getattr(ds, "file_meta", {}):
                ds.file_meta = FileMetaDataset()
                ds.file_meta.TransferSyntaxUID = transfer_syntax
            status = assoc.send_c_store(ds)
            statuses.append(int(status.Status) if "Status" in status else -1)
    finally:
        assoc.release()
    return statuses


def rejection_of(assoc: Association) -> A_ASSOCIATE | None:
    """The A-ASSOCIATE-RJ primitive a refused association request received, or None.

    pynetdicom's requestor checks that its socket is still connected before it reads the answer. An
    acceptor that rejects fast has by then answered and the requestor's DUL has closed the socket
    (PS3.8 AE-4), so pynetdicom reports a silent abort with the rejection left on the DUL's queue to
    the user; read it from there.
    """
    if assoc.is_established:
        return None
    primitive = assoc.acceptor.primitive
    if assoc.is_rejected and primitive is not None:
        return primitive
    while not assoc.dul.to_user_queue.empty():
        pending = assoc.dul.to_user_queue.get_nowait()
        if isinstance(pending, A_ASSOCIATE) and pending.result in (0x01, 0x02):
            return pending
    return None


def associate_result(port: int, calling_aet: str) -> tuple[bool, int | None, int | None]:
    """Try to associate; return (established, reject result, reject reason)."""
    ae = AE(ae_title=calling_aet)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="ARCHIVE")
    if assoc.is_established:
        assoc.release()
        return True, None, None
    primitive = rejection_of(assoc)
    if primitive is not None:
        return False, int(primitive.result), int(primitive.diagnostic)
    return False, None, None


def storescu(port: int, files: Sequence[Path], *, calling_aet: str = "STORESCU", extra: Sequence[str] = ()) -> subprocess.CompletedProcess[str]:
    tool = require_tool("storescu")
    return subprocess.run(
        [tool, "-aet", calling_aet, "-aec", "ARCHIVE", *extra, "127.0.0.1", str(port), *map(str, files)],
        capture_output=True, text=True, timeout=300,
    )


def echoscu(port: int, calling_aet: str = "ECHOSCU") -> subprocess.CompletedProcess[str]:
    tool = require_tool("echoscu")
    return subprocess.run([tool, "-aet", calling_aet, "-aec", "ARCHIVE", "127.0.0.1", str(port)],
                          capture_output=True, text=True, timeout=60)
