"""Run as a script: what pynetdicom does with C-MOVE/C-GET sub-operations, with or without our patch.

``python tests/unit/compat_probe.py [--install] SPOOL_DIR`` prints JSON: the Move Originator a
C-MOVE destination receives, and how many instances a C-GET requester receives when the SCP's
handler yields a file (a plain path without the patch, a dataset that names its file with it).
A fresh interpreter, so that the patch of another test is not installed already.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.presentation import build_role
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
)

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from archive.compat import pynetdicom as compat  # noqa: E402
from tests.factories import make_ct, write_part10  # noqa: E402


class FromFile(Dataset):
    """The patch's way: a dataset that names the file to send."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        ds = dcmread(path, stop_before_pixels=True)
        self.SOPClassUID, self.SOPInstanceUID, self.path = ds.SOPClassUID, ds.SOPInstanceUID, path

    def to_send(self, assoc: Association) -> Path:
        return self.path


def main() -> None:
    patched = sys.argv[1] == "--install"
    spool = Path(sys.argv[-1])
    if patched:
        compat.install(spool)
    path = write_part10(make_ct(), spool / "instance.dcm")

    received: dict[str, Any] = {"originator": None, "got": 0}

    def on_store(event: evt.Event) -> int:
        received["originator"] = str(event.request.MoveOriginatorApplicationEntityTitle or "").strip() or None
        return 0x0000

    destination = AE(ae_title="DEST")
    destination.add_supported_context(CTImageStorage, ExplicitVRLittleEndian)
    dest_server = destination.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    dest_port = dest_server.server_address[1]

    def on_move(event: evt.Event) -> Any:
        yield "127.0.0.1", dest_port
        yield 1
        if patched:
            with compat.move_originator(event.assoc.requestor.ae_title):
                yield 0xFF00, FromFile(path)
        else:
            yield 0xFF00, dcmread(path)

    def on_get(event: evt.Event) -> Any:
        yield 1
        yield 0xFF00, FromFile(path) if patched else path

    scp = AE(ae_title="QRSCP")
    scp.add_supported_context(PatientRootQueryRetrieveInformationModelMove)
    scp.add_supported_context(PatientRootQueryRetrieveInformationModelGet)
    scp.add_supported_context(CTImageStorage, ExplicitVRLittleEndian, scu_role=True, scp_role=True)
    scp.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    server = scp.start_server(("127.0.0.1", 0), block=False,
                              evt_handlers=[(evt.EVT_C_MOVE, on_move), (evt.EVT_C_GET, on_get)])
    port = server.server_address[1]

    def on_get_store(event: evt.Event) -> int:
        received["got"] += 1
        return 0x0000

    requester = AE(ae_title="REQUESTOR")
    requester.add_requested_context(PatientRootQueryRetrieveInformationModelMove)
    requester.add_requested_context(PatientRootQueryRetrieveInformationModelGet)
    requester.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "PATIENT"
    identifier.PatientID = "PAT-1"
    assoc = requester.associate("127.0.0.1", port, ae_title="QRSCP",
                                ext_neg=[build_role(CTImageStorage, scp_role=True)],
                                evt_handlers=[(evt.EVT_C_STORE, on_get_store)])
    assert assoc.is_established
    move = [status.Status for status, _ in assoc.send_c_move(identifier, "DEST", PatientRootQueryRetrieveInformationModelMove)]
    get = [status.Status for status, _ in assoc.send_c_get(identifier, PatientRootQueryRetrieveInformationModelGet)]
    assoc.release()
    server.shutdown()
    dest_server.shutdown()
    print(json.dumps({"move_originator": received["originator"], "move_statuses": move,
                      "get_received": received["got"], "get_statuses": get}))


if __name__ == "__main__":
    main()
