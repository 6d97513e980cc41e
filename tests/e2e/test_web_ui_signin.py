"""The web UI with sign-in on, in a real browser against the real Keycloak.

``dicom-archive serve`` with ``ARCHIVE_OIDC_ISSUER`` (the test realm, scripts/services.sh) and the
public PKCE client ``archive-ui``; Chromium (Playwright) opens the page, is sent to Keycloak's own
login form, types a test user's password and comes back signed in: the search and the study page
work with the bearer token, thumbnails load through blob: URLs, no token is in any URL the page
asked for nor in its storage, sign-out ends the session here and at Keycloak, and the idle
sign-out fires by itself.

The port: the realm (scripts/services/keycloak-realm.json) registers ``http://127.0.0.1/*`` as a
redirect URI, which Keycloak accepts on any loopback port (RFC 8252 7.3), but the token endpoint's
CORS answer takes the page's origin from the registered URIs (``webOrigins: +``) with their exact
port, and the realm has no admin user a test could add an origin with. So these tests serve on
``http://127.0.0.1:8080`` (registered, the `make run` port), one archive at a time.
"""

from __future__ import annotations

import re
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from archive.query.ui.routes import STATIC
from tests.conftest import missing
from tests.e2e.auth_client import AUDIENCE, call, keycloak_issuer, user_token
from tests.e2e.harness import ArchiveProcess, listening, serve, wait_until
from tests.e2e.test_web_ui import AXE, BY_ID, _parts, _watch, browser  # noqa: F401  (browser: a fixture)
from tests.stow_client import multipart

UI_PORT = 8080  # the realm's registered origin for archive-ui (see above)
STUDY = BY_ID["UI-A"]  # a CT series of 3 and an SR: one thumbnail, one "no image"
JWT = re.compile(r"eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]+")


def _start(tmp: Path, **env: str) -> tuple[ArchiveProcess, str]:
    if not (STATIC / "index.html").is_file():
        missing("the web UI is not built: run `make ui` (Node.js 20 and npm)")
    issuer = keycloak_issuer()
    if listening(UI_PORT):
        missing(f"port {UI_PORT} is in use: the realm's archive-ui client accepts the page's origin on it only")
    proc = serve(tmp, ARCHIVE_OIDC_ISSUER=issuer, ARCHIVE_OIDC_AUDIENCE=AUDIENCE,
                 ARCHIVE_UI_OIDC_CLIENT_ID="archive-ui", **env)
    proc.http_port = UI_PORT
    return proc.start(), issuer


def _store(proc: ArchiveProcess, issuer: str, tmp: Path) -> None:
    """The study, stored by the writer over STOW-RS and searchable for the reader."""
    body, content_type = multipart(_parts(STUDY, tmp))
    status, _, answer = call(f"{proc.http}/dicom-web/studies", user_token(issuer, "writer"), method="POST",
                             body=body, headers={"Content-Type": content_type})
    assert status == 200, answer
    reader = user_token(issuer, "reader")
    wait_until(lambda: call(f"{proc.http}/api/search?limit=1", reader)[2]["total"] == 1, timeout=60)


@pytest.fixture
def archive(tmp_path: Path) -> Iterator[tuple[ArchiveProcess, str]]:
    """Per test (the port is fixed): the archive with the study."""
    tmp = tmp_path
    proc, issuer = _start(tmp)
    try:
        _store(proc, issuer, tmp)
        yield proc, issuer
        assert proc.stop() == 0, proc.log_tail()
    finally:
        proc.stop()


@dataclass
class Recorded:
    """Every URL the page asked for, and the Authorization header of each call to the archive."""

    urls: list[str] = field(default_factory=list)
    bearer: dict[str, str] = field(default_factory=dict)  # path -> Authorization header


def _record(page: Any, archive_url: str) -> Recorded:
    recorded = Recorded()

    def on_request(request: Any) -> None:
        recorded.urls.append(request.url)
        if request.url.startswith(archive_url):
            path = urllib.parse.urlsplit(request.url).path
            if path.startswith(("/api/", "/dicom-web/")):
                recorded.bearer[path] = request.headers.get("authorization", "")

    page.on("request", on_request)
    return recorded


def _sign_in(page: Any, issuer: str, user: str) -> None:
    """On Keycloak's own login form (the page sent the browser there), as ``user``."""
    page.wait_for_url(re.compile(re.escape(f"{issuer}/protocol/openid-connect/auth") + r"\?"))
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(page.url).query)
    assert query["code_challenge_method"] == ["S256"] and query["response_type"] == ["code"], query
    assert query["client_id"] == ["archive-ui"] and len(query["code_challenge"][0]) == 43, query
    page.locator("#username").fill(user)
    page.locator("#password").fill(f"{user}-password")
    page.locator("#kc-login").click()


def _storage(page: Any) -> str:
    return str(page.evaluate("() => JSON.stringify([{...localStorage}, {...sessionStorage}])"))


def test_a_reader_signs_in_searches_sees_thumbnails_and_signs_out(browser: Any,  # noqa: F811
                                                                  archive: tuple[ArchiveProcess, str]) -> None:
    from playwright.sync_api import expect

    proc, issuer = archive
    context = browser.new_context(base_url=proc.http, locale="en-GB")
    try:
        watched = _watch(context)
        page = watched.page
        recorded = _record(page, proc.http)
        page.goto("/ui/?PatientName=alpha")  # a bookmarked search: sign-in first, then this page
        _sign_in(page, issuer, "reader")
        page.wait_for_url(f"{proc.http}/ui/?PatientName=alpha")  # code and state gone from the URL
        expect(page.locator(".session")).to_contain_text("Signed in as reader (reader)")
        expect(page.get_by_role("status")).to_have_text("1–1 of 1 study")
        expect(page.locator("table.studies tbody tr td").first).to_have_text(STUDY.shown)

        page.get_by_role("link", name=STUDY.shown).click()
        thumb = page.locator("img.thumb")
        expect(thumb).to_have_count(1)  # the CT series; the SR gets "no image"
        expect(thumb).to_have_attribute("src", re.compile(r"^blob:"))
        wait_until(lambda: thumb.evaluate("img => img.complete && img.naturalWidth > 0"), timeout=20)

        # every call to the archive carried the bearer token; no token in any URL, nor in storage
        assert "/api/search" in recorded.bearer and any(p.endswith("/thumbnail") for p in recorded.bearer), recorded
        assert all(h.startswith("Bearer eyJ") for h in recorded.bearer.values()), recorded.bearer
        tokens = {h.removeprefix("Bearer ") for h in recorded.bearer.values()}
        leaked = [u for u in recorded.urls if JWT.search(u) or any(t in u for t in tokens)
                  or re.search(r"[?&#](access_token|id_token|refresh_token)=", u)]
        assert leaked == [], leaked
        assert not JWT.search(_storage(page)), _storage(page)
        assert "code=" not in page.url and "state=" not in page.url
        csp = page.evaluate("() => fetch('/ui/').then(r => r.headers.get('Content-Security-Policy'))")
        origin = "{0.scheme}://{0.netloc}".format(urllib.parse.urlsplit(issuer))
        assert f"connect-src 'self' {origin}" in csp and "img-src 'self' data: blob:" in csp, csp
        assert "unsafe" not in csp, csp
        # the reader's role: no write control on the page (the server refuses them anyway)
        expect(page.get_by_role("button", name=re.compile("upload", re.I))).to_have_count(0)
        assert watched.dialogs == [] and watched.errors == [], watched.errors  # CSP violations included

        page.get_by_role("button", name="Sign out").click()
        page.wait_for_url(f"{proc.http}/ui/signed-out")
        expect(page.get_by_role("heading", name="Signed out")).to_be_visible()
        expect(page.get_by_role("status")).to_have_text("You are signed out.")
        assert not JWT.search(_storage(page))
        # the page holds no token now, and the token it had no longer refreshes: Keycloak's session ended
        assert page.evaluate("() => fetch('/api/search').then(r => r.status)") == 401
        page.goto("/ui/")
        page.wait_for_url(re.compile(re.escape(f"{issuer}/protocol/openid-connect/auth")))
        expect(page.locator("#username")).to_be_visible()  # the login form again: no silent return
        leaked = [u for u in recorded.urls if JWT.search(u) or any(t in u for t in tokens)]
        assert leaked == [], leaked  # the sign-out's ID token hint went in a POST body
    finally:
        context.close()


def test_the_token_is_refreshed_before_it_expires(browser: Any,  # noqa: F811
                                                 archive: tuple[ArchiveProcess, str]) -> None:
    """Keycloak's access tokens live 300 s (the realm): the page's clock is moved 280 s ahead and the
    page refreshes with its refresh token (a real grant at Keycloak); the next call carries the new token."""
    from playwright.sync_api import expect

    proc, issuer = archive
    context = browser.new_context(base_url=proc.http, locale="en-GB")
    try:
        page = context.new_page()
        page.clock.install()  # the page's timers and Date, running at real speed until moved
        recorded = _record(page, proc.http)
        grants: list[str] = []
        page.on("request", lambda r: grants.append(urllib.parse.parse_qs(r.post_data or "")["grant_type"][0])
                if r.url == f"{issuer}/protocol/openid-connect/token" else None)
        page.goto("/ui/")
        _sign_in(page, issuer, "reader")
        expect(page.get_by_role("status")).to_have_text("1–1 of 1 study")
        first = recorded.bearer["/api/search"]
        assert grants == ["authorization_code"]
        with page.expect_response(f"{issuer}/protocol/openid-connect/token") as refreshed:
            page.clock.fast_forward("04:40")
        assert refreshed.value.status == 200 and grants == ["authorization_code", "refresh_token"], grants
        page.get_by_label("Patient name", exact=True).fill("alpha")
        with page.expect_request(lambda r: "/api/search?" in r.url and "PatientName=alpha" in r.url) as searched:
            page.get_by_label("Patient name", exact=True).press("Enter")
        second = searched.value.headers["authorization"]
        assert second.startswith("Bearer eyJ") and second != first
        expect(page.get_by_role("status")).to_have_text("1–1 of 1 study")
        expect(page.locator(".session")).to_contain_text("Signed in as reader")
    finally:
        context.close()


def test_a_user_without_a_role_is_told_so(browser: Any,  # noqa: F811
                                          archive: tuple[ArchiveProcess, str]) -> None:
    """Keycloak's ``nobody`` signs in fine; the page shows no role and the server's 403, no patient."""
    from playwright.sync_api import expect

    proc, issuer = archive
    context = browser.new_context(base_url=proc.http)
    try:
        page = context.new_page()
        page.goto("/ui/")
        _sign_in(page, issuer, "nobody")
        expect(page.locator(".session")).to_contain_text("Signed in as nobody (no role)")
        expect(page.get_by_role("alert")).to_contain_text("this needs the reader role")
        assert page.locator("table.studies").count() == 0
    finally:
        context.close()


def test_axe_finds_no_serious_violation_signed_in(browser: Any,  # noqa: F811
                                                  archive: tuple[ArchiveProcess, str]) -> None:
    """A writer this time; axe is injected into a context that bypasses the CSP for the injection."""
    if not AXE.is_file():
        missing(f"{AXE} is absent: `make ui` installs the UI's npm packages")
    from playwright.sync_api import expect

    proc, issuer = archive
    context = browser.new_context(base_url=proc.http, bypass_csp=True)
    try:
        page = context.new_page()
        page.goto(f"/ui/study/{STUDY.uid}")
        _sign_in(page, issuer, "writer")
        page.wait_for_url(f"{proc.http}/ui/study/{STUDY.uid}")
        expect(page.locator(".session")).to_contain_text("Signed in as writer (writer)")
        expect(page.locator("img.thumb")).to_have_attribute("src", re.compile(r"^blob:"))
        for url in (f"/ui/study/{STUDY.uid}", "/ui/"):
            if url == "/ui/":
                page.get_by_role("link", name="DICOM archive").click()
                expect(page.get_by_role("status")).to_have_text("1–1 of 1 study")
            page.add_script_tag(path=str(AXE))
            result = page.evaluate("axe.run(document, {resultTypes: ['violations']})")
            bad = [(v["id"], v["impact"], [n["target"] for n in v["nodes"]][:3])
                   for v in result["violations"] if v["impact"] in ("serious", "critical")]
            assert bad == [], (url, bad)
    finally:
        context.close()


def test_the_page_signs_out_by_itself_when_idle(browser: Any, tmp_path: Path) -> None:  # noqa: F811
    """ARCHIVE_UI_IDLE_MINUTES=0.05: three seconds without input, and the page signs out (here and
    at Keycloak) and says why."""
    from playwright.sync_api import expect

    proc, issuer = _start(tmp_path, ARCHIVE_UI_IDLE_MINUTES="0.05")
    try:
        context = browser.new_context(base_url=proc.http)
        try:
            page = context.new_page()
            page.goto("/ui/")
            _sign_in(page, issuer, "reader")
            page.wait_for_url(f"{proc.http}/ui/")
            expect(page.locator(".session")).to_contain_text("Signed in as reader")
            signed_in = time.monotonic()
            page.wait_for_url(f"{proc.http}/ui/signed-out", timeout=30_000)
            assert time.monotonic() - signed_in >= 2.5  # not at once: after the idle time
            expect(page.get_by_role("status")).to_have_text("You were signed out after a time without activity.")
            page.get_by_role("button", name="Sign in").click()
            expect(page.locator("#username")).to_be_visible()  # Keycloak's session ended too
        finally:
            context.close()
    finally:
        proc.stop()
