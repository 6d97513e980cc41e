"""HTTP helpers for the authentication tests: tokens from Keycloak, requests with a bearer token."""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from tests.conftest import service_setting

SCRIPTS = ("archive-scripts", "archive-scripts-secret")  # confidential client (service account: writer)
OTHER = ("other-service", "other-service-secret")  # its tokens lack the archive's audience (role: admin)
AUDIENCE = "dicom-archive"


def keycloak_issuer() -> str:
    """The test realm's issuer (scripts/services.sh start writes KEYCLOAK_ISSUER), or skip/fail."""
    return service_setting("KEYCLOAK_ISSUER")


def _token(issuer: str, form: dict[str, str]) -> str:
    data = urllib.parse.urlencode(form).encode()
    with urllib.request.urlopen(f"{issuer}/protocol/openid-connect/token", data=data, timeout=30) as response:
        return str(json.loads(response.read())["access_token"])


def user_token(issuer: str, user: str) -> str:
    """A test user's access token (password grant; the realm's users have `<name>-password`)."""
    client, secret = SCRIPTS
    return _token(issuer, {"grant_type": "password", "client_id": client, "client_secret": secret,
                           "username": user, "password": f"{user}-password", "scope": "openid"})


def client_token(issuer: str, client: tuple[str, str] = SCRIPTS) -> str:
    """A client's own access token (client credentials: its service account's roles)."""
    return _token(issuer, {"grant_type": "client_credentials", "client_id": client[0], "client_secret": client[1]})


def call(url: str, token: str | None = None, *, method: str = "GET", body: bytes | None = None,
         headers: dict[str, str] | None = None, context: ssl.SSLContext | None = None,
         timeout: float = 60.0) -> tuple[int, dict[str, str], Any]:
    """(status, headers, JSON body or bytes)."""
    all_headers = dict(headers or {})
    if token is not None:
        all_headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=body, headers=all_headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
            status, response_headers, raw = response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        status, response_headers, raw = exc.code, dict(exc.headers), exc.read()
    try:
        return status, response_headers, json.loads(raw) if raw else None
    except ValueError:
        return status, response_headers, raw
