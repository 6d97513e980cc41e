"""One association's state machine (PS3.8 9.2, from Sta2 on) on its connection's buffer (:mod:`stream`).

A-ASSOCIATE-RQ -> AC or RJ, then P-DATA-TF until A-RELEASE-RQ or A-ABORT. C-ECHO is
answered at once; a C-STORE's dataset goes from the receive buffer into a spool file
(:mod:`message`), PDU after PDU without waiting while they are already received, and, once
complete, to the one store path of both engines (:mod:`archive.scp.store`); the response is
a pre-encoded command set. A C-FIND's identifier is kept in memory and handed to the query
service (:mod:`services`), whose responses a task sends while the association goes on
reading, for a C-CANCEL-RQ. The association sees the receiver only through an
:class:`AssociationContext`. PS3.8 for the Upper Layer, PS3.7 for DIMSE.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path

from pydicom.uid import AllTransferSyntaxes

from archive import metrics
from archive.core.audit import AuditTrail, StudyTally
from archive.core.storage_classes import STORAGE_SOP_CLASSES
from archive.ingest.service import Received
from archive.scp.access import AccessPolicy, Rejection
from archive.scp.asyncio_engine import pdu
from archive.scp.asyncio_engine.message import Message, stored_header
from archive.scp.asyncio_engine.services import FindCall, FindService
from archive.scp.asyncio_engine.stream import Closed, PduStream
from archive.scp import audit
from archive.scp.status import (FIND_WITHOUT_IDENTIFIER, SOP_CLASS_NOT_NEGOTIATED, SUCCESS, UNEXPECTED,
                                UNRECOGNIZED_OPERATION)
from archive.scp.store import Store

log = logging.getLogger(__name__)

VERIFICATION = "1.2.840.10008.1.1"
SUPPORTED_TRANSFER = frozenset(str(ts) for ts in AllTransferSyntaxes)
MAX_IDENTIFIER = 1 << 20  # a C-FIND identifier, all fragments together: nothing real comes near it
# PS3.8 9.3.4: rejected-transient, service-provider (presentation), local limit exceeded
BUSY = Rejection(0x02, 0x03, 0x02, "too many associations")
CALLED_AE_UNKNOWN = Rejection(0x01, 0x01, 0x07, "called AE title not recognized")


@dataclass(frozen=True)
class AssociationContext:
    """What an association needs from the receiver that accepted it."""

    aet: str  # ours
    check_called_aet: bool  # reject a request whose Called AE Title is not ``aet``
    policy: AccessPolicy
    load: Callable[[], int]  # associations counted against the cap, this one included
    max_associations: int
    max_pdu: int  # our Maximum Length (PS3.8 D.1); 0 = unlimited
    acse_timeout: float  # ARTIM (PS3.8 9.1.5); 0 = none
    network_timeout: float  # silence allowed while a PDU is expected; 0 = none
    spool: Path  # where datasets are received
    store: Store | None  # the C-STORE path (archive.scp.store); None: no Storage contexts
    audit: AuditTrail  # one record per study at the association's end; refused associations
    find: FindService | None = None  # C-FIND (the query service); None: no Find contexts

    def syntaxes(self, abstract: str) -> Collection[str]:
        """The transfer syntaxes this association takes for ``abstract``; empty if not served."""
        if abstract == VERIFICATION or (self.store is not None and abstract in STORAGE_SOP_CLASSES):
            return SUPPORTED_TRANSFER
        if self.find is not None and abstract in self.find.models:
            return self.find.transfer_syntaxes
        return ()

    def serves(self) -> frozenset[str]:
        """Every abstract syntax this association takes (the others go to the handover)."""
        return (frozenset({VERIFICATION}) | (STORAGE_SOP_CLASSES if self.store is not None else frozenset())
                | (self.find.models if self.find is not None else frozenset()))


class Association:
    """One association's state machine (PS3.8 9.2, Sta6 onwards)."""

    def __init__(self, context: AssociationContext, stream: PduStream) -> None:
        self.context = context
        self.stream = stream
        self.timeout = context.network_timeout or None  # silence allowed while the peer is to speak
        peer = stream.peer()
        self.address = str(peer[0]) if peer else ""
        self.calling_aet = ""
        self.peer_max = 0
        self.contexts: dict[int, tuple[str, str]] = {}  # id -> (abstract, transfer syntax)
        self.message = Message()
        self.tally = StudyTally()  # what was stored, per study, for the audit trail
        self.established = False
        self._awaiting_header = False  # the read loop waits for the next PDU
        self._operation: asyncio.Task[None] | None = None  # a C-FIND sending its responses
        self._operation_id = 0  # its Message ID, which a C-CANCEL-RQ names
        self._cancel_requested = False

    async def _pdu_header(self) -> tuple[int, int]:
        stream = self.stream
        if stream.buffered < 6:
            # While a C-FIND sends its responses the requestor need say nothing: the silence
            # counts from the operation's end (:meth:`_find` re-arms it).
            self._awaiting_header = True
            try:
                await stream.wait(6, None if self._busy() else self.timeout)
            finally:
                self._awaiting_header = False
        return pdu.pdu_header(stream.take(6))

    def _busy(self) -> bool:
        return self._operation is not None and not self._operation.done()

    async def _settle(self) -> None:
        """Wait for the operation in progress: one at a time (no Asynchronous Operations
        Window is negotiated, PS3.7 D.3.3.3). No timeout runs meanwhile: they count only a
        wait for the peer's bytes."""
        operation, self._operation = self._operation, None
        if operation is None or operation.done():
            return
        await asyncio.wait([operation])

    async def _drop_operation(self) -> None:
        """Stop the operation in progress (the association is ending): no response after an A-ABORT."""
        operation = self._operation
        if operation is not None and not operation.done():
            operation.cancel()
            await asyncio.wait([operation])

    async def send(self, data: bytes) -> None:
        """Our next PDU(s): a peer that stops reading them is aborted after the network timeout."""
        await self.stream.send(data, self.timeout)

    async def run(self) -> None:
        try:
            if await self._associate():
                await self._serve()
        except pdu.ProtocolError as exc:
            log.warning("association aborted: %s", exc, extra={"calling_aet": self.calling_aet, "peer": self.address})
            await self._drop_operation()
            self.stream.write(pdu.abort(2, exc.reason))  # no waiting on a peer that broke the protocol
        except TimeoutError:
            log.info("association timed out", extra={"calling_aet": self.calling_aet, "peer": self.address})
            await self._drop_operation()
            if self.established:  # Sta6: A-ABORT; ARTIM in Sta2 just closes (PS3.8 9.2, AA-2)
                self.stream.write(pdu.abort(2, pdu.ABORT_NOT_SPECIFIED))
        except (Closed, ConnectionError, OSError) as exc:
            log.info("association ended: %s", type(exc).__name__, extra={"calling_aet": self.calling_aet})
        except asyncio.CancelledError:  # stop() after the drain deadline
            self.stream.write(pdu.abort(2, pdu.ABORT_NOT_SPECIFIED))
            raise
        finally:
            await self._drop_operation()
            self.message.discard()
            audit.association_ended(self.context.audit, self.tally, self.calling_aet, self.address, self.context.aet)
            self.stream.close()
            try:
                await asyncio.wait_for(self.stream.wait_closed(), 5.0)
            except Exception:  # a peer that never reads does not keep the task alive
                self.stream.abort()

    async def _associate(self) -> bool:
        """A-ASSOCIATE-RQ -> AC or RJ, within the ARTIM timeout (PS3.8 9.1.5)."""
        artim = self.context.acse_timeout or None
        length = pdu.associate_rq_length(await self.stream.read(6, artim))
        rq = pdu.parse_associate_rq(await self.stream.read(length, artim))
        self.calling_aet = rq.calling_aet
        rejection = self._rejection(rq)
        if rejection is not None:
            metrics.ASSOCIATIONS.labels("rejected").inc()
            log.warning("association rejected", extra={"calling_aet": rq.calling_aet, "peer": self.address,
                                                       "reason": rejection.why})
            audit.rejected(self.context.audit, rejection.why, rejection.result == 0x02, rq.calling_aet, self.address,
                           self.context.aet)
            await self.send(pdu.associate_rj(rejection.result, rejection.source, rejection.reason))
            await self._await_peer_close()
            return False
        results = []
        for cx in rq.contexts:
            accepted = self.context.syntaxes(cx.abstract_syntax)
            if not accepted:
                results.append((cx.context_id, pdu.ABSTRACT_SYNTAX_NOT_SUPPORTED, ""))
                continue
            syntax = next((ts for ts in cx.transfer_syntaxes if ts in accepted), None)
            if syntax is None:
                results.append((cx.context_id, pdu.TRANSFER_SYNTAXES_NOT_SUPPORTED, ""))
                continue
            results.append((cx.context_id, pdu.CONTEXT_ACCEPTED, syntax))
            self.contexts[cx.context_id] = (cx.abstract_syntax, syntax)
        self.peer_max = rq.max_length
        metrics.ASSOCIATIONS.labels("accepted").inc()
        await self.send(pdu.associate_ac(rq, results, self.context.max_pdu, self._extended(rq)))
        self.established = True
        return True

    def _extended(self, rq: pdu.AssociateRQ) -> dict[str, bytes]:
        """SOP Class Extended Negotiation answers (PS3.7 D.3.3.5): the query service's, for its models."""
        find = self.context.find
        if find is None:
            return {}
        answers = {uid: find.extended(uid, info) for uid, info in rq.extended.items() if uid in find.models}
        return {uid: answer for uid, answer in answers.items() if answer is not None}

    async def _await_peer_close(self) -> None:
        """Sta13 after A-ASSOCIATE-RJ: the requestor closes the connection; ARTIM bounds the wait (PS3.8 9.2).

        Closing first can reset the connection before the requestor has read the rejection.
        """
        with contextlib.suppress(Exception):
            await self.stream.drain_until_closed(min(self.context.acse_timeout or 5.0, 5.0))

    def _rejection(self, rq: pdu.AssociateRQ) -> Rejection | None:
        if not rq.protocol_version & 0x0001:  # PS3.8 9.3.4: protocol version not supported
            return Rejection(0x01, 0x02, 0x02, "protocol version not supported")
        if rq.application_context != pdu.APPLICATION_CONTEXT:
            return Rejection(0x01, 0x01, 0x02, "application context name not supported")
        if self.context.check_called_aet and rq.called_aet != self.context.aet:
            return CALLED_AE_UNKNOWN
        rejection = self.context.policy.admit(rq.calling_aet, self.address)
        if rejection is not None:
            return rejection
        if self.context.load() > self.context.max_associations:
            return BUSY
        return None

    async def _serve(self) -> None:
        """P-DATA-TF, A-RELEASE-RQ and A-ABORT until the association ends."""
        max_pdu = self.context.max_pdu
        cap = max_pdu + 6 if max_pdu else 0  # peers must respect our Maximum Length (PS3.8 D.1)
        message = self.message
        while True:
            kind, length = await self._pdu_header()
            if kind == pdu.P_DATA_TF:
                if cap and length > cap:
                    raise pdu.ProtocolError(f"P-DATA-TF of {length} bytes exceeds our maximum {max_pdu}")
                await self._p_data(length, message)
            elif kind == pdu.A_RELEASE_RQ:
                message.discard()
                await self.stream.read(min(length, 4), self.timeout)
                await self._settle()  # PS3.7 D.3: a release waits for the operation's last response
                await self.send(pdu.release_rp())
                return
            elif kind == pdu.A_ABORT:
                message.discard()
                raise Closed("peer aborted")
            else:
                message.discard()
                reason = pdu.ABORT_UNEXPECTED_PDU if kind <= pdu.A_ABORT else pdu.ABORT_UNRECOGNIZED_PDU
                raise pdu.ProtocolError(f"unexpected PDU 0x{kind:02X}", reason)

    async def _p_data(self, length: int, message: Message) -> None:
        """Walk the PDVs of one P-DATA-TF as they are received (PS3.8 9.3.5)."""
        stream = self.stream
        remaining = length
        while remaining:
            if remaining < 6:
                raise pdu.ProtocolError("P-DATA-TF with a truncated PDV")
            if stream.buffered < 6:
                await stream.wait(6, self.timeout)
            item_length, context_id, control = pdu.pdv_header(stream.take(6))
            if item_length < 2 or item_length + 4 > remaining:
                raise pdu.ProtocolError("PDV length inconsistent with its PDU")
            remaining -= item_length + 4
            size = item_length - 2
            if context_id not in self.contexts:
                raise pdu.ProtocolError(f"PDV on presentation context {context_id}, not accepted")
            is_command, last = bool(control & 0x01), bool(control & 0x02)
            if is_command:
                if message.spool is not None or message.expect_dataset:
                    raise pdu.ProtocolError("command fragment while a dataset was expected")
                if message.command and context_id != message.context_id:
                    raise pdu.ProtocolError("command fragments on different presentation contexts")
                if len(message.command) + size > pdu.MAX_COMMAND:
                    raise pdu.ProtocolError("command set too large")
                message.context_id = context_id
                message.command += await stream.read(size, self.timeout)
                if last:
                    message.parsed = pdu.decode_command(bytes(message.command))
                    if message.parsed.has_dataset:
                        message.expect_dataset = True
                        if message.parsed.field == pdu.C_FIND_RQ:  # an identifier: small, kept in memory
                            message.inline = bytearray()
                        else:
                            message.open(self.context.spool,
                                         stored_header(message.parsed, self.contexts[context_id][1]))
                    else:
                        await self._dispatch(message)
            else:
                if not message.expect_dataset or context_id != message.context_id:
                    raise pdu.ProtocolError("dataset fragment without its command")
                await self._copy(size, message)
                if last:
                    await self._dispatch(message)

    async def _copy(self, size: int, message: Message) -> None:
        """One dataset fragment, from the receive buffer to the spool file (or the identifier)."""
        stream = self.stream
        inline = message.inline
        if inline is not None and len(inline) + size > MAX_IDENTIFIER:
            raise pdu.ProtocolError(f"identifier of more than {MAX_IDENTIFIER} bytes")
        while size:
            if not stream.buffered:
                await stream.wait(1, self.timeout)
            view = stream.take(size)  # valid until the next await: used at once
            if inline is not None:
                inline += view
            elif message.spool is not None:
                message.write(view)
            size -= len(view)

    async def _dispatch(self, message: Message) -> None:
        command = message.parsed
        assert command is not None
        context_id = message.context_id
        abstract, syntax = self.contexts[context_id]
        if command.field == pdu.C_CANCEL_RQ:  # PS3.7 9.3.2.3: no response of its own
            message.discard()
            message.reset()
            if self._busy() and command.responding_to == self._operation_id:
                self._cancel_requested = True
            return
        await self._settle()
        find = self.context.find
        if command.field == pdu.C_FIND_RQ and find is not None and abstract in find.models:  # PS3.7 9.1.2
            identifier = message.inline
            message.reset()
            if identifier is None:
                status = FIND_WITHOUT_IDENTIFIER
                response = pdu.C_FIND_RSP
            else:
                self._operation_id, self._cancel_requested = command.message_id, False
                call = FindCall(bytes(identifier), abstract, syntax, self.calling_aet, self.address)
                self._operation = asyncio.create_task(self._find(find, call, command, context_id))
                return
        elif command.field == pdu.C_ECHO_RQ:  # PS3.7 9.3.5
            message.discard()  # a dataset it should not have had
            status = SUCCESS
            response = pdu.C_ECHO_RSP
        elif command.field == pdu.C_STORE_RQ and self.context.store is not None:  # PS3.7 9.3.1
            if message.spool is None:
                raise pdu.ProtocolError("C-STORE-RQ without a dataset", pdu.ABORT_UNEXPECTED_PARAMETER)
            spooled = message.spooled()
            path = message.close()
            try:
                received = Received(path, syntax, self.calling_aet, command.sop_class_uid or None,
                                    command.sop_instance_uid or None, spooled)
                status = await self.context.store(received, abstract, self.tally, self.address)
            finally:
                with contextlib.suppress(OSError):
                    os.unlink(path)
            response = pdu.C_STORE_RSP
        elif command.field == pdu.C_STORE_RQ and self.context.store is None:  # not a context we accepted for it
            message.discard()
            status, response = SOP_CLASS_NOT_NEGOTIATED, pdu.C_STORE_RSP
        else:  # PS3.7 C: 0x0211 unrecognized operation
            message.discard()
            status, response = UNRECOGNIZED_OPERATION, command.field | 0x8000
        message.reset()
        rsp = pdu.encode_response(response, command.message_id, command.sop_class_uid or abstract,
                                  command.sop_instance_uid, status.code, status.comment)
        await self.send(pdu.p_data(context_id, rsp, self.peer_max))

    async def _find(self, find: FindService, call: FindCall, command: pdu.Command, context_id: int) -> None:
        """Send the responses to one C-FIND-RQ, each as it comes (PS3.7 9.1.2.1)."""
        responses = find.responses(call, lambda: self._cancel_requested)
        sop_class = command.sop_class_uid or call.sop_class_uid
        final = False
        try:
            async for answer in responses:
                final = answer.identifier is None and answer.status not in (0xFF00, 0xFF01)
                rsp = pdu.encode_response(pdu.C_FIND_RSP, command.message_id, sop_class, "", answer.status,
                                          answer.comment, has_dataset=answer.identifier is not None)
                data = pdu.p_data(context_id, rsp, self.peer_max)
                if answer.identifier is not None:
                    data += pdu.p_data(context_id, answer.identifier, self.peer_max, command=False)
                await self.send(data)  # a requestor that stops reading: TimeoutError, below
                # Let the read loop take what came meanwhile (a C-CANCEL-RQ) before the next
                # response: writes below the transport's high-water mark never wait.
                await asyncio.sleep(0)
        except TimeoutError:
            log.warning("C-FIND responses not read within the network timeout: aborting",
                        extra={"calling_aet": self.calling_aet, "peer": self.address})
            self.stream.abort()  # the read loop sees the connection end
        except (ConnectionError, OSError) as exc:  # the read loop ends the association
            log.info("C-FIND responses not sent: %s", type(exc).__name__, extra={"calling_aet": self.calling_aet})
        except Exception:  # our fault: the requestor still gets a final status (0x0110)
            log.exception("C-FIND failed", extra={"calling_aet": self.calling_aet})
            if not final:
                rsp = pdu.encode_response(pdu.C_FIND_RSP, command.message_id, sop_class, "", UNEXPECTED.code,
                                          "Unexpected error while querying")
                with contextlib.suppress(Exception):
                    await self.send(pdu.p_data(context_id, rsp, self.peer_max))
        finally:
            await responses.aclose()
            if self._awaiting_header and self.timeout is not None:  # silence counts from now
                self.stream.rearm(self.timeout)
