"""One association to a DICOM peer, sending a batch of spooled instances (pynetdicom, in a thread).

Each instance leaves as it was stored when the peer accepts its transfer syntax (the file is
sent in chunks, never loaded); with attribute changes (a rule's ``set``/``prefix``) the dataset
is read, changed and sent in that syntax; when the peer accepted only an uncompressed syntax for
its SOP class, it is decoded and sent in that syntax (PS3.4 B.4.1: the receiver accepts the
contexts it supports, the sender uses one of them). The stored copy never changes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from archive.ae_config import AEEntry
from archive.compat.pynetdicom import fix_reactor_pause
from archive.core.records import CatalogInstance
from archive.core.routing import ForwardJob, apply_changes
from archive.query.dimse.retrieve import UNCOMPRESSED, store_contexts, transcoded
from archive.scp.tls import tls_args
from archive.settings import Settings

log = logging.getLogger(__name__)

# PS3.7 C.4.1 / Annex C: Success, and the warnings that still mean "stored"
SENT_STATUSES = frozenset({0x0000, 0xB000, 0xB006, 0xB007})


class Unreachable(Exception):
    """The association could not be opened, was rejected, or broke: nothing said about the rest."""


@dataclass(frozen=True)
class Item:
    job: ForwardJob
    path: Path


@dataclass(frozen=True)
class Result:
    job: ForwardJob
    status: int | None  # None: not sent (an error before sending it)
    detail: str

    @property
    def sent(self) -> bool:
        return self.status in SENT_STATUSES


def instance_of(job: ForwardJob) -> CatalogInstance:
    """The job's instance as the catalog would list it (what spooling and contexts need)."""
    return CatalogInstance(job.sop_instance_uid, job.study_uid, job.series_uid, job.key, 0, job.sha256,
                           job.sop_class_uid, job.transfer_syntax_uid)


def _ae(settings: Settings) -> AE:
    fix_reactor_pause()  # a quick peer's response would otherwise be lost now and then
    ae = AE(ae_title=settings.aet)
    ae.acse_timeout = settings.acse_timeout
    ae.dimse_timeout = settings.dimse_timeout
    ae.network_timeout = settings.network_timeout
    return ae


def _to_send(assoc: Association, item: Item) -> Path | Dataset:
    job = item.job
    accepted = [cx for cx in assoc.accepted_contexts if cx.abstract_syntax == job.sop_class_uid and cx.as_scu]
    exact = any(cx.transfer_syntax[0] == job.transfer_syntax_uid for cx in accepted)
    if exact and not (job.set or job.prefix):
        return item.path
    dataset = dcmread(item.path)
    apply_changes(dataset, job)
    if exact:
        return dataset
    targets = [cx.transfer_syntax[0] for cx in accepted if cx.transfer_syntax[0] in UNCOMPRESSED]
    if not targets:
        raise ValueError(f"the peer accepted no transfer syntax for SOP class {job.sop_class_uid}")
    return transcoded(dataset, job.transfer_syntax_uid, targets[0])


def send_batch(peer: AEEntry, items: Sequence[Item], settings: Settings) -> list[Result]:
    """Send ``items`` on one association to ``peer``; a result for each item it got to. Raises
    Unreachable when the association cannot be opened; when it breaks midway, the results so far
    are returned with the break as the next item's (status None) result."""
    contexts = store_contexts([instance_of(i.job) for i in items])
    assoc = _ae(settings).associate(peer.host, peer.port, contexts=contexts, ae_title=peer.aet,
                                    tls_args=tls_args(peer, settings))
    if not assoc.is_established:
        raise Unreachable(f"no association to {peer.aet} at {peer.address} (refused, rejected or aborted)")
    results: list[Result] = []
    try:
        for item in items:
            try:
                outgoing = _to_send(assoc, item)
            except Exception as exc:  # unreadable, too large to decode, no common syntax
                results.append(Result(item.job, None, f"not sent: {type(exc).__name__}: {exc}"[:300]))
                continue
            status = assoc.send_c_store(outgoing)
            if not status or "Status" not in status:
                if not results:
                    raise Unreachable(f"association to {peer.aet} broke before any response")
                break  # the association broke: the items without a result go back to the queue
            code = int(status.Status)
            comment = str(status.get("ErrorComment", "") or "")
            results.append(Result(item.job, code, f"0x{code:04X}{' ' + comment if comment else ''}"[:300]))
    finally:
        if assoc.is_established:
            assoc.release()
    return results


class DicomSender:
    """A DICOM peer as the forwarder's sender: pynetdicom in a worker thread."""

    def __init__(self, peer: AEEntry, settings: Settings) -> None:
        self.peer = peer
        self.settings = settings

    async def send(self, items: Sequence[Item]) -> list[Result]:
        return await asyncio.to_thread(send_batch, self.peer, items, self.settings)

    async def reachable(self) -> bool:
        return await asyncio.to_thread(echo, self.peer, self.settings)

    async def close(self) -> None:
        pass


def echo(peer: AEEntry, settings: Settings) -> bool:
    """Does ``peer`` accept an association now (Verification, PS3.4 A.4)?"""
    ae = _ae(settings)
    ae.add_requested_context(Verification)
    assoc = ae.associate(peer.host, peer.port, ae_title=peer.aet, tls_args=tls_args(peer, settings))
    if not assoc.is_established:
        return False
    assoc.release()
    return True
