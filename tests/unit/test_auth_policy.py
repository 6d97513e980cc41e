"""The route -> role table, and roles from a token's claims."""

from __future__ import annotations

from pathlib import Path

import pytest

from archive.adapters.fts5_search import Fts5Search
from archive.adapters.sqlite_catalog import SqliteCatalog
from archive.auth.claims import claim_at, roles_from, user_name
from archive.auth.policy import RULES, UNKNOWN_OTHER, UNKNOWN_READ, required_role
from archive.core.identity import Role
from archive.web import base_app

R, W, A = Role.READER, Role.WRITER, Role.ADMIN


@pytest.mark.parametrize("method, path, role", [
    ("GET", "/healthz", None), ("HEAD", "/readyz", None), ("GET", "/api/openapi.json", None),
    ("GET", "/metrics", A), ("POST", "/metrics", A),
    ("POST", "/dicom-web/studies", W), ("POST", "/dicom-web/studies/{study}", W),
    ("GET", "/dicom-web/studies", R), ("HEAD", "/dicom-web/studies", R),
    ("GET", "/dicom-web/studies/{study}/series/{series}/instances/{instance}/frames/{frames}", R),
    ("GET", "/dicom-web/studies/{study}/rendered", R), ("GET", "/wado", R), ("GET", "/dicom-web/wado", R),
    ("GET", "/api/search", R), ("GET", "/api/changes", R), ("POST", "/api/changes", UNKNOWN_OTHER),
    ("DELETE", "/dicom-web/studies/{study}", A), ("DELETE", "/dicom-web/studies/{study}/series/{series}", A),
    ("DELETE", "/dicom-web/studies/{study}/series/{series}/instances/{instance}", A),
    # not in the table: reading needs reader, anything else admin; nothing is open by default
    ("GET", "/api/something-new", UNKNOWN_READ), ("DELETE", "/api/something-new", UNKNOWN_OTHER),
    ("POST", "/healthz", UNKNOWN_OTHER), ("PUT", "/dicom-web/studies", UNKNOWN_OTHER),
    ("POST", "/dicom-web/studies/{study}/series/{series}", UNKNOWN_OTHER),
    ("GET", "/healthz/", UNKNOWN_READ), ("GET", "/dicom-webx/studies", UNKNOWN_READ),
])
def test_the_route_table(method: str, path: str, role: Role | None) -> None:
    assert required_role(method, path) == role


def test_no_route_matched_is_never_open() -> None:
    assert required_role("GET", None) is R and required_role("POST", None) is A
    assert required_role("OPTIONS", None) is A  # an OPTIONS that is no CORS preflight


def test_cors_preflights_are_open_and_only_they() -> None:
    assert required_role("OPTIONS", None, preflight=True) is None
    assert required_role("OPTIONS", "/dicom-web/studies", preflight=True) is None
    assert required_role("POST", "/dicom-web/studies", preflight=True) is W  # the header alone opens nothing


def test_defaults_are_at_least_reader() -> None:
    assert UNKNOWN_READ.includes(R) and UNKNOWN_OTHER is A
    open_rules = [rule.path for rule in RULES if rule.role is None]
    # and the web UI's files and settings (it reads patients through the API, with a token)
    assert open_rules == ["/healthz", "/readyz", "/api/openapi.json", "/", "/ui", "/ui/*"]


async def test_every_route_of_the_query_service_is_named_by_the_table(tmp_path: Path) -> None:
    """A new route gets a deliberate rule: the defaults are a safety net, not the design."""
    from archive.compose import Backends
    from archive.ingest.service import IngestService
    from archive.query.routes import add_routes
    from archive.settings import Settings

    settings = Settings(data_dir=tmp_path)
    backends = Backends.from_settings(settings)
    app = base_app(backends.all(), backends.queue)
    add_routes(app, backends.catalog, 10, backends.search, store=backends.store,
               ingest=IngestService(backends.store, backends.queue, settings.duplicate_policy), settings=settings)
    unnamed = []
    for route in app.router.routes():
        canonical = route.resource.canonical if route.resource is not None else ""
        if not any(rule.matches(route.method, canonical) for rule in RULES):
            unnamed.append((route.method, canonical))
    assert not unnamed
    assert isinstance(backends.catalog, SqliteCatalog) and isinstance(backends.search, Fts5Search)
    await backends.close()


KEYCLOAK = {"sub": "u-1", "preferred_username": "rita", "realm_access": {"roles": ["reader", "offline_access"]},
            "resource_access": {"account": {"roles": ["manage-account"]}}}
AZURE = {"sub": "x", "oid": "o", "roles": ["writer", "Task.Read"], "preferred_username": "rita@contoso.com"}


@pytest.mark.parametrize("claims, path, roles", [
    (KEYCLOAK, "realm_access.roles", {R}),
    (AZURE, "roles", {W}),
    ({"roles": "reader admin other"}, "roles", {R, A}),  # a space-separated string
    ({"https://example.com/roles": ["admin"]}, "https://example.com/roles", {A}),  # a URL as claim name
    ({"realm_access": {"roles": ["writer"]}}, "roles", set()),
    ({"realm_access": ["reader"]}, "realm_access.roles", set()),  # the path ends early
    ({"realm_access": {"roles": [1, None, {"x": "admin"}, "reader"]}}, "realm_access.roles", {R}),
    ({"roles": ["Reader", "ADMIN"]}, "roles", set()),  # role names are exact
    ({}, "realm_access.roles", set()),
])
def test_roles_from_the_configured_claim(claims: dict[str, object], path: str, roles: set[Role]) -> None:
    assert roles_from(claims, path) == roles


def test_claim_paths_and_names() -> None:
    assert claim_at(KEYCLOAK, "resource_access.account.roles") == ["manage-account"]
    assert claim_at(KEYCLOAK, "resource_access.other.roles") is None
    assert claim_at(KEYCLOAK, "sub.x") is None
    assert user_name(KEYCLOAK) == "rita" and user_name({"sub": "s-1"}) == "s-1" and user_name({}) == "unknown"


def test_a_route_table_row_is_in_the_openapi_document() -> None:
    from archive.query.openapi import spec

    document = spec()
    search = document["paths"]["/api/search"]["get"]
    assert search["security"] == [{"bearer": []}] and "reader" in search["description"]
    assert document["paths"]["/api/openapi.json"]["get"]["security"] == []
    assert document["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    for path in ("/dicom-web/studies/{study}", "/dicom-web/studies/{study}/series/{series}",
                 "/dicom-web/studies/{study}/series/{series}/instances/{instance}"):
        assert document["paths"][path]["delete"]["x-required-role"] == "admin"
    assert document["paths"]["/api/changes"]["get"]["x-required-role"] == "reader"
