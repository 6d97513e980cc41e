"""Hostile requests to an archive with sign-in on (ARCHIVE_OIDC_ISSUER: the test Keycloak).

Where a credential may come from (the Authorization header, once; never the query string or a
cookie), CORS with credentials from a foreign origin, and API keys of a revoked name. Tokens that
are forged, for another audience, `alg: none` or HS256 with the public key are refused in
tests/e2e/test_http_auth.py (tokens re-signed from Keycloak's) and tests/unit/test_oidc.py.
"""

from __future__ import annotations

import http.client
import os
import subprocess
import sys
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.auth_client import AUDIENCE, call, keycloak_issuer, user_token
from tests.e2e.harness import ROOT, wait_until
from tests.factories import write_part10
from tests.security.conftest import Archive, ct, get, guarded, start_archive
from tests.stow_client import multipart

CHALLENGE = 'Bearer realm="dicom-archive"'
FOREIGN, ALLOWED = "https://evil.example", "https://viewer.example"  # ARCHIVE_CORS_ORIGINS of the suite


def api_key(archive: Archive, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "archive.cli", "api-key", *args],
                          env={**os.environ, **archive.proc.env}, cwd=ROOT, capture_output=True, text=True,
                          timeout=60)


def new_key(archive: Archive, name: str, role: str = "reader") -> str:
    created = api_key(archive, "create", name, "--role", role)
    assert created.returncode == 0, created.stderr
    return created.stdout.strip()


@pytest.fixture(scope="module")
def signed_in(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Archive]:
    """The suite's settings with sign-in on, holding one study (stored with a writer's API key)."""
    issuer = keycloak_issuer()
    root = tmp_path_factory.mktemp("attack-oidc")
    archive = start_archive(root, ARCHIVE_OIDC_ISSUER=issuer, ARCHIVE_OIDC_AUDIENCE=AUDIENCE)
    try:
        archive.token = new_key(archive, "attack-suite", "writer")
        ds = ct()
        body, content_type = multipart([write_part10(ds, root / "ct.dcm").read_bytes()])
        status, _, answer = call(f"{archive.http}/dicom-web/studies", archive.token, method="POST", body=body,
                                 headers={"Content-Type": content_type})
        assert status == 200, answer
        archive.baseline["ct"] = str(ds.SOPInstanceUID)
        wait_until(lambda: archive.search_count() == 1, timeout=30)
        yield archive
    finally:
        assert archive.proc.stop() == 0, archive.proc.log_tail()


def _study_url(archive: Archive) -> str:
    study, _, _ = archive.location("ct")
    return f"{archive.http}/dicom-web/studies/{study}/metadata"


def test_a_token_in_the_query_string_or_a_cookie_is_not_accepted(signed_in: Archive) -> None:
    """RFC 6750 2.3 (a URI query parameter) is not supported: URLs end up in logs, histories and Referer
    headers. Nothing reads cookies either (a foreign page's request carries them)."""
    url = _study_url(signed_in)
    reader = user_token(keycloak_issuer(), "reader")
    with guarded(signed_in):
        assert call(url, reader)[0] == 200 and call(url, signed_in.token)[0] == 200  # in the header: fine
        for token in (reader, signed_in.token):
            assert token is not None
            for name in ("access_token", "token", "api_key"):
                status, headers, _ = get(f"{url}?{name}={urllib.parse.quote(token)}")
                assert (status, headers.get("WWW-Authenticate")) == (401, CHALLENGE), name
            status, headers, _ = get(url, {"Cookie": f"access_token={token}; Authorization=Bearer {token}"})
            assert (status, headers.get("WWW-Authenticate")) == (401, CHALLENGE)


def test_cors_with_credentials_from_a_foreign_origin_with_sign_in_on(signed_in: Archive) -> None:
    """A preflight needs no token and gets no credentials: refused for a foreign origin; an allowed one may
    send Authorization, never cookies (no Allow-Credentials). A foreign page's request, even with a valid
    token, gets no Access-Control-Allow-Origin: the browser does not let it read the answer."""
    url = _study_url(signed_in)
    preflight = {"Access-Control-Request-Method": "GET", "Access-Control-Request-Headers": "authorization"}
    with guarded(signed_in):
        status, headers, _ = get(url, {"Origin": FOREIGN, **preflight}, method="OPTIONS")
        assert status == 403 and "Access-Control-Allow-Origin" not in headers
        assert headers["Content-Type"].startswith("application/json")
        status, headers, _ = get(url, {"Origin": ALLOWED, **preflight}, method="OPTIONS")
        assert status == 204 and headers["Access-Control-Allow-Origin"] == ALLOWED
        assert "authorization" in headers["Access-Control-Allow-Headers"].lower()
        assert "Access-Control-Allow-Credentials" not in headers
        status, headers, _ = get(url, {"Origin": FOREIGN, "Authorization": f"Bearer {signed_in.token}"})
        assert status == 200 and "Access-Control-Allow-Origin" not in headers
        status, headers, _ = get(url, {"Origin": FOREIGN, "Cookie": "session=1"})
        assert status == 401 and "Access-Control-Allow-Origin" not in headers
        status, headers, _ = get(url, {"Origin": ALLOWED})  # an allowed viewer reads the 401 and signs in
        assert status == 401 and headers["Access-Control-Allow-Origin"] == ALLOWED
        assert "Access-Control-Allow-Credentials" not in headers


def test_an_api_key_of_a_revoked_name(signed_in: Archive) -> None:
    """Revoking a name ends its key at once; a new key under the same name does not bring the old one back."""
    url = _study_url(signed_in)
    with guarded(signed_in):
        first = new_key(signed_in, "nightly-export")
        assert call(url, first)[0] == 200
        assert api_key(signed_in, "revoke", "nightly-export").returncode == 0
        status, headers, _ = call(url, first)
        assert status == 401 and "unknown or revoked API key" in headers["WWW-Authenticate"]
        second = new_key(signed_in, "nightly-export")
        assert call(url, second)[0] == 200
        assert call(url, first)[0] == 401
        assert call(url, first[:-1] + ("A" if first[-1] != "A" else "B"))[0] == 401  # one character off


def _raw(archive: Archive, path: str, authorizations: list[str]) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", int(archive.http.rsplit(":", 1)[1]), timeout=30)
    try:
        conn.putrequest("GET", path)
        for value in authorizations:
            conn.putheader("Authorization", value)
        conn.endheaders()
        response = conn.getresponse()
        return response.status, response.getheader("WWW-Authenticate") or ""
    finally:
        conn.close()


def test_ambiguous_authorization_headers(signed_in: Archive) -> None:
    """Two Authorization headers (a proxy may have checked the other one), a key with something after it:
    401. The scheme is case-insensitive (RFC 9110 11.1): ``bearer`` works."""
    path = urllib.parse.urlsplit(_study_url(signed_in)).path
    key = f"Bearer {signed_in.token}"
    with guarded(signed_in):
        assert _raw(signed_in, path, [key])[0] == 200
        assert _raw(signed_in, path, [f"bearer {signed_in.token}"])[0] == 200
        for values in ([key, "Bearer dka_" + "A" * 43], ["Bearer dka_" + "A" * 43, key], [key, key],
                       [f"{key} {signed_in.token}"], [f"{key},Basic YWRtaW46YWRtaW4="]):
            status, challenge = _raw(signed_in, path, values)
            assert status == 401 and challenge.startswith(CHALLENGE + ', error="invalid_token"'), values


def test_nothing_was_read_without_a_token(signed_in: Archive) -> None:
    """The refusals above are in the audit trail as failed logins; no Query or Instances Accessed record
    names a caller without a token."""
    audit = Path(signed_in.proc.env["ARCHIVE_DATA_DIR"]) / "audit" / "audit.log"
    lines = audit.read_text().splitlines()
    assert any('"110114"' in line for line in lines)  # User Authentication, failed
    assert not [line for line in lines if 'UserID="anonymous"' in line and '"110114"' not in line]
