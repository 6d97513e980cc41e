"""Who can reach the HTTP API: the loopback default seen from another address, the open switch,
HTTPS on the HTTP port, and the metrics port.

Another address: a network namespace made here (``ip netns``, needs root) whose loopback
interface also carries 198.18.0.1 (RFC 2544's benchmarking range): a client inside it that
connects to 198.18.0.1 arrives from 198.18.0.1, not from 127.0.0.1, and no packet leaves the
namespace. The archive runs inside the same namespace.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
import signal
import ssl
import subprocess
import sys
import urllib.error
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.conftest import free_port, missing
from tests.e2e.auth_client import AUDIENCE, call, keycloak_issuer, user_token
from tests.e2e.harness import ROOT, serve, wait_until

OTHER_ADDRESS = "198.18.0.1"


class Namespace:
    """A network namespace with loopback up and OTHER_ADDRESS on it."""

    def __init__(self) -> None:
        self.name = f"archive-test-{uuid.uuid4().hex[:8]}"

    def create(self) -> None:
        if os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("curl") is None:
            missing("a network namespace needs root, iproute2 (ip) and curl")
        made = subprocess.run(["ip", "netns", "add", self.name], capture_output=True, text=True)
        if made.returncode != 0:
            missing(f"cannot create a network namespace: {made.stderr.strip()}")
        for command in (["link", "set", "lo", "up"], ["addr", "add", f"{OTHER_ADDRESS}/32", "dev", "lo"]):
            subprocess.run(["ip", "-n", self.name, *command], check=True)

    def delete(self) -> None:
        subprocess.run(["ip", "netns", "del", self.name], check=False)

    def prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.name]

    def get(self, host: str, port: int, path: str, token: str | None = None) -> tuple[int, str]:
        """(status, body) of a GET from inside the namespace, to ``host`` (which is also where it comes from)."""
        command = [*self.prefix(), "curl", "-s", "--max-time", "10", "-o", "-", "-w", "\n%{http_code}",
                   f"http://{host}:{port}{path}"]
        if token:
            command += ["-H", f"Authorization: Bearer {token}"]
        out = subprocess.run(command, capture_output=True, text=True, timeout=30).stdout
        body, _, status = out.rpartition("\n")
        return int(status or 0), body


@pytest.fixture
def namespace() -> Iterator[Namespace]:
    ns = Namespace()
    ns.create()
    try:
        yield ns
    finally:
        ns.delete()


class NamespacedServe:
    """``dicom-archive serve`` inside the namespace, listening on every address of it."""

    def __init__(self, ns: Namespace, tmp_path: Path, **env: str) -> None:
        self.ns, self.http_port, self.data = ns, free_port(), tmp_path / "data"
        self.log = tmp_path / "serve.log"
        self.env = {**os.environ, "ARCHIVE_DATA_DIR": str(self.data), "ARCHIVE_FSYNC": "false",
                    "ARCHIVE_BIND": "0.0.0.0", "ARCHIVE_HTTP_PORT": str(self.http_port),
                    "ARCHIVE_DICOM_PORT": str(free_port()), "ARCHIVE_LOG_FORMAT": "text", **env}
        for name in ("ARCHIVE_OIDC_ISSUER", "ARCHIVE_HTTP_INSECURE_OPEN"):
            if name not in env:
                self.env.pop(name, None)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([*ns.prefix(), sys.executable, "-m", "archive.cli", "serve"],
                                         env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)

    def wait_ready(self) -> None:
        def ready() -> bool:
            assert self.proc.poll() is None, self.log.read_text()
            return self.ns.get("127.0.0.1", self.http_port, "/readyz")[0] == 200

        wait_until(ready, timeout=60, interval=0.2)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(40)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def test_the_default_answers_loopback_only_and_api_keys_from_anywhere(namespace: Namespace, tmp_path: Path) -> None:
    archive = NamespacedServe(namespace, tmp_path)
    try:
        archive.wait_ready()
        port = archive.http_port
        status, body = namespace.get(OTHER_ADDRESS, port, "/dicom-web/studies")
        assert status == 403 and "ARCHIVE_OIDC_ISSUER" in body and "ARCHIVE_HTTP_INSECURE_OPEN" in body
        assert namespace.get(OTHER_ADDRESS, port, "/metrics")[0] == 403
        assert namespace.get(OTHER_ADDRESS, port, "/api/search?q=x")[0] == 403
        assert namespace.get(OTHER_ADDRESS, port, "/healthz")[0] == 200  # probes come from elsewhere
        assert namespace.get("127.0.0.1", port, "/dicom-web/studies")[0] == 200
        assert namespace.get("127.0.0.1", port, "/metrics")[0] == 200

        created = subprocess.run([sys.executable, "-m", "archive.cli", "api-key", "create", "remote-script",
                                  "--role", "reader"], env=archive.env, capture_output=True, text=True, cwd=ROOT,
                                 timeout=60)
        key = created.stdout.strip()
        assert namespace.get(OTHER_ADDRESS, port, "/dicom-web/studies", key)[0] == 200
        assert namespace.get(OTHER_ADDRESS, port, "/metrics", key)[0] == 403  # the key's role, not more
        assert "No HTTP authentication configured: loopback clients have every role" in archive.log.read_text()
    finally:
        archive.stop()


def test_insecure_open_answers_every_address(namespace: Namespace, tmp_path: Path) -> None:
    archive = NamespacedServe(namespace, tmp_path, ARCHIVE_HTTP_INSECURE_OPEN="true")
    try:
        archive.wait_ready()
        assert namespace.get(OTHER_ADDRESS, archive.http_port, "/dicom-web/studies")[0] == 200
        assert namespace.get(OTHER_ADDRESS, archive.http_port, "/metrics")[0] == 200
        assert "ARCHIVE_HTTP_INSECURE_OPEN=true: every HTTP client" in archive.log.read_text()
    finally:
        archive.stop()


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key (PEM), made with `cryptography`."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dicom-archive test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "tls.crt", directory / "tls.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning")
def test_https_on_the_http_port_and_metrics_on_their_own(tmp_path: Path) -> None:
    issuer = keycloak_issuer()
    cert, key = self_signed(tmp_path)
    metrics_port = free_port()
    archive = serve(tmp_path, ARCHIVE_HTTP_TLS_CERT=str(cert), ARCHIVE_HTTP_TLS_KEY=str(key),
                    ARCHIVE_METRICS_PORT=str(metrics_port), ARCHIVE_OIDC_ISSUER=issuer,
                    ARCHIVE_OIDC_AUDIENCE=AUDIENCE)
    archive.start(wait_ready=False)
    trust = ssl.create_default_context(cafile=str(cert))
    https = f"https://127.0.0.1:{archive.http_port}"
    try:
        def ready() -> bool:
            assert archive.proc is not None and archive.proc.poll() is None, archive.log_tail()
            try:
                return call(f"{https}/readyz", context=trust, timeout=2)[0] == 200
            except (urllib.error.URLError, ConnectionError, OSError):
                return False

        wait_until(ready, timeout=60, interval=0.2)
        reader, admin = user_token(issuer, "reader"), user_token(issuer, "admin")
        assert call(f"{https}/dicom-web/studies", reader, context=trust)[0] == 200
        assert call(f"{https}/dicom-web/studies", context=trust)[0] == 401
        assert call(f"{https}/metrics", admin, context=trust)[0] == 404  # not on the HTTP port ...
        status, _, body = call(f"http://127.0.0.1:{metrics_port}/metrics")  # ... but here, without a token
        assert status == 200 and b"archive_http_auth_total" in body

        with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
            call(f"http://127.0.0.1:{archive.http_port}/healthz", timeout=5)  # no plain HTTP on the port
        old = ssl.create_default_context(cafile=str(cert))
        old.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
        old.maximum_version = ssl.TLSVersion.TLSv1_1
        with pytest.raises((urllib.error.URLError, ssl.SSLError)):
            call(f"{https}/healthz", context=old, timeout=5)
        tls12 = ssl.create_default_context(cafile=str(cert))
        tls12.maximum_version = ssl.TLSVersion.TLSv1_2
        assert call(f"{https}/healthz", context=tls12)[0] == 200
    finally:
        archive.stop()


def test_a_certificate_that_cannot_be_loaded_stops_serve(tmp_path: Path) -> None:
    archive = serve(tmp_path, ARCHIVE_HTTP_TLS_CERT=str(tmp_path / "missing.crt"),
                    ARCHIVE_HTTP_TLS_KEY=str(tmp_path / "missing.key"))
    archive.start(wait_ready=False)
    assert archive.proc is not None
    assert archive.proc.wait(60) == 2
    assert "ARCHIVE_HTTP_TLS_CERT" in archive.log_path.read_text()
