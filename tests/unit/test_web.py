"""archive.web: the error mapping every role's HTTP application runs."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from archive.web import base_app


async def test_aiohttp_own_errors_are_json_too() -> None:
    """No route (404), a method a route lacks (405, Allow kept), a body over client_max_size (413):
    aiohttp raises them as text/plain; they are answered as JSON like every other error."""
    async def echo(request: web.Request) -> web.Response:
        return web.json_response({"size": len(await request.read())})

    app = base_app([], with_metrics=False)
    app.router.add_post("/echo", echo)
    async with TestClient(TestServer(app)) as client:
        for method, path, body, status in (("GET", "/no/such/route", None, 404), ("DELETE", "/healthz", None, 405),
                                           ("POST", "/echo", b"x" * (2 << 20), 413)):
            response = await client.request(method, path, data=body)
            assert response.status == status and response.content_type == "application/json", (path, status)
            assert (await response.json())["error"]
            assert response.headers["X-Content-Type-Options"] == "nosniff"
        response = await client.delete("/healthz")
        assert "GET" in response.headers["Allow"]
        assert (await client.post("/echo", data=b"x")).status == 200


async def test_an_error_after_the_response_began_cuts_it_short() -> None:
    """A multipart answer that fails half-way cannot get a status any more: the connection is cut (the
    client sees the body incomplete), never a second response read as the first one's body."""
    import aiohttp

    from archive.core.query import InvalidQuery

    async def streams(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "multipart/related; boundary=b"})
        await response.prepare(request)
        await response.write(b"--b\r\n\r\nfirst part\r\n")
        raise InvalidQuery("the second part's region lies outside its image")

    app = base_app([], with_metrics=False)
    app.router.add_get("/stream", streams)
    async with TestClient(TestServer(app)) as client:
        response = await client.get("/stream")
        assert response.status == 200
        try:
            body = await response.read()
        except aiohttp.ClientPayloadError:
            body = b""
        assert b"HTTP/1.1" not in body and b"error" not in body
        assert (await client.get("/healthz")).status == 200  # a new connection: all well


async def test_metrics_carry_free_space_and_build_info(tmp_path: Path) -> None:
    """The dashboard's free-space and version panels: /metrics reads the data directory's and the
    spool's file systems at each scrape (a missing spool is a gap, not a stale number)."""
    import shutil

    from archive import __version__
    from archive.web import metrics_app

    async with TestClient(TestServer(metrics_app(data_dir=tmp_path))) as client:
        first = await (await client.get("/metrics")).text()
        (tmp_path / "spool").mkdir()
        second = await (await client.get("/metrics")).text()
    free = shutil.disk_usage(tmp_path).free
    assert f'archive_build_info{{version="{__version__}"}} 1.0' in first
    assert 'archive_free_bytes{volume="spool"} NaN' in first
    for volume in ("data", "spool"):
        value = float(next(line.split()[-1] for line in second.splitlines()
                           if line.startswith(f'archive_free_bytes{{volume="{volume}"}}')))
        assert abs(value - free) < 1 << 30  # the same file system, give or take what others wrote meanwhile
        assert f'archive_volume_size_bytes{{volume="{volume}"}}' in second
