"""archive.web: the error mapping every role's HTTP application runs."""

from __future__ import annotations

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
