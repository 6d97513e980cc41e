"""Delivering a Storage Commitment N-EVENT-REPORT (PS3.4 J.3.3.1.2).

On the requestor's association while it is open, else on a new association we
open to the requestor (its calling AE title's address from ARCHIVE_PEERS or ARCHIVE_AE_CONFIG, over
TLS when its entry says so),
proposing the SCP role for the Push Model SOP Class through SCU/SCP Role
Selection (PS3.4 J.3.3.1.2 Note 1, PS3.7 D.3.3.4). An unreachable peer is
retried with backoff.

pynetdicom lets an acceptor send requests from another thread: its send_*
methods pause the association's reactor first. The N-ACTION response must
reach the requestor before the report, so :class:`ResponseSent` waits until
the PDU carrying it has been written to the socket.
"""

from __future__ import annotations

import itertools
import logging
import threading
import weakref
from io import BytesIO

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.dsutils import decode
from pynetdicom.events import Event
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.presentation import build_role
from pynetdicom.sop_class import StorageCommitmentPushModel  # type: ignore[attr-defined]
from pynetdicom.sop_class import StorageCommitmentPushModelInstance

from archive.compat.pynetdicom import fix_reactor_pause, release_requested
from archive.core.retry import Backoff, retrying_sync
from archive.ae_config import AEEntry
from archive.scp.access import AccessPolicy
from archive.scp.tls import tls_args
from archive.settings import Settings

log = logging.getLogger(__name__)

PUSH_MODEL, PUSH_MODEL_INSTANCE = str(StorageCommitmentPushModel), str(StorageCommitmentPushModelInstance)
N_ACTION_RSP = 0x8130  # Command Field (PS3.7 E.1)
COMMAND_LAST_FRAGMENT = 0x03  # message control header: command, last fragment (PS3.8 E.2)
REPORT_RETRY = Backoff(first=1.0, cap=8.0, attempts=5)  # new associations to an unreachable requestor

_message_ids = itertools.count(1)
_same_association_locks: "weakref.WeakKeyDictionary[Association, threading.Lock]" = weakref.WeakKeyDictionary()
_locks_guard = threading.Lock()


class ResponseSent:
    """Set once the N-ACTION response with ``message_id`` has left on ``assoc``."""

    def __init__(self, assoc: Association, context_id: int, message_id: int) -> None:
        self.assoc = assoc
        self.context_id = context_id
        self.message_id = message_id
        self.done = threading.Event()
        assoc.bind(evt.EVT_PDU_SENT, self._on_pdu_sent)

    def _on_pdu_sent(self, event: Event) -> None:
        pdu = event.pdu
        if self.done.is_set() or not isinstance(pdu, P_DATA_TF):
            return
        for pdv in pdu.presentation_data_value_items:
            data = pdv.presentation_data_value or b""
            if pdv.presentation_context_id != self.context_id or not data:
                continue
            if data[0] & COMMAND_LAST_FRAGMENT != COMMAND_LAST_FRAGMENT:
                continue
            try:
                command = decode(BytesIO(data[1:]), True, True)  # commands: implicit VR LE
                if command.CommandField == N_ACTION_RSP and command.MessageIDBeingRespondedTo == self.message_id:
                    self.done.set()
            except Exception:  # a fragment we cannot read is not ours
                continue

    def wait(self, timeout: float) -> bool:
        try:
            return self.done.wait(timeout)
        finally:
            self.assoc.unbind(evt.EVT_PDU_SENT, self._on_pdu_sent)


def _message_id() -> int:
    return next(_message_ids) % 65535 + 1


def _lock(assoc: Association) -> threading.Lock:
    with _locks_guard:
        return _same_association_locks.setdefault(assoc, threading.Lock())


def _answered(status: Dataset) -> bool:
    """The peer answered the report (any status; an empty one means no answer)."""
    return "Status" in status


def send_on_association(assoc: Association, information: Dataset, event_type: int) -> bool:
    """Send on the requestor's association; False when it is gone or did not answer."""
    with _lock(assoc):
        if not assoc.is_established or release_requested(assoc):
            return False
        try:
            status, _ = assoc.send_n_event_report(information, event_type, PUSH_MODEL, PUSH_MODEL_INSTANCE,
                                                  msg_id=_message_id())
        except Exception as exc:  # released or aborted meanwhile
            log.info("commitment report: requestor's association unusable",
                     extra={"transaction_uid": str(information.TransactionUID), "reason": str(exc)[:200]})
            return False
    _log_sent(information, assoc.requestor.ae_title, "same", status)
    return _answered(status)


class ReportSender:
    """Opens associations to commitment peers and sends reports (with retries)."""

    def __init__(self, settings: Settings, retry: Backoff = REPORT_RETRY, access: AccessPolicy | None = None) -> None:
        self.settings = settings
        self.retry = retry
        self.access = access if access is not None else AccessPolicy.from_settings(settings)

    def _ae(self) -> AE:
        fix_reactor_pause()  # a quick peer's response would otherwise be lost now and then
        ae = AE(ae_title=self.settings.aet)
        ae.add_requested_context(PUSH_MODEL, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        ae.acse_timeout = self.settings.acse_timeout
        ae.dimse_timeout = self.settings.dimse_timeout
        ae.network_timeout = self.settings.network_timeout
        return ae

    def _attempt(self, peer: AEEntry, information: Dataset, event_type: int) -> bool:
        assoc = self._ae().associate(peer.host, peer.port, ae_title=peer.aet,
                                     ext_neg=[build_role(PUSH_MODEL, scp_role=True)],
                                     tls_args=tls_args(peer, self.settings))
        if not assoc.is_established:
            return False
        try:
            status, _ = assoc.send_n_event_report(information, event_type, PUSH_MODEL, PUSH_MODEL_INSTANCE)
        finally:
            if assoc.is_established:
                assoc.release()
        _log_sent(information, peer.aet, "new", status)
        return _answered(status)

    def send(self, calling_aet: str, information: Dataset, event_type: int) -> bool:
        """On a new association to ``calling_aet``'s configured address; False when undeliverable."""
        transaction = str(information.TransactionUID)
        peer = self.access.config.peer(calling_aet)
        if peer is None:
            log.warning("commitment report undeliverable: requestor has no address (ARCHIVE_PEERS, ARCHIVE_AE_CONFIG)",
                        extra={"calling_aet": calling_aet, "transaction_uid": transaction})
            return False

        def again(attempt: int, delay: float, exc: BaseException | None) -> None:
            log.info("commitment report: peer not reached", extra={
                "peer_aet": peer.aet, "transaction_uid": transaction, "attempt": attempt, "retry_in": round(delay, 1),
                "reason": str(exc)[:200] if exc else "association refused or report not answered"})

        try:
            if retrying_sync(self.retry, Exception, until_true=True, on_retry=again)(
                    self._attempt, peer, information, event_type):
                return True
        except Exception as exc:
            log.warning("commitment report attempt failed", extra={"reason": str(exc)[:200]})
        log.error("commitment report undeliverable: peer unreachable",
                  extra={"peer_aet": peer.aet, "transaction_uid": transaction})
        return False


def _log_sent(information: Dataset, peer_aet: str, association: str, status: Dataset) -> None:
    code = int(status.Status) if "Status" in status else None
    log.log(logging.INFO if code == 0 else logging.WARNING, "commitment report sent", extra={
        "peer_aet": peer_aet, "transaction_uid": str(information.TransactionUID), "association": association,
        "status": f"0x{code:04X}" if code is not None else "no answer"})
