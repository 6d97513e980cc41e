"""Syslog for audit records: RFC 5424 messages over UDP (RFC 5426), TCP (RFC 6587) or TLS (RFC 5425).

A record is one RFC 5424 message: facility 10 (security/authorization, ``authpriv``), a
severity from the event's outcome, APP-NAME ``dicom-archive``, MSGID the event type
(``InstancesTransferred``, ``Query``, ...), no structured data, and the PS3.15 XML as MSG,
UTF-8 after a byte order mark (RFC 5424 6.4).

Over TCP and TLS each message is framed by octet counting (``<length> SP <message>``,
RFC 6587 3.4.1, RFC 5425 4.3), so records of any size arrive whole. Over UDP a message is one
datagram (RFC 5426 3.1); one larger than :data:`UDP_MAX` cannot be sent and is not truncated
(a cut XML message is worthless): the collector does not get it, the local file has it.

The collectors here are blocking and used from one sender thread (:mod:`archive.audit.trail`).
"""

from __future__ import annotations

import os
import select
import socket
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

from archive.core.audit import Outcome

FACILITY_AUTHPRIV = 10  # RFC 5424 6.2.1: security/authorization messages
# Severity by outcome (RFC 5424 6.2.1): notice for success, warning/error/critical for failures
SEVERITY = {Outcome.SUCCESS: 5, Outcome.MINOR_FAILURE: 4, Outcome.SERIOUS_FAILURE: 3, Outcome.MAJOR_FAILURE: 2}
APP_NAME = "dicom-archive"
BOM = b"\xef\xbb\xbf"  # RFC 5424 6.4: MSG-UTF8 starts with the byte order mark
UDP_MAX = 65507  # the largest UDP payload over IPv4 (RFC 5426 3.2 lets a sender go that far)
CONNECT_TIMEOUT = 3.0
SEND_TIMEOUT = 5.0


def _printable(text: str, limit: int) -> str:
    """An RFC 5424 header field: PRINTUSASCII (33-126), at most ``limit`` long; ``-`` (NILVALUE) if empty."""
    value = "".join(c for c in text if 33 <= ord(c) <= 126)[:limit]
    return value or "-"


def timestamp(at: float) -> str:
    """RFC 5424 6.2.3 TIMESTAMP (RFC 3339, UTC, milliseconds)."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(at)) + f".{int(at * 1000) % 1000:03d}Z"


def message(xml: str, *, msgid: str, outcome: Outcome, at: float, hostname: str,
            procid: int | None = None) -> bytes:
    """One RFC 5424 message carrying ``xml``."""
    pri = FACILITY_AUTHPRIV * 8 + SEVERITY[outcome]
    header = (f"<{pri}>1 {timestamp(at)} {_printable(hostname, 255)} {APP_NAME} "
              f"{_printable(str(os.getpid() if procid is None else procid), 128)} {_printable(msgid, 32)} - ")
    return header.encode("ascii") + BOM + xml.encode("utf-8")


def octet_counted(msg: bytes) -> bytes:
    """RFC 6587 3.4.1 / RFC 5425 4.3 framing: ``MSG-LEN SP SYSLOG-MSG``."""
    return str(len(msg)).encode("ascii") + b" " + msg


class TooLarge(Exception):
    """A message larger than the transport can carry (a UDP datagram)."""


class Collector(Protocol):
    """A connection to a syslog collector; ``send`` raises OSError when the message did not go."""

    url: str

    def send(self, msg: bytes) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class TlsFiles:
    """PEM files for TLS to the collector (RFC 5425 5: the client checks the collector's certificate)."""

    ca: Path | None = None  # trusted CA certificates (None: the system's)
    cert: Path | None = None  # our certificate, for collectors that require mutual authentication
    key: Path | None = None


def _address(url: str) -> tuple[str, str, int]:
    parts = urlsplit(url)
    if parts.scheme not in ("udp", "tcp", "tls") or not parts.hostname or parts.port is None:
        raise ValueError(f"{url!r} is not udp://host:port, tcp://host:port or tls://host:port")
    return parts.scheme, parts.hostname, parts.port


class UdpCollector:
    """RFC 5426: one message per datagram."""

    def __init__(self, url: str) -> None:
        self.url = url
        _, host, port = _address(url)
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
        self.address = address
        self.sock = socket.socket(family, kind, proto)

    def send(self, msg: bytes) -> None:
        if len(msg) > UDP_MAX:
            raise TooLarge(f"{len(msg)} bytes do not fit in a UDP datagram ({UDP_MAX})")
        self.sock.sendto(msg, self.address)

    def close(self) -> None:
        self.sock.close()


class StreamCollector:
    """TCP (RFC 6587, octet counting) or, with ``tls``, TLS 1.2+ (RFC 5425); connects on first send,
    and a send that fails is tried once more on a fresh connection before the error is raised."""

    def __init__(self, url: str, tls: TlsFiles | None = None) -> None:
        self.url = url
        scheme, self.host, self.port = _address(url)
        self.context = _tls_context(tls or TlsFiles()) if scheme == "tls" else None
        self.sock: socket.socket | None = None

    def _connect(self) -> socket.socket:
        sock = socket.create_connection((self.host, self.port), timeout=CONNECT_TIMEOUT)
        try:
            if self.context is not None:  # RFC 5425 5.2: the collector's certificate and name are checked
                sock = self.context.wrap_socket(sock, server_hostname=self.host)
            sock.settimeout(SEND_TIMEOUT)
        except BaseException:
            sock.close()
            raise
        return sock

    def send(self, msg: bytes) -> None:
        framed = octet_counted(msg)
        try:
            self._send(framed)
        except OSError:  # once more, on a fresh connection: a collector that restarted, a handshake cut short
            self._send(framed)

    def _send(self, framed: bytes) -> None:
        if self.sock is not None and _closed_by_peer(self.sock):
            self.close()  # a collector never writes to us: readable means it went away
        if self.sock is None:
            self.sock = self._connect()
        try:
            self.sock.sendall(framed)
        except BaseException:
            self.close()  # the next send reconnects
            raise

    def close(self) -> None:
        if self.sock is not None:
            try:
                self.sock.close()
            finally:
                self.sock = None


def _closed_by_peer(sock: socket.socket) -> bool:
    readable, _, _ = select.select([sock], [], [], 0)
    return bool(readable)


def _tls_context(files: TlsFiles) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(files.ca) if files.ca else None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2  # RFC 5425 as updated by RFC 9662; BCP 195
    if files.cert is not None:
        context.load_cert_chain(str(files.cert), str(files.key) if files.key else None)
    return context


def collector(url: str, tls: TlsFiles | None = None) -> Collector:
    """The collector named by ``url`` (``udp://``, ``tcp://`` or ``tls://host:port``)."""
    scheme, _, _ = _address(url)
    return UdpCollector(url) if scheme == "udp" else StreamCollector(url, tls)
