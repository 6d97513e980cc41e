"""Storage Commitment Push Model against `dicom-archive serve`.

Instances go in with DCMTK storescu; a pynetdicom SCU (a real peer library)
asks for commitment and receives the N-EVENT-REPORT on its own association,
or, after releasing it, as an SCP listening at its ARCHIVE_PEERS address.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, MRImageStorage
from pynetdicom import AE, evt
from pynetdicom.events import Event
from pynetdicom.sop_class import StorageCommitmentPushModel  # type: ignore[attr-defined]
from pynetdicom.sop_class import StorageCommitmentPushModelInstance

from archive.core.uids import object_key
from tests.conftest import free_port
from tests.e2e.harness import ArchiveProcess, serve
from tests.e2e.senders import storescu
from tests.factories import make_ct, new_uid, write_part10

pytestmark = pytest.mark.dcmtk

SCU_AET = "COMMITSCU"
REPORT_TIMEOUT = 60.0


@dataclass
class Reports:
    """N-EVENT-REPORTs received, with the association each came on."""

    received: list[tuple[int, Dataset]] = field(default_factory=list)
    answered: threading.Event = field(default_factory=threading.Event)

    def handle(self, event: Event) -> tuple[int, None]:
        self.received.append((int(event.event_type or 0), event.event_information))
        return 0x0000, None

    def sent(self, event: Event) -> None:
        if type(event.message).__name__ == "N_EVENT_REPORT_RSP":  # answered: now we may release
            self.answered.set()

    @property
    def handlers(self) -> list[tuple[evt.EventType, object]]:
        return [(evt.EVT_N_EVENT_REPORT, self.handle), (evt.EVT_DIMSE_SENT, self.sent)]

    def wait(self) -> tuple[int, Dataset]:
        assert self.answered.wait(REPORT_TIMEOUT), "no N-EVENT-REPORT received"
        return self.received[0]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("commitment")


@pytest.fixture(scope="module")
def peer_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def archive(workdir: Path, peer_port: int) -> Iterator[ArchiveProcess]:
    proc = serve(workdir, ARCHIVE_PEERS=f"{SCU_AET}@127.0.0.1:{peer_port}").start()
    yield proc
    proc.stop()


def _store(archive: ArchiveProcess, directory: Path, count: int) -> list[tuple[str, str]]:
    """(SOP Class UID, SOP Instance UID) of ``count`` new instances sent with storescu."""
    directory.mkdir(parents=True, exist_ok=True)
    study, series = new_uid(), new_uid()
    files, refs = [], []
    for i in range(count):
        ds = make_ct(study_uid=study, series_uid=series, instance_number=i + 1, seed=i, size=16)
        files.append(write_part10(ds, directory / f"{ds.SOPInstanceUID}.dcm"))
        refs.append((str(ds.SOPClassUID), str(ds.SOPInstanceUID)))
    sent = storescu(archive.dicom_port, files)
    assert sent.returncode == 0, sent.stderr
    return refs


def _action_information(transaction: str, refs: list[tuple[str, str]]) -> Dataset:
    ds = Dataset()
    ds.TransactionUID = transaction
    items = []
    for cls, inst in refs:
        item = Dataset()
        item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = cls, inst
        items.append(item)
    ds.ReferencedSOPSequence = items
    return ds


def _request(archive: ArchiveProcess, info: Dataset, reports: Reports, *, release_at_once: bool,
             action_type: int = 1) -> int:
    """Send one N-ACTION; keep the association open until the report arrives unless told otherwise."""
    ae = AE(ae_title=SCU_AET)
    ae.add_requested_context(StorageCommitmentPushModel)
    assoc = ae.associate("127.0.0.1", archive.dicom_port, ae_title="ARCHIVE", evt_handlers=reports.handlers)
    assert assoc.is_established
    try:
        status, _ = assoc.send_n_action(info, action_type, StorageCommitmentPushModel,
                                        StorageCommitmentPushModelInstance)
        if not release_at_once and int(status.Status) == 0:
            reports.wait()
    finally:
        assoc.release()
    return int(status.Status)


def _refs(sequence: object) -> set[tuple[str, str]]:
    return {(str(i.ReferencedSOPClassUID), str(i.ReferencedSOPInstanceUID)) for i in sequence or []}  # type: ignore[attr-defined]


def test_report_on_the_same_association(archive: ArchiveProcess, workdir: Path) -> None:
    refs = _store(archive, workdir / "same", 5)  # asked at once: some may not be indexed yet
    unknown = (str(CTImageStorage), new_uid())
    reports = Reports()
    transaction = new_uid()
    assert _request(archive, _action_information(transaction, [*refs, unknown]), reports,
                    release_at_once=False) == 0x0000
    event_type, info = reports.wait()
    assert event_type == 2  # failures exist (PS3.4 J.3.3)
    assert info.TransactionUID == transaction
    assert info.RetrieveAETitle == "ARCHIVE"
    assert _refs(info.ReferencedSOPSequence) == set(refs)
    assert [(i.ReferencedSOPInstanceUID, i.FailureReason) for i in info.FailedSOPSequence] == [(unknown[1], 0x0112)]


def test_report_on_a_new_association_after_release(archive: ArchiveProcess, workdir: Path, peer_port: int) -> None:
    refs = _store(archive, workdir / "new", 3)
    # enough unknown instances that checking outlasts the requestor's release (~ms)
    unknown = [(str(CTImageStorage), new_uid()) for _ in range(300)]
    reports = Reports()
    listener = AE(ae_title=SCU_AET)
    listener.add_supported_context(StorageCommitmentPushModel, scu_role=False, scp_role=True)
    server = listener.start_server(("127.0.0.1", peer_port), block=False, evt_handlers=reports.handlers)
    try:
        transaction = new_uid()
        requestor = Reports()
        assert _request(archive, _action_information(transaction, [*refs, *unknown]), requestor,
                        release_at_once=True) == 0x0000
        event_type, info = reports.wait()
    finally:
        server.shutdown()
    assert not requestor.received  # not on the released association
    assert event_type == 2
    assert info.TransactionUID == transaction
    assert _refs(info.ReferencedSOPSequence) == set(refs)
    assert {(str(i.ReferencedSOPInstanceUID), int(i.FailureReason)) for i in info.FailedSOPSequence} == {
        (uid, 0x0112) for _, uid in unknown}


def test_corrupted_object_and_class_conflict_fail(archive: ArchiveProcess, workdir: Path) -> None:
    refs = _store(archive, workdir / "bad", 3)
    ok, corrupt, conflict = refs
    reports = Reports()
    # the first check needs it indexed: ask for the good one first, then corrupt the second
    assert _request(archive, _action_information(new_uid(), [ok, corrupt]), reports, release_at_once=False) == 0
    assert reports.wait()[0] == 1
    path = workdir / "data" / "objects" / object_key(corrupt[1])
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))

    reports = Reports()
    wrong_class = (str(MRImageStorage), conflict[1])
    assert _request(archive, _action_information(new_uid(), [ok, corrupt, wrong_class]), reports,
                    release_at_once=False) == 0
    event_type, info = reports.wait()
    assert event_type == 2
    assert _refs(info.ReferencedSOPSequence) == {ok}
    assert {(str(i.ReferencedSOPInstanceUID), int(i.FailureReason)) for i in info.FailedSOPSequence} == {
        (corrupt[1], 0x0110), (conflict[1], 0x0119)}


@pytest.mark.parametrize(("action_type", "info", "status"), [
    (2, _action_information("1.2.3", [(str(CTImageStorage), "1.2.4")]), 0x0123),
    (1, _action_information("1.2.3", []), 0x0115),
    (1, _action_information("1.2.3", [(str(CTImageStorage), "")]), 0x0115),
])
def test_bad_requests_are_refused(archive: ArchiveProcess, action_type: int, info: Dataset, status: int) -> None:
    reports = Reports()
    assert _request(archive, info, reports, release_at_once=True, action_type=action_type) == status
    assert not reports.received
