"""The authentication middleware: modes, answers (RFC 6750), the principal it leaves for handlers."""

from __future__ import annotations

import time
from typing import Any
from unittest import mock

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer, make_mocked_request

from archive.auth import api_keys
from archive.auth.access import NOT_FROM_HERE, Access, Mode, Refused, middleware
from archive.auth.api_keys import ApiKeyChecker
from archive.core.errors import ApiKeyExists
from archive.core.identity import Principal, PrincipalKind, Role
from archive.core.ports import ApiKey
from archive.settings import Settings
from archive.web import principal_of
from tests.unit.test_oidc import FakeIssuer, claims, mint, public_jwk, KEY


class MemoryKeys:
    """The ApiKeys port in a dict (the real adapters: tests/contract/test_api_keys.py)."""

    name = "memory"

    def __init__(self) -> None:
        self.by_digest: dict[str, tuple[str, ApiKey]] = {}
        self.touched: list[str] = []

    async def create_key(self, name: str, role: Role, digest: str) -> ApiKey:
        if any(k.name == name for _, k in self.by_digest.values()):
            raise ApiKeyExists(name)
        key = ApiKey(name, role, time.time())
        self.by_digest[digest] = (name, key)
        return key

    async def key_by_digest(self, digest: str) -> ApiKey | None:
        found = self.by_digest.get(digest)
        return found[1] if found else None

    async def touch_key(self, name: str, when: float) -> None:
        self.touched.append(name)


def request(remote: str, headers: dict[str, str] | None = None) -> web.Request:
    transport = mock.Mock()
    transport.get_extra_info.side_effect = lambda name, default=None: (remote, 40000) if name == "peername" else default
    return make_mocked_request("GET", "/dicom-web/studies", headers=headers or {}, transport=transport)


@pytest.mark.parametrize("remote", ["127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1"])
async def test_the_default_lets_loopback_in_with_every_role(remote: str) -> None:
    principal = await Access(Mode.LOCAL).identify(request(remote))
    assert principal == Principal(PrincipalKind.LOCAL, "local", remote, frozenset({Role.ADMIN}))
    assert principal.may(Role.WRITER)


@pytest.mark.parametrize("remote", ["10.1.2.3", "192.0.2.7", "fd00::2", "::ffff:10.0.0.1", ""])
async def test_the_default_refuses_every_other_address_naming_both_settings(remote: str) -> None:
    with pytest.raises(Refused) as refused:
        await Access(Mode.LOCAL).identify(request(remote))
    assert refused.value.response.status == 403
    assert b"ARCHIVE_OIDC_ISSUER" in refused.value.response.body  # type: ignore[operator]
    assert b"ARCHIVE_HTTP_INSECURE_OPEN" in refused.value.response.body  # type: ignore[operator]
    assert "ARCHIVE_OIDC_ISSUER" in NOT_FROM_HERE


async def test_insecure_open_lets_anyone_in() -> None:
    principal = await Access(Mode.OPEN).identify(request("203.0.113.9"))
    assert principal.kind is PrincipalKind.OPEN and principal.may(Role.ADMIN)


async def test_an_api_key_works_from_anywhere_in_every_mode() -> None:
    keys = MemoryKeys()
    key, _ = await api_keys.create(keys, "nightly", Role.READER)
    assert key.startswith("dka_") and len(key) == 4 + 43
    assert keys.by_digest and key not in str(keys.by_digest)
    issuer = FakeIssuer(public_jwk(KEY, "k1"))
    checker = ApiKeyChecker(keys)
    for access in (Access(Mode.LOCAL, api_keys=checker), Access(Mode.OPEN, api_keys=checker),
                   Access(Mode.OIDC, verifier=issuer.verifier(), api_keys=checker)):
        principal = await access.identify(request("198.51.100.4", {"Authorization": f"Bearer {key}"}))
        assert principal == Principal(PrincipalKind.API_KEY, "nightly", "198.51.100.4", frozenset({Role.READER}))
        with pytest.raises(Refused) as refused:
            await access.identify(request("127.0.0.1", {"Authorization": f"Bearer {key}x"}))
        assert refused.value.response.status == 401  # a bad key is 401 even from loopback
        await access.close()
    assert keys.touched == ["nightly"]  # "last used" is written at most once a minute


@pytest.mark.parametrize("header", ["Basic dXNlcjpwYXNz", "Bearer", "Bearer ", "Token abc"])
async def test_a_malformed_authorization_header_is_401(header: str) -> None:
    with pytest.raises(Refused) as refused:
        await Access(Mode.LOCAL).identify(request("127.0.0.1", {"Authorization": header}))
    assert refused.value.response.status == 401
    assert refused.value.response.headers["WWW-Authenticate"].startswith('Bearer realm="dicom-archive", error=')


def test_modes_from_the_settings() -> None:
    assert Access.from_settings(Settings(), None).mode is Mode.LOCAL
    assert Access.from_settings(Settings(http_insecure_open=True), None).mode is Mode.OPEN
    oidc = Access.from_settings(Settings(oidc_issuer="https://sso.example.com/r", oidc_audience="a",
                                         http_insecure_open=True), None)
    assert oidc.mode is Mode.OIDC and "ARCHIVE_HTTP_INSECURE_OPEN is ignored" in oidc.describe()[1]
    assert "loopback" in Access.from_settings(Settings(), None).describe()[1]


async def app_client(access: Access) -> TestClient[Any, Any]:
    async def handler(request: web.Request) -> web.Response:
        principal = principal_of(request)
        return web.json_response({"who": principal.name if principal else None})

    app = web.Application(middlewares=[middleware(access)])
    app.router.add_get("/dicom-web/studies", handler)
    app.router.add_post("/dicom-web/studies", handler)
    app.router.add_get("/healthz", handler)
    client = TestClient(TestServer(app))
    await client.start_server()
    return client


# PRINCIPAL is a typed web.RequestKey: a plain string key would warn (NotAppKeyWarning) at every request
@pytest.mark.filterwarnings("error::aiohttp.web_exceptions.NotAppKeyWarning")
async def test_the_middleware_answers_before_the_handler() -> None:
    issuer = FakeIssuer(public_jwk(KEY, "k1"))
    client = await app_client(Access(Mode.OIDC, verifier=issuer.verifier()))
    try:
        response = await client.get("/dicom-web/studies")
        assert response.status == 401
        assert response.headers["WWW-Authenticate"] == 'Bearer realm="dicom-archive"'
        assert "error" in await response.json()

        response = await client.get("/dicom-web/studies", headers={"Authorization": "Bearer " + mint(
            claims(exp=int(time.time()) - 3600))})
        assert response.status == 401
        assert response.headers["WWW-Authenticate"] == (
            'Bearer realm="dicom-archive", error="invalid_token", error_description="expired"')

        reader = {"Authorization": "Bearer " + mint(claims(realm_access={"roles": ["reader"]}))}
        response = await client.get("/dicom-web/studies", headers=reader)
        assert response.status == 200 and (await response.json()) == {"who": "rita"}
        response = await client.post("/dicom-web/studies", headers=reader, data=b"x" * 1000)
        assert response.status == 403 and "writer" in (await response.json())["error"]
        assert (await client.get("/healthz")).status == 200  # open
        assert (await client.get("/nothing-here")).status == 401  # unknown: never open
        response = await client.options("/dicom-web/studies", headers={
            "Access-Control-Request-Method": "POST", "Origin": "https://viewer.example"})
        assert response.status != 401  # a preflight carries no token
        twice = [("Authorization", reader["Authorization"]), ("Authorization", "Bearer x")]
        for headers in (twice, twice[::-1]):  # one credential per request: a proxy may have checked the other
            response = await client.get("/dicom-web/studies", headers=headers)
            assert response.status == 401 and "more than one" in response.headers["WWW-Authenticate"]
    finally:
        await client.close()
