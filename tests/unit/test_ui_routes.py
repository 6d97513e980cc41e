"""The web UI's routes (archive/query/ui): where they are, what they cache, their CSP, what is open.

A real aiohttp server over a built-in stand-in for the built files (the real build is tested in a
browser by tests/e2e/test_web_ui.py): the routes read them from ``STATIC``, pointed at a temporary
directory here so that this test needs no Node.js.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from archive.adapters.fts5_search import Fts5Search
from archive.adapters.sqlite_catalog import SqliteCatalog
from archive.auth import access as http_access
from archive.auth.policy import required_role
from archive.core.identity import Role
from archive.query.routes import add_routes
from archive.query.ui import routes as ui
from archive.settings import Settings
from archive.web import base_app

ASSET = "assets/index-AbC123_x.js"


@pytest.fixture
def static(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "static"
    (root / "assets").mkdir(parents=True)
    (root / "index.html").write_text('<!doctype html><script type="module" src="/ui/assets/index-AbC123_x.js">'
                                     "</script>")
    (root / ASSET).write_text("console.log('ui')")
    (tmp_path / "secret.txt").write_text("not for the web")
    monkeypatch.setattr(ui, "STATIC", root)
    return root


async def _client(tmp_path: Path, settings: Settings) -> tuple[TestClient, Fts5Search, SqliteCatalog]:
    index, catalog = Fts5Search(tmp_path / "search.db"), SqliteCatalog(tmp_path / "catalog.db")
    await index.migrate()
    await catalog.migrate()
    access = http_access.Access.from_settings(settings, None)
    app = base_app([catalog, index], auth=http_access.middleware(access))
    add_routes(app, catalog, 100, index, settings=settings)
    client = TestClient(TestServer(app))
    await client.start_server()
    return client, index, catalog


@pytest.fixture
async def client(tmp_path: Path, static: Path) -> AsyncIterator[TestClient]:
    client, index, catalog = await _client(tmp_path, Settings(data_dir=tmp_path, ui_viewer_url=
                                                              "https://ohif.example.com/viewer?StudyInstanceUIDs="
                                                              "{StudyInstanceUID}"))
    yield client
    await client.close()
    await index.close()
    await catalog.close()


def _strict(csp: str) -> dict[str, str]:
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp, csp
    assert directives["script-src"] == "'self'" and directives["default-src"] == "'none'", csp
    assert directives["object-src"] == "'none'" and directives["frame-ancestors"] == "'none'", csp
    return directives


async def test_root_redirects_to_the_ui(client: TestClient) -> None:
    for path in ("/", "/ui"):
        response = await client.get(path, allow_redirects=False)
        assert response.status == 302 and response.headers["Location"] == "/ui/", path


async def test_page_is_revalidated_and_assets_are_immutable(client: TestClient, static: Path) -> None:
    for path in ("/ui/", "/ui/study/1.2.3"):  # deep links answer the page; it routes itself
        response = await client.get(path)
        assert response.status == 200 and response.content_type == "text/html", path
        assert response.headers["Cache-Control"] == "no-cache"
        assert (await response.text()) == (static / "index.html").read_text()
        _strict(response.headers["Content-Security-Policy"])
        assert response.headers["Referrer-Policy"] == "no-referrer"
    response = await client.get(f"/ui/{ASSET}")
    assert response.status == 200 and response.content_type == "text/javascript"
    assert response.headers["Cache-Control"] == "public, max-age=31536000, immutable"
    assert (await response.text()) == "console.log('ui')"


@pytest.mark.parametrize("path", ["/ui/assets/missing.js", "/ui/assets/../../secret.txt", "/ui/assets/%2e%2e/%2e%2e/secret.txt",
                                  "/ui/assets/sub/x.js", "/ui/assets/..%2F..%2Fsecret.txt"])
async def test_only_built_assets_are_served(client: TestClient, path: str) -> None:
    response = await client.get(path)
    assert response.status in (404, 200), path
    assert "not for the web" not in await response.text()
    if response.status == 200:  # a normalised path outside assets/ is the page, never the file
        assert response.content_type == "text/html"


async def test_config_names_what_the_page_needs_and_nothing_else(client: TestClient) -> None:
    response = await client.get("/ui/config.json")
    assert response.status == 200 and response.headers["Cache-Control"] == "no-cache"
    assert await response.json() == {
        "oidc": None, "viewer_url": "https://ohif.example.com/viewer?StudyInstanceUIDs={StudyInstanceUID}"}


async def test_without_a_build_the_page_says_how_to_build_it(client: TestClient, static: Path) -> None:
    (static / "index.html").unlink()
    response = await client.get("/ui/")
    assert response.status == 503 and "make ui" in await response.text()


def test_the_ui_is_open_and_the_api_is_not() -> None:
    """The page and its settings need no token (it cannot sign in before it has loaded); patient
    data stays behind the API's roles."""
    for path in ("/", "/ui", "/ui/{tail}", "/ui/config.json"):
        assert required_role("GET", path) is None, path
        assert required_role("POST", path) is Role.ADMIN, path
    assert required_role("GET", "/api/search") is Role.READER
    assert required_role("GET", "/dicom-web/studies") is Role.READER


async def test_with_sign_in_on_the_page_loads_and_the_search_needs_a_token(tmp_path: Path, static: Path) -> None:
    issuer = "https://sso.example.com/realms/archive"
    settings = Settings(data_dir=tmp_path, oidc_issuer=issuer, oidc_audience="dicom-archive",
                        ui_oidc_client_id="archive-ui")
    client, index, catalog = await _client(tmp_path, settings)
    try:
        page = await client.get("/ui/")
        assert page.status == 200
        directives = _strict(page.headers["Content-Security-Policy"])
        assert directives["connect-src"] == "'self' https://sso.example.com"  # the token endpoint
        assert directives["form-action"] == "'self' https://sso.example.com"  # the sign-out's POST
        assert (await client.get(f"/ui/{ASSET}")).status == 200
        config = await client.get("/ui/config.json")
        assert await config.json() == {"oidc": {"issuer": issuer, "client_id": "archive-ui",
                                                "roles_claim": "realm_access.roles", "idle_minutes": 30.0},
                                       "viewer_url": None}
        assert (await client.get("/api/search")).status == 401
    finally:
        await client.close()
        await index.close()
        await catalog.close()


async def test_the_pdf_worker_is_javascript_and_audio_may_play_from_blobs(client: TestClient, static: Path) -> None:
    """pdf.js's worker is an .mjs asset: a module worker needs a JavaScript MIME type (else the
    browser refuses it); audio objects play from a WAV the page makes, a blob: URL (media-src)."""
    (static / "assets" / "pdf.worker.min-AbC123_x.mjs").write_text("self.onmessage = () => {}")
    response = await client.get("/ui/assets/pdf.worker.min-AbC123_x.mjs")
    assert response.status == 200 and response.headers["Content-Type"] == "text/javascript"
    directives = _strict(response.headers["Content-Security-Policy"])
    assert directives["media-src"] == "blob:" and "worker-src" not in directives  # workers: script-src 'self'
