"""The audit trail: every record to the local file at once, and to the syslog collector from a buffer.

:meth:`Trail.record` (the :class:`archive.core.audit.AuditTrail` port) encodes the event as
PS3.15 XML and appends it to the local file (:mod:`archive.audit.logfile`) in the caller's
thread: a few microseconds, no network, so the file has every record as soon as ``record``
returns. With a collector configured, the RFC 5424 message is then put on a bounded
in-memory buffer that one background thread sends from (:mod:`archive.audit.syslog`).

*Spill* means: a record that cannot go to the collector stays in the local file only. That
happens when the buffer is full (the collector is slower than the records come), while the
collector is down (a failed connect or send marks it down for ``retry`` seconds; records in
that window are not tried), for a record too large for a UDP datagram, and for records still
buffered when the process stops and the drain deadline has passed. Each is counted in
``archive_audit_records_dropped_total{reason}``; ``archive_audit_records_queued`` is the
buffer. A caller never waits for the collector and ``record`` never raises.

UDP cannot tell a sender that nobody listens: records sent to a dead UDP collector are lost
to it without being counted (the file has them). Use TCP or TLS where that matters.
"""

from __future__ import annotations

import logging
import queue
import socket
import threading
import time

from archive import metrics
from archive.audit import syslog
from archive.audit.logfile import AuditFile
from archive.audit.messages import Source, to_xml
from archive.core.audit import AuditEvent

log = logging.getLogger(__name__)

RETRY_SECONDS = 5.0  # a collector that failed is not tried again for this long


class Trail:
    """The audit trail of one process: the local file, and a collector if one is configured."""

    def __init__(self, source: Source, file: AuditFile, collector: syslog.Collector | None = None, *,
                 buffer: int = 10000, retry: float = RETRY_SECONDS) -> None:
        self.source = source
        self.file = file
        self.collector = collector
        self.retry = retry
        self.hostname = socket.gethostname()
        self._queue: queue.Queue[bytes] = queue.Queue(maxsize=buffer)
        self._stopping = threading.Event()
        self._down_until = 0.0
        self._down = False
        self._thread: threading.Thread | None = None

    def start(self) -> "Trail":
        if self.collector is not None and self._thread is None:
            self._thread = threading.Thread(target=self._send_loop, name="audit-syslog", daemon=True)
            self._thread.start()
        return self

    def record(self, event: AuditEvent) -> None:
        """Write the record to the local file and queue it for the collector; never blocks on it, never raises."""
        try:
            xml = to_xml(event, self.source)
        except Exception as exc:  # a bug: say so, but never fail the caller's operation
            log.error("audit record could not be encoded", extra={"event": event.kind.value,
                                                                  "error": type(exc).__name__})
            return
        try:
            self.file.append(xml)
            metrics.AUDIT_RECORDS.labels(event.kind.value).inc()
        except OSError as exc:
            metrics.AUDIT_FILE_FAILURES.inc()
            log.error("audit record not written to the local file", extra={
                "event": event.kind.value, "path": str(self.file.path), "error": f"{type(exc).__name__}: {exc}"})
        if self.collector is None:
            return
        msg = syslog.message(xml, msgid=event.kind.value, outcome=event.outcome, at=event.at, hostname=self.hostname)
        try:
            self._queue.put_nowait(msg)
            metrics.AUDIT_QUEUED.inc()
        except queue.Full:
            metrics.AUDIT_DROPPED.labels("buffer_full").inc()

    def _send_loop(self) -> None:
        assert self.collector is not None
        while not (self._stopping.is_set() and self._queue.empty()):
            try:
                msg = self._queue.get(timeout=0.2)
            except queue.Empty:
                continue
            metrics.AUDIT_QUEUED.dec()
            self._send(self.collector, msg)

    def _send(self, collector: syslog.Collector, msg: bytes) -> None:
        now = time.monotonic()
        if now < self._down_until:
            metrics.AUDIT_DROPPED.labels("collector_down").inc()
            return
        try:
            collector.send(msg)
        except syslog.TooLarge as exc:
            metrics.AUDIT_DROPPED.labels("too_large").inc()
            log.warning("audit record not sent to the collector (it is in the local file)",
                        extra={"collector": collector.url, "reason": str(exc)})
            return
        except Exception as exc:  # refused, reset, timed out, TLS failure: down for a while
            metrics.AUDIT_DROPPED.labels("collector_down").inc()
            self._down_until = time.monotonic() + self.retry
            if not self._down:
                self._down = True
                log.warning("audit collector unreachable; records go to the local file only until it is back",
                            extra={"collector": collector.url, "error": f"{type(exc).__name__}: {exc}"[:300]})
            return
        if self._down:
            self._down = False
            log.info("audit collector reachable again", extra={"collector": collector.url})

    def close(self, drain_seconds: float = 5.0) -> None:
        """Send what is buffered (up to ``drain_seconds``), then close the collector and the file."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(drain_seconds)
            self._thread = None
        left = 0
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
            left += 1
            metrics.AUDIT_QUEUED.dec()
        if left:
            metrics.AUDIT_DROPPED.labels("shutdown").inc(left)
        if self.collector is not None:
            self.collector.close()
        self.file.close()
