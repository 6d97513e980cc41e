"""pynetdicom (3.0): its process-wide options and the one patch we need, set by :func:`install`.

The pynetdicom server (:mod:`archive.scp.pynetdicom_engine`) calls :func:`install` when it
starts, before any association (idempotent). What it does, and why:

- Documented options (``pynetdicom._config``): received C-STORE datasets are written to a
  file in chunks (``STORE_RECV_CHUNKED_DATASET``) and sub-operations send a file in chunks
  (``STORE_SEND_CHUNKED_DATASET``), so a multi-GB instance never sits in memory; request and
  response identifiers are never logged (``LOG_REQUEST_IDENTIFIERS``,
  ``LOG_RESPONSE_IDENTIFIERS``: they hold patient names and IDs), and pynetdicom's own
  logger only passes warnings (our handlers log what matters, with UIDs).
- The spool directory: pynetdicom writes each received dataset with
  ``tempfile.NamedTemporaryFile()`` in the default temporary directory
  (``dimse_messages.py``) and has no option to name another (pydicom/pynetdicom#526
  discussed one; it was not merged). ``tempfile.tempdir`` is the only lever: it points at
  this process's spool directory on the data volume, not at a small ``/tmp``.
- One patch of ``Association.send_c_store``, through which pynetdicom's C-MOVE and C-GET
  service classes send every sub-operation (``service_class.py``, ``_move_scp`` and
  ``_get_scp``). It works around two limits, both still in pynetdicom 3.0.4 and its main
  branch (no upstream issue yet):

  1. A C-MOVE/C-GET handler must yield a ``Dataset`` for each sub-operation (a file path is
     refused as "invalid dataset"), so an instance would have to be read whole into
     memory. We yield a :class:`SendsItself` dataset that names its file;
     ``send_c_store`` is given what its :meth:`~SendsItself.to_send` returns for the
     association (the file, or a converted dataset when the peer took none of the stored
     syntax), or the sub-operation fails with its error.
  2. The C-STORE sub-operations of a C-MOVE carry our own AE title as Move Originator
     Application Entity Title (``originator_aet=self.ae.ae_title``); PS3.7 9.1.1.1 wants
     the C-MOVE requestor's, which a destination uses to tell whose retrieve it is
     receiving. The handler names the requestor with :func:`move_originator`.

  ``tests/unit/test_compat.py`` runs plain pynetdicom (without :func:`install`, in a child
  process) and fails once either limit is gone upstream: then delete that half of the patch.
- :func:`stop_listening`: our server is made with ``AE.make_server`` (``AE.start_server`` takes
  no server class), so it is not in the AE's private ``_servers`` list, and pynetdicom's own
  ``ThreadedAssociationServer.shutdown`` fails removing it from there; it is stopped as the
  ``socketserver`` it is.
- :func:`reject`: pynetdicom checks calling AE titles itself (``require_calling_aet``) but has no
  public way for an ``EVT_REQUESTED`` handler to refuse an association for another reason (our
  network allow-list); it sends the A-ASSOCIATE-RJ through the association's ACSE and ends the
  association as pynetdicom's own rejection does (``association.py``, ``_run_as_acceptor``).
- :func:`release_requested`: whether the requestor has asked to release (an A-RELEASE-RQ waiting
  in the DUL), before a Storage Commitment report is sent on its association.
- A patch of ``AssociationSocket.recv``, through which the DUL reads every PDU
  (``dul.py``, ``_read_pdu_data``: the 6-byte header, then ``recv(pdu_length)``). pynetdicom
  reads whatever length the header announces into memory, on a socket without a timeout, and
  checks neither its own Maximum Length nor ARTIM while it reads: a PDU length of 0xFFFFFFFF
  held the association's thread and slot for ever, and a peer sending that much grew the
  process by up to 4 GiB (found by the attack suite, ``tests/security/test_dimse.py``; still
  so in 3.0.4). The patch refuses a PDU longer than our Maximum Length (ARCHIVE_MAX_PDU, 64 KiB
  at least, for association requests) before reading it, and bounds each read by
  ARCHIVE_NETWORK_TIMEOUT; either raises ``OSError``, which the DUL treats as a closed
  connection (PS3.8 Evt17). ``tests/unit/test_compat.py`` fails once plain pynetdicom refuses
  such a length itself.
- :func:`find_cancelled`, which a C-FIND handler asks before each response: pynetdicom reads a
  C-CANCEL late (see there). It reads two private attributes of the association's DUL
  (``socket``, ``to_provider_queue``); the same test file fails if they go away.
- :func:`peer_certificate`: the verified client certificate of an association that came over
  TLS. pynetdicom keeps the socket in its DUL (``dul.socket.socket``) and has no accessor for it.
- :func:`fix_reactor_pause`: a requestor (our forwarder, C-MOVE sub-operations, commitment
  reports, and every pynetdicom client of the tests and benchmarks) lost a response that came
  back quickly. Each ``send_*`` pauses the association's reactor thread so that it does not take
  the response off the DIMSE queue first: it clears ``_reactor_checkpoint`` and spins until
  ``_is_paused``. But the reactor sets ``_is_paused`` before ``_reactor_checkpoint.wait()`` and
  clears it only after, so a ``send_*`` right after the previous one's ``set()`` sees the old
  True before the woken reactor has cleared it, sends, and the reactor takes the answer: pynetdicom
  logs "Received unexpected C-ECHO service message" and ``send_*`` waits out the DIMSE timeout
  (300 back-to-back C-ECHOs against the asyncio engine lost one, 2 runs in 3; a rolling-upgrade
  test lost a C-STORE). The fix makes ``_is_paused`` true only while the reactor is really parked
  in the checkpoint (or is the thread asking, or has stopped). Still so in pynetdicom 3.0.4 (no
  upstream issue yet); ``tests/unit/test_compat.py`` fails once plain pynetdicom pauses safely.
- :func:`guard_requests`: a check run before pynetdicom's Query/Retrieve service class serves a
  C-FIND, C-MOVE or C-GET, which may answer it at once with a failure status (0x0124 Refused: Not
  Authorized, PS3.7 Annex C). A handler cannot: pynetdicom wants a C-MOVE handler's first yield to
  be the destination, and opens an association to it before any status (``_move_scp``), and a
  C-GET handler's first the number of sub-operations. It wraps the public
  ``QueryRetrieveServiceClass.SCP`` (no upstream issue: handlers have no refusal path there).
"""

from __future__ import annotations

import logging
import select
import socket
import socketserver
import ssl
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from pydicom.dataset import Dataset
from pynetdicom import _config, evt
from pynetdicom.ae import ApplicationEntity
from pynetdicom.association import Association
from pynetdicom.events import Event
from pynetdicom.pdu_primitives import A_RELEASE
from pynetdicom.service_class import QueryRetrieveServiceClass
from pynetdicom.transport import AssociationSocket, ThreadedAssociationServer

FIND_BACKLOG = 64  # C-FIND responses (two P-DATA primitives each) queued to pynetdicom's reactor at most
_ORIGINATOR = threading.local()  # per association thread: the C-MOVE requestor's AE title
_lock = threading.Lock()
_original_send_c_store = Association.send_c_store
_original_recv = AssociationSocket.recv
MIN_PDU_LIMIT = 1 << 16  # an A-ASSOCIATE-RQ/AC with every context (the asyncio engine's cap too)
_recv_limits: dict[str, float] = {"max_bytes": 0, "timeout": 0}
_original_qr_scp = QueryRetrieveServiceClass.SCP
# (association, C-FIND/C-MOVE/C-GET request primitive) -> None to serve it, or (status, comment) to refuse
RequestGuard = Callable[[Association, Any], "tuple[int, str] | None"]
_GUARDS: "weakref.WeakKeyDictionary[ApplicationEntity, RequestGuard]" = weakref.WeakKeyDictionary()


@runtime_checkable
class SendsItself(Protocol):
    """A dataset yielded by a C-MOVE/C-GET handler that knows what to send for it."""

    def to_send(self, assoc: Association) -> Path | Dataset:
        """The file or dataset ``send_c_store`` sends on ``assoc``; raise to fail the sub-operation."""


def _send_c_store(self: Association, dataset: Any, *args: Any, **kwargs: Any) -> Dataset:
    if isinstance(dataset, SendsItself):
        dataset = dataset.to_send(self)
    if kwargs.get("originator_aet") and getattr(_ORIGINATOR, "aet", None):
        kwargs["originator_aet"] = _ORIGINATOR.aet
    return _original_send_c_store(self, dataset, *args, **kwargs)


@contextmanager
def move_originator(aet: str) -> Iterator[None]:
    """The Move Originator of the C-STORE sub-operations sent from this thread in the block."""
    _ORIGINATOR.aet = aet
    try:
        yield
    finally:
        _ORIGINATOR.aet = None


def _bounded_recv(self: AssociationSocket, nr_bytes: int) -> bytearray:
    """``AssociationSocket.recv`` that refuses an over-long PDU and never blocks for ever."""
    limit = _recv_limits["max_bytes"]
    if limit and nr_bytes > limit:
        raise OSError(f"PDU of {nr_bytes} bytes exceeds our Maximum Length ({int(limit)} bytes)")
    sock = self.socket
    if sock is not None and _recv_limits["timeout"] and sock.gettimeout() is None:
        sock.settimeout(_recv_limits["timeout"])  # silence while a PDU is read (PS3.8 9.1.5)
    return _original_recv(self, nr_bytes)


def install(spool_dir: Path, max_pdu: int = 0, network_timeout: float = 0) -> None:
    """Set pynetdicom's options and install the patches (idempotent; the spool directory may change).

    ``max_pdu`` (0: unlimited) and ``network_timeout`` (0: none) bound every PDU read.
    """
    _config.STORE_RECV_CHUNKED_DATASET = True
    _config.STORE_SEND_CHUNKED_DATASET = True
    _config.LOG_REQUEST_IDENTIFIERS = False
    _config.LOG_RESPONSE_IDENTIFIERS = False
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    tempfile.tempdir = str(spool_dir)
    _recv_limits["max_bytes"] = max(max_pdu + 6, MIN_PDU_LIMIT) if max_pdu else 0
    _recv_limits["timeout"] = network_timeout
    fix_reactor_pause()
    with _lock:
        if Association.send_c_store is not _send_c_store:
            Association.send_c_store = _send_c_store  # type: ignore[method-assign]
        if AssociationSocket.recv is not _bounded_recv:
            AssociationSocket.recv = _bounded_recv  # type: ignore[method-assign]


class _Checkpoint:
    """``threading.Event``'s interface, and whether a waiter is parked in it while it is clear."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._flag = True
        self.parked = False

    def is_set(self) -> bool:
        return self._flag

    def set(self) -> None:
        with self._cond:
            self._flag = True
            self._cond.notify_all()

    def clear(self) -> None:
        with self._cond:
            self._flag = False

    def wait(self, timeout: float | None = None) -> bool:
        with self._cond:
            if self._flag:
                return True
            self.parked = True
            try:
                return self._cond.wait_for(lambda: self._flag, timeout)
            finally:
                self.parked = False


def _is_paused(self: Association) -> bool:
    """Whether a ``send_*`` may go ahead: the reactor cannot take the response it waits for."""
    checkpoint = self.__dict__.get("_reactor_checkpoint")
    if not isinstance(checkpoint, _Checkpoint):  # made before the fix was installed: pynetdicom's flag
        return bool(self.__dict__.get("_paused_flag", self.__dict__.get("_is_paused", False)))
    return (checkpoint.parked  # the reactor waits for set()
            or threading.current_thread() is self  # the reactor itself (a service class's send_c_store)
            or self._kill or not self.is_alive())  # no reactor any more


def _set_paused(self: Association, value: bool) -> None:
    self.__dict__["_paused_flag"] = value  # what the reactor says; read only for associations from before


_original_init = Association.__init__


def _init(self: Association, *args: Any, **kwargs: Any) -> None:
    _original_init(self, *args, **kwargs)
    self._reactor_checkpoint = _Checkpoint()  # type: ignore[assignment]


def fix_reactor_pause() -> None:
    """Make pynetdicom's reactor pause safe for every association made from now on (idempotent; see the module)."""
    with _lock:
        if Association.__init__ is not _init:
            Association.__init__ = _init  # type: ignore[method-assign]
            Association._is_paused = property(_is_paused, _set_paused)  # type: ignore[assignment]


def reject(assoc: Association, result: int, source: int, reason: int) -> None:
    """From an EVT_REQUESTED handler: answer A-ASSOCIATE-RJ (PS3.8 9.3.4) and end the association."""
    assoc.acse.send_reject(result, source, reason)
    assoc.is_rejected = True
    assoc.is_established = False
    evt.trigger(assoc, evt.EVT_REJECTED, {})
    assoc.kill()


def release_requested(assoc: Association) -> bool:
    """Whether an A-RELEASE-RQ from the requestor waits to be read (PS3.8 7.2)."""
    primitive = assoc.dul.peek_next_pdu()
    return isinstance(primitive, A_RELEASE) and primitive.result is None


def stop_listening(server: ThreadedAssociationServer) -> None:
    """Stop accepting and close the listening socket (associations in progress go on)."""
    socketserver.TCPServer.shutdown(server)
    server.server_close()



def find_cancelled(event: Event, wait: float) -> bool:
    """Whether the requestor sent C-CANCEL-FIND-RQ: asked before each C-FIND response, which the
    SCP then stops sending (PS3.4 C.4.1.2.3).

    pynetdicom's reactor thread reads the socket only when it has no response left to send,
    and the responses a handler yields queue up for it without limit: a handler faster than
    the reactor left a C-CANCEL unread until every match was queued (all 308 of a query came
    back, 1 run in 3). So once the requestor has sent something, nothing more is queued until
    the reactor has read it (waiting at most ``wait`` seconds); and at most FIND_BACKLOG
    responses are queued, or the reactor, starved of the GIL by the handler, sends none.
    """
    dul = event.assoc.dul
    sock = dul.socket.socket if dul.socket is not None else None
    deadline = time.monotonic() + wait
    while event.assoc.is_established and time.monotonic() < deadline:
        if event.is_cancelled:
            return True
        if dul.to_provider_queue.qsize() < 2 * FIND_BACKLOG and not (sock is not None and _readable(sock)):
            return False
        time.sleep(0.001)  # the reactor sends what is queued, then reads what came
    return event.is_cancelled


def _readable(sock: socket.socket) -> bool:
    try:
        return bool(select.select([sock], [], [], 0)[0])
    except (OSError, ValueError):  # closed under us: the reactor ends the association
        return False


def peer_certificate(assoc: Association) -> dict[str, Any] | None:
    """The verified certificate the requestor presented over TLS (``getpeercert()``), else None."""
    transport = assoc.dul.socket
    sock = getattr(transport, "socket", None) if transport is not None else None
    if not isinstance(sock, ssl.SSLSocket):
        return None
    try:
        return sock.getpeercert() or None
    except (ValueError, OSError):  # closed meanwhile
        return None


def _qr_scp(self: QueryRetrieveServiceClass, req: Any, context: Any) -> None:
    guard = _GUARDS.get(self.ae)
    refusal = guard(self.assoc, req) if guard is not None else None
    if refusal is None:
        return _original_qr_scp(self, req, context)
    status, comment = refusal
    rsp = type(req)()  # C_FIND, C_GET or C_MOVE: the response primitive is the same class
    rsp.MessageIDBeingRespondedTo = req.MessageID
    rsp.AffectedSOPClassUID = req.AffectedSOPClassUID
    rsp.Status = status
    rsp.ErrorComment = comment[:64]  # LO
    self.dimse.send_msg(rsp, context.context_id)
    return None


def guard_requests(ae: ApplicationEntity, guard: RequestGuard) -> None:
    """Run ``guard`` before ``ae`` serves each C-FIND, C-MOVE or C-GET (see the module)."""
    with _lock:
        _GUARDS[ae] = guard
        if QueryRetrieveServiceClass.SCP is not _qr_scp:
            QueryRetrieveServiceClass.SCP = _qr_scp  # type: ignore[method-assign]
