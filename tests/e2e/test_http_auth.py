"""HTTP sign-in end to end: a real `dicom-archive serve` and tokens from the real Keycloak.

Keycloak (scripts/services.sh, realm from scripts/services/keycloak-realm.json) issues every token
here: password grants for the test users (reader, writer, admin, nobody), client credentials for
the script client (writer) and for a client whose tokens lack the archive's audience. Tokens
Keycloak would never issue are made from a real one (re-signed, stripped, tampered); tokens with
wrong claims that need a trusted key: tests/unit/test_oidc.py.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.e2e.auth_client import AUDIENCE, OTHER, call, client_token, keycloak_issuer, user_token
from tests.conftest import free_port
from tests.e2e.harness import ROOT, ArchiveProcess, serve, wait_until
from tests.factories import make_ct, new_uid, write_part10
from tests.stow_client import multipart

CHALLENGE = 'Bearer realm="dicom-archive"'


@pytest.fixture(scope="module")
def issuer() -> str:
    return keycloak_issuer()


@pytest.fixture(scope="module")
def tokens(issuer: str) -> dict[str, str]:
    found = {user: user_token(issuer, user) for user in ("reader", "writer", "admin", "nobody")}
    found["script"] = client_token(issuer)
    found["other-audience"] = client_token(issuer, OTHER)
    return found


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory, issuer: str) -> Iterator[ArchiveProcess]:
    proc = serve(tmp_path_factory.mktemp("auth"), ARCHIVE_OIDC_ISSUER=issuer, ARCHIVE_OIDC_AUDIENCE=AUDIENCE)
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


def stow_body(study: str, count: int = 1) -> tuple[bytes, dict[str, str]]:
    """A STOW-RS request body of ``count`` new instances of ``study``."""
    series = new_uid()
    with tempfile.TemporaryDirectory() as tmp:
        parts = [write_part10(make_ct(study_uid=study, series_uid=series, instance_number=i + 1, seed=i),
                              Path(tmp) / f"{i}.dcm").read_bytes() for i in range(count)]
    body, content_type = multipart(parts)
    return body, {"Content-Type": content_type}


@pytest.fixture(scope="module")
def study(archive: ArchiveProcess, tokens: dict[str, str]) -> str:
    """A study the writer stored over STOW-RS, indexed."""
    uid = new_uid()
    body, headers = stow_body(uid, 2)
    status, _, answer = call(f"{archive.http}/dicom-web/studies", tokens["writer"], method="POST", body=body,
                             headers=headers)
    assert status == 200, answer
    # Both instances indexed (the study shows up in QIDO-RS as soon as the first one is).
    def both_indexed() -> bool:
        # In the catalog (the study shows in QIDO-RS as soon as its first instance is) and in the search
        # index (written just after the catalog).
        found = call(f"{archive.http}/dicom-web/studies/{uid}/instances", tokens["reader"])[2]
        searched = call(f"{archive.http}/api/search?StudyInstanceUID={uid}", tokens["reader"])[2]
        return isinstance(found, list) and len(found) == 2 and searched.get("total") == 1

    wait_until(both_indexed)
    return uid


def test_the_start_up_log_says_what_applies(archive: ArchiveProcess, issuer: str) -> None:
    assert f"HTTP sign-in: access tokens of {issuer} for audience {AUDIENCE}" in archive.log_path.read_text()


def test_a_reader_reads_but_cannot_store(archive: ArchiveProcess, tokens: dict[str, str], study: str) -> None:
    base, reader = archive.http, tokens["reader"]
    status, _, found = call(f"{base}/dicom-web/studies?StudyInstanceUID={study}", reader)
    assert status == 200 and found[0]["0020000D"]["Value"] == [study]
    status, _, metadata = call(f"{base}/dicom-web/studies/{study}/metadata", reader)
    assert status == 200 and len(metadata) == 2
    status, headers, _ = call(f"{base}/dicom-web/studies/{study}", reader)
    assert status == 200 and headers["Content-Type"].startswith("multipart/related")
    status, _, result = call(f"{base}/api/search?StudyInstanceUID={study}", reader)
    assert status == 200 and result["total"] == 1
    body, headers = stow_body(new_uid())
    status, _, answer = call(f"{base}/dicom-web/studies", reader, method="POST", body=body, headers=headers)
    assert status == 403 and "writer" in answer["error"]
    assert call(f"{base}/metrics", reader)[0] == 403


def test_writers_store_users_and_scripts(archive: ArchiveProcess, tokens: dict[str, str]) -> None:
    for who in ("writer", "script", "admin"):  # the script client's service account has writer
        uid = new_uid()
        body, headers = stow_body(uid)
        status, _, answer = call(f"{archive.http}/dicom-web/studies/{uid}", tokens[who], method="POST", body=body,
                                 headers=headers)
        assert status == 200, (who, answer)
    assert call(f"{archive.http}/metrics", tokens["writer"])[0] == 403


def test_an_admin_reads_the_metrics(archive: ArchiveProcess, tokens: dict[str, str]) -> None:
    status, _, body = call(f"{archive.http}/metrics", tokens["admin"])
    assert status == 200 and b"archive_http_auth_total" in body


def test_no_token_is_401_with_a_challenge_and_the_probes_stay_open(archive: ArchiveProcess) -> None:
    base = archive.http
    body, headers = stow_body(new_uid())
    for url, method, data in ((f"{base}/dicom-web/studies", "GET", None), (f"{base}/metrics", "GET", None),
                              (f"{base}/api/search?q=x", "GET", None), (f"{base}/wado?requestType=WADO", "GET", None),
                              (f"{base}/dicom-web/studies", "POST", body), (f"{base}/no/such/route", "GET", None)):
        status, response_headers, answer = call(url, method=method, body=data, headers=headers)
        assert (status, response_headers.get("WWW-Authenticate")) == (401, CHALLENGE), url
        assert "error" in answer
    for path in ("/healthz", "/readyz", "/api/openapi.json", "/ui/config.json"):
        assert call(base + path)[0] == 200, path
    # the web UI starts from its settings before anyone signs in: the issuer, nothing about patients
    assert call(f"{base}/ui/config.json")[2]["oidc"]["issuer"] == keycloak_issuer()
    assert call(f"{base}/dicom-web/studies", "not-a-token")[1]["WWW-Authenticate"].startswith(
        CHALLENGE + ', error="invalid_token"')


@pytest.mark.parametrize("route", ["", "/metadata", "/rendered", "/series", "/thumbnail"])
def test_a_study_that_exists_and_one_that_does_not_answer_alike(archive: ArchiveProcess, tokens: dict[str, str],
                                                                study: str, route: str) -> None:
    missing = new_uid()
    for token, expected in ((None, 401), (tokens["nobody"], 403), (tokens["other-audience"], 401)):
        there = call(f"{archive.http}/dicom-web/studies/{study}{route}", token)
        absent = call(f"{archive.http}/dicom-web/studies/{missing}{route}", token)
        assert there[0] == absent[0] == expected
        assert there[2] == absent[2] and there[1].get("WWW-Authenticate") == absent[1].get("WWW-Authenticate")


def test_a_token_for_another_audience_is_refused(archive: ArchiveProcess, tokens: dict[str, str]) -> None:
    claims = jwt.decode(tokens["other-audience"], options={"verify_signature": False})
    assert "dicom-archive" not in str(claims.get("aud")) and "admin" in claims["realm_access"]["roles"]
    status, headers, answer = call(f"{archive.http}/metrics", tokens["other-audience"])
    assert status == 401 and 'error_description="not for this audience' in headers["WWW-Authenticate"]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _forge(token: str, header: dict[str, Any], claims: dict[str, Any] | None = None) -> str:
    _, payload, _ = token.split(".")
    body = _b64(json.dumps(claims).encode()) if claims is not None else payload
    return _b64(json.dumps(header).encode()) + "." + body


def test_tokens_keycloak_never_issued_are_refused(archive: ArchiveProcess, tokens: dict[str, str],
                                                   issuer: str) -> None:
    real = tokens["reader"]
    header = jwt.get_unverified_header(real)
    claims = jwt.decode(real, options={"verify_signature": False})
    with urllib.request.urlopen(f"{issuer}/protocol/openid-connect/certs", timeout=10) as response:
        jwk = next(k for k in json.loads(response.read())["keys"] if k["kid"] == header["kid"])
    public_pem = jwt.algorithms.RSAAlgorithm.from_jwk(jwk).public_bytes(  # type: ignore[union-attr]
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)

    admin_claims = claims | {"realm_access": {"roles": ["admin"]}}
    unsigned = _forge(real, {"alg": "none", "typ": "JWT", "kid": header["kid"]}, admin_claims) + "."
    signing_input = _forge(real, {"alg": "HS256", "typ": "JWT", "kid": header["kid"]}, admin_claims)
    hs256 = signing_input + "." + _b64(hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest())
    another_key = jwt.encode(admin_claims, rsa.generate_private_key(public_exponent=65537, key_size=2048),
                             algorithm="RS256", headers={"kid": header["kid"]})
    tampered = _forge(real, header, admin_claims) + "." + real.rsplit(".", 1)[1]  # Keycloak's signature, new roles
    for name, forged in (("alg none", unsigned), ("HS256 keyed with the public key", hs256),
                         ("signed by another key", another_key), ("roles changed", tampered)):
        status, headers, _ = call(f"{archive.http}/metrics", forged)
        assert status == 401 and 'error="invalid_token"' in headers["WWW-Authenticate"], name
    assert call(f"{archive.http}/dicom-web/studies", real)[0] == 200  # the real one still works


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "archive.cli", "api-key", *args], env={**os.environ, **env},
                          capture_output=True, text=True, cwd=ROOT, timeout=60)


def test_api_keys_from_the_cli(archive: ArchiveProcess, study: str) -> None:
    created = _cli(archive.env, "create", "nightly-export", "--role", "reader")
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    assert key.startswith("dka_") and "shown only now" in created.stderr
    assert _cli(archive.env, "create", "nightly-export", "--role", "admin").returncode == 1

    status, _, found = call(f"{archive.http}/dicom-web/studies?StudyInstanceUID={study}", key)
    assert status == 200 and len(found) == 1
    body, headers = stow_body(new_uid())
    assert call(f"{archive.http}/dicom-web/studies", key, method="POST", body=body, headers=headers)[0] == 403

    listed = wait_until(lambda: [k for k in json.loads(_cli(archive.env, "list", "--json").stdout)
                                 if k["name"] == "nightly-export" and k["last_used_at"]])
    assert listed[0]["role"] == "reader" and key not in _cli(archive.env, "list", "--json").stdout
    assert "nightly-export\treader\tcreated" in _cli(archive.env, "list").stdout

    assert _cli(archive.env, "revoke", "nightly-export").returncode == 0
    status, headers, _ = call(f"{archive.http}/dicom-web/studies", key)
    assert status == 401 and "unknown or revoked API key" in headers["WWW-Authenticate"]
    assert _cli(archive.env, "revoke", "nightly-export").returncode == 1


def test_refused_requests_are_in_the_audit_trail(archive: ArchiveProcess, tokens: dict[str, str]) -> None:
    """PS3.15 A.5.3: a 401 is a failed User Authentication (110114), a 403 a Security Alert (110113)
    naming the caller the token identified; both in the local audit file, with the path asked for."""
    marker = new_uid()
    assert call(f"{archive.http}/dicom-web/studies?StudyInstanceUID={marker}", None)[0] == 401
    assert call(f"{archive.http}/dicom-web/studies/{marker}", tokens["nobody"])[0] == 403
    audit = Path(archive.env["ARCHIVE_DATA_DIR"]) / "audit" / "audit.log"

    def records() -> list[str] | None:
        lines = [line for line in audit.read_text().splitlines() if marker in line or f"/studies/{marker}" in line]
        return lines if any("110113" in line for line in lines) else None

    found = wait_until(records, timeout=10)
    forbidden = next(line for line in found if "110113" in line)
    assert 'UserID="nobody"' in forbidden and "127.0.0.1" in forbidden
    text = audit.read_text()
    assert '"110114"' in text and 'EventOutcomeIndicator="4"' in text  # the 401: a failed login


def test_an_api_key_at_the_scp_port_before_the_catalog_is_migrated(tmp_path: Path) -> None:
    """`scp` migrates only what receiving needs (object store, queue), not the catalog where API keys
    live: a key sent to its HTTP port (/metrics, admin) before anything migrated the catalog is 503
    naming `dicom-archive migrate`, not 500; once migrated (here by `api-key create`), the key works."""
    env = {"ARCHIVE_DATA_DIR": str(tmp_path / "data"), "ARCHIVE_FSYNC": "false"}
    scp = ArchiveProcess("scp", env, tmp_path / "scp.log", free_port(), free_port()).start()
    try:
        status, _, answer = call(f"{scp.http}/metrics", "dka_" + "A" * 43)
        assert status == 503 and "dicom-archive migrate" in answer["error"], (status, answer)
        assert call(f"{scp.http}/readyz")[0] == 200  # the receiver stays ready: it needs no catalog
        assert call(f"{scp.http}/metrics")[0] == 200  # loopback without a token: no key to look up

        created = _cli(env, "create", "prometheus", "--role", "admin")
        assert created.returncode == 0, created.stderr
        status, _, body = call(f"{scp.http}/metrics", created.stdout.strip())
        assert status == 200 and b"archive_" in body
        status, headers, _ = call(f"{scp.http}/metrics", "dka_" + "A" * 43)
        assert status == 401 and "unknown or revoked API key" in headers["WWW-Authenticate"]
    finally:
        assert scp.stop() == 0, scp.log_tail()
    assert "request failed" not in scp.log_path.read_text()  # what a 500 logs
