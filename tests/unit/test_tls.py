"""archive.scp.tls: the BCP 195 profile (PS3.15 B.9/B.10) and clear errors for files that do not load."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from archive.ae_config import AEEntry, PeerTLS
from archive.core.errors import ConfigError
from archive.scp.tls import client_context, peer_subject, server_context, tls_args
from archive.settings import Settings
from tests.e2e.pki import CA


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CA:
    return CA(tmp_path_factory.mktemp("pki"))


def _settings(ca: CA, mutual: bool = False) -> Settings:
    server = ca.issue("archive", hosts=("127.0.0.1",))
    return Settings(tls_cert=str(server.cert), tls_key=str(server.key), tls_client_ca=str(ca.pem) if mutual else "")


def test_the_server_context_follows_bcp_195(ca: CA) -> None:
    context = server_context(_settings(ca))
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.options & ssl.OP_NO_COMPRESSION and context.options & ssl.OP_NO_RENEGOTIATION
    tls12 = [c for c in context.get_ciphers() if c["protocol"] == "TLSv1.2"]
    assert tls12 and all(c["kea"] == "kx-ecdhe" and "GCM" in c["name"] for c in tls12), [c["name"] for c in tls12]
    assert context.verify_mode == ssl.CERT_NONE  # no client certificate asked for without ARCHIVE_TLS_CLIENT_CA
    assert server_context(_settings(ca, mutual=True)).verify_mode == ssl.CERT_REQUIRED


def test_files_that_do_not_load_name_the_setting(ca: CA, tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.pem")
    with pytest.raises(ConfigError, match="ARCHIVE_TLS_CERT/ARCHIVE_TLS_KEY: cannot load certificate"):
        server_context(Settings(tls_cert=missing, tls_key=missing))
    good = _settings(ca)
    with pytest.raises(ConfigError, match="ARCHIVE_TLS_CLIENT_CA: cannot load CA certificates"):
        server_context(Settings(tls_cert=good.tls_cert, tls_key=good.tls_key, tls_client_ca=missing))


def test_the_client_context_checks_the_peer_and_presents_our_certificate(ca: CA) -> None:
    settings = _settings(ca, mutual=True)
    context = client_context(PeerTLS(), settings)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert tls_args(AEEntry("PLAIN", "h", 104), settings) is None
    args = tls_args(AEEntry("PEER", "pacs.example", 2762, tls=PeerTLS(server_name="other.example")), settings)
    assert args is not None and args[1] == "other.example"


def test_the_subject_of_a_verified_certificate() -> None:
    assert peer_subject(None) is None and peer_subject({}) is None
    subject = peer_subject({"subject": ((("countryName", "DE"),), (("organizationName", "Clinic"),),
                                        (("commonName", "CT_ROOM_1"),))})
    assert subject is not None and str(subject) == "CN=CT_ROOM_1,O=Clinic,C=DE" and subject.cn == "CT_ROOM_1"
    assert subject.matches("CT_ROOM_1") and subject.matches("C=DE, CN=CT_ROOM_1, O=Clinic")
    assert not subject.matches("CN=CT_ROOM_1")
