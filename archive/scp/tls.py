"""TLS contexts for DICOM (PS3.15 Annex B, the BCP 195 profiles of B.9 and B.10).

TLS 1.2 or later only, ECDHE key exchange with AES-GCM for TLS 1.2 (RFC 9325 4.2; what DCMTK's
non-downgrading BCP 195 profile offers), TLS 1.3's own AEAD suites, no compression (RFC 9325
3.3), no renegotiation (RFC 9325 3.5). The server side: our certificate and key
(ARCHIVE_TLS_CERT, ARCHIVE_TLS_KEY), and with ARCHIVE_TLS_CLIENT_CA a client certificate
signed by one of those CAs is required (mutual TLS) and its subject names the AE titles the
peer may call as (:mod:`archive.scp.access`). The client side: peers configured with ``tls``
in ARCHIVE_AE_CONFIG, their certificate checked (CA and host name), ours presented when set.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from typing import Any

from archive.ae_config import AEEntry, PeerTLS, Subject
from archive.core.errors import ConfigError
from archive.settings import Settings

CIPHERS = "ECDHE+AESGCM:!aNULL"  # TLS 1.2 suites; TLS 1.3 suites are all AEAD


def _harden(context: ssl.SSLContext) -> ssl.SSLContext:
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION | ssl.OP_CIPHER_SERVER_PREFERENCE
    return context


def _load_chain(context: ssl.SSLContext, cert: str, key: str, what: str) -> None:
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"{what}: cannot load certificate {cert!r} with key {key!r}: {exc}") from None


def _load_cas(context: ssl.SSLContext, cafile: str, what: str) -> None:
    try:
        context.load_verify_locations(cafile=cafile)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"{what}: cannot load CA certificates {cafile!r}: {exc}") from None


def server_context(settings: Settings) -> ssl.SSLContext:
    """The DICOM TLS port's context; ConfigError naming the setting when a file does not load."""
    context = _harden(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
    _load_chain(context, settings.tls_cert, settings.tls_key, "ARCHIVE_TLS_CERT/ARCHIVE_TLS_KEY")
    if settings.tls_client_ca:
        _load_cas(context, settings.tls_client_ca, "ARCHIVE_TLS_CLIENT_CA")
        context.verify_mode = ssl.CERT_REQUIRED  # PS3.15 B.1: peer authentication with certificates
    return context


def client_context(peer: PeerTLS, settings: Settings) -> ssl.SSLContext:
    """For associations we open to a peer configured with ``tls``: its certificate is verified
    (its ``ca``, else ARCHIVE_TLS_CLIENT_CA, else the system's CAs) and must name its host."""
    what = f"ARCHIVE_AE_CONFIG ({settings.ae_config or 'peers'}) tls"
    context = _harden(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))  # verifies the server and its name
    cafile = peer.ca or settings.tls_client_ca
    if cafile:
        _load_cas(context, cafile, what)
    else:
        context.load_default_certs()
    cert, key = (peer.cert, peer.key) if peer.cert else (settings.tls_cert, settings.tls_key)
    if cert and key:
        _load_chain(context, cert, key, what)
    return context


def tls_args(entry: AEEntry, settings: Settings) -> tuple[ssl.SSLContext, str] | None:
    """pynetdicom's ``tls_args`` for an association to ``entry`` (None: plain TCP)."""
    if entry.tls is None:
        return None
    return client_context(entry.tls, settings), entry.tls.server_name or entry.host


def peer_subject(certificate: Mapping[str, Any] | None) -> Subject | None:
    """The subject of a verified peer certificate (``getpeercert()``); None without one."""
    return Subject.from_peercert(certificate) if certificate else None
