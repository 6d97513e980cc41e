"""Storage Commitment: request validation, the per-instance checks against the
embedded backends (filesystem store + SQLite catalog), the report dataset, and
the new-association sender's give-up paths."""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, MRImageStorage

from archive.adapters.filesystem_store import FilesystemStore
from archive.adapters.sqlite_catalog import SqliteCatalog
from archive.core.models import ObjectInfo, Payload
from archive.core.records import CatalogEntry
from archive.core.retry import Backoff
from archive.query.dimse import commitment as sc
from archive.query.dimse.commitment_report import ReportSender
from archive.scp.portal import Portal
from archive.settings import Peer, Settings
from tests.conftest import free_port
from tests.factories import make_ct, make_message, new_uid, write_part10


def _information(transaction: object = None, refs: list[tuple[object, object]] | None = None) -> Dataset:
    ds = Dataset()
    if transaction is not None:
        ds.TransactionUID = transaction
    if refs is not None:
        items = []
        for cls, inst in refs:
            item = Dataset()
            if cls is not None:
                item.ReferencedSOPClassUID = cls
            if inst is not None:
                item.ReferencedSOPInstanceUID = inst
            items.append(item)
        ds.ReferencedSOPSequence = items
    return ds


def _parse(info: Dataset | None, action: int | None = 1, cls: str = sc.PUSH_MODEL,
           inst: str = sc.PUSH_MODEL_INSTANCE) -> sc.CommitmentRequest:
    return sc.parse_request(cls, inst, action, info)


def test_a_valid_request_parses() -> None:
    txn, uid = new_uid(), new_uid()
    request = _parse(_information(txn, [(CTImageStorage, uid)]))
    assert request == sc.CommitmentRequest(txn, (sc.Reference(str(CTImageStorage), uid),))


@pytest.mark.parametrize(("kwargs", "info", "status"), [
    ({"action": 2}, _information("1.2.3", [(CTImageStorage, "1.2.4")]), 0x0123),
    ({"action": None}, _information("1.2.3", [(CTImageStorage, "1.2.4")]), 0x0123),
    ({"inst": "1.2.840.10008.1.20.1.2"}, _information("1.2.3", [(CTImageStorage, "1.2.4")]), 0x0112),
    ({"cls": "1.2.840.10008.1.20.2"}, _information("1.2.3", [(CTImageStorage, "1.2.4")]), 0x0118),
    ({}, None, 0x0115),
    ({}, _information(None, [(CTImageStorage, "1.2.4")]), 0x0115),
    ({}, _information("1.02.3", [(CTImageStorage, "1.2.4")]), 0x0115),
    ({}, _information("1.2.3", None), 0x0115),
    ({}, _information("1.2.3", []), 0x0115),
    ({}, _information("1.2.3", [(CTImageStorage, "1.2.4"), (None, "1.2.5")]), 0x0115),
    ({}, _information("1.2.3", [(CTImageStorage, None)]), 0x0115),
    ({}, _information("1.2.3", [(CTImageStorage, "1.2." + "9" * 70)]), 0x0115),
])
def test_bad_requests_get_their_n_action_status(kwargs: dict[str, object], info: Dataset | None, status: int) -> None:
    with pytest.raises(sc.InvalidRequest) as caught:
        _parse(info, **kwargs)  # type: ignore[arg-type]
    assert caught.value.status == status


PENDING: dict[str, CatalogEntry] = {}  # stored, catalog entry not written yet


@dataclass
class Archived:
    ref: sc.Reference
    key: str
    path: Path


@pytest.fixture
async def backends(tmp_path: Path) -> AsyncIterator[tuple[SqliteCatalog, FilesystemStore]]:
    catalog, store = SqliteCatalog(tmp_path / "catalog.db"), FilesystemStore(tmp_path / "objects", fsync=False)
    await catalog.migrate()
    await store.migrate()
    yield catalog, store
    await catalog.close()
    await store.close()


async def _archive(catalog: SqliteCatalog, store: FilesystemStore, tmp_path: Path, seed: int = 0,
                   index: bool = True) -> Archived:
    ds = make_ct(seed=seed, size=32)
    content = write_part10(ds, tmp_path / f"{ds.SOPInstanceUID}.dcm").read_bytes()
    sha = hashlib.sha256(content).hexdigest()
    message = make_message(ds, tmp_path, sha256=sha, size=len(content))
    await store.put(message.key, Payload(parts=(content,), size=len(content), sha256=sha))
    if index:
        await catalog.upsert([CatalogEntry.from_message(message)])
    else:
        PENDING[str(ds.SOPInstanceUID)] = CatalogEntry.from_message(message)
    return Archived(sc.Reference(str(ds.SOPClassUID), str(ds.SOPInstanceUID)), message.key,
                    tmp_path / "objects" / message.key)


async def test_an_archived_instance_with_matching_checksum_is_committed(backends: tuple[SqliteCatalog, FilesystemStore],
                                                                         tmp_path: Path) -> None:
    catalog, store = backends
    archived = await _archive(catalog, store, tmp_path)
    assert await sc.check_reference(catalog, store, archived.ref) is None


async def test_failure_reasons(backends: tuple[SqliteCatalog, FilesystemStore], tmp_path: Path) -> None:
    catalog, store = backends
    unknown = sc.Reference(str(CTImageStorage), new_uid())
    assert await sc.check_reference(catalog, store, unknown) == sc.NO_SUCH_OBJECT_INSTANCE == 0x0112
    not_storage = sc.Reference("1.2.840.10008.5.1.4.1.2.2.1", new_uid())  # a Q/R model, not a storage class
    assert await sc.check_reference(catalog, store, not_storage) == sc.CLASS_NOT_SUPPORTED == 0x0122

    archived = await _archive(catalog, store, tmp_path, seed=1)
    conflict = sc.Reference(str(MRImageStorage), archived.ref.sop_instance_uid)
    assert await sc.check_reference(catalog, store, conflict) == sc.CLASS_INSTANCE_CONFLICT == 0x0119

    # one flipped byte in the stored object: same size, different checksum
    data = bytearray(archived.path.read_bytes())
    data[-1] ^= 0xFF
    archived.path.write_bytes(bytes(data))
    assert await sc.check_reference(catalog, store, archived.ref) == sc.PROCESSING_FAILURE == 0x0110

    gone = await _archive(catalog, store, tmp_path, seed=2)
    await store.delete(gone.key)  # cataloged, but its object is missing
    assert await sc.check_reference(catalog, store, gone.ref) == sc.NO_SUCH_OBJECT_INSTANCE


async def test_check_collects_committed_and_failed(backends: tuple[SqliteCatalog, FilesystemStore],
                                                   tmp_path: Path) -> None:
    catalog, store = backends
    good = [(await _archive(catalog, store, tmp_path, seed=i)).ref for i in range(3)]
    missing = sc.Reference(str(CTImageStorage), new_uid())
    portal = Portal().start()
    try:
        scp = sc.CommitmentSCP(catalog, store, portal, Settings())
        outcome = await asyncio.to_thread(scp.check, sc.CommitmentRequest("1.2.3", (good[0], missing, *good[1:])))
    finally:
        portal.stop()
    assert outcome.committed == tuple(good)
    assert outcome.failed == (sc.Failure(missing, 0x0112),)
    assert outcome.event_type == sc.FAILURES_EXIST == 2


class _Watched:
    """The object store, noting when ``key`` is looked up (an instance found not yet cataloged)."""

    def __init__(self, store: FilesystemStore, key: str) -> None:
        self.store, self.key = store, key
        self.looked_up = threading.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    async def head(self, key: str) -> ObjectInfo | None:
        if key == self.key:
            self.looked_up.set()
        return await self.store.head(key)


async def test_stored_instances_are_awaited_until_indexed(backends: tuple[SqliteCatalog, FilesystemStore],
                                                        tmp_path: Path) -> None:
    catalog, store = backends
    late = await _archive(catalog, store, tmp_path, seed=5, index=False)
    never = await _archive(catalog, store, tmp_path, seed=6, index=False)
    with pytest.raises(sc.NotYetIndexed):
        await sc.check_reference(catalog, store, late.ref)
    watched = _Watched(store, late.key)
    portal = Portal().start()
    try:
        scp = sc.CommitmentSCP(catalog, watched, portal, Settings(), index_wait=Backoff(0.05, 0.2, within=3.0))  # type: ignore[arg-type]
        checking = asyncio.create_task(asyncio.to_thread(scp.check, sc.CommitmentRequest("1.2.3", (late.ref, never.ref))))
        # once the check has found it stored and not yet indexed, the indexer catches up with it
        assert await asyncio.to_thread(watched.looked_up.wait, 10)
        await catalog.upsert([PENDING[late.ref.sop_instance_uid]])
        outcome = await checking
    finally:
        portal.stop()
    assert outcome.committed == (late.ref,)
    assert outcome.failed == (sc.Failure(never.ref, 0x0112),)


def test_event_information_all_committed() -> None:
    ref = sc.Reference(str(CTImageStorage), new_uid())
    outcome = sc.Outcome("1.2.3", (ref,), ())
    assert outcome.event_type == sc.ALL_COMMITTED == 1
    ds = sc.event_information(outcome, "ARCHIVE")
    assert ds.TransactionUID == "1.2.3" and ds.RetrieveAETitle == "ARCHIVE"
    assert [(i.ReferencedSOPClassUID, i.ReferencedSOPInstanceUID) for i in ds.ReferencedSOPSequence] == [
        (ref.sop_class_uid, ref.sop_instance_uid)]
    assert "FailedSOPSequence" not in ds


def test_event_information_only_failures_has_no_referenced_sequence() -> None:
    ref = sc.Reference(str(CTImageStorage), new_uid())
    ds = sc.event_information(sc.Outcome("1.2.3", (), (sc.Failure(ref, 0x0119),)), "ARCHIVE")
    assert "ReferencedSOPSequence" not in ds  # Type 1C (PS3.4 J.3.3)
    assert [(i.ReferencedSOPInstanceUID, i.FailureReason) for i in ds.FailedSOPSequence] == [
        (ref.sop_instance_uid, 0x0119)]


def test_sender_gives_up_on_unknown_and_unreachable_peers() -> None:
    info = sc.event_information(sc.Outcome("1.2.3", (sc.Reference(str(CTImageStorage), "1.2.4"),), ()), "ARCHIVE")
    port = free_port()  # nothing listens there
    settings = Settings(peers=(Peer("MODALITY", "127.0.0.1", port),), acse_timeout=2)
    sender = ReportSender(settings, retry=Backoff(0.01, 0.01, attempts=3))
    assert sender.send("STRANGER", info, 1) is False
    assert sender.send("MODALITY", info, 1) is False
