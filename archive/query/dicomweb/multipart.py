"""multipart/related response framing (RFC 2387, PS3.18 8.6.1.2), written part by part."""

from __future__ import annotations

import uuid

from aiohttp import web


class MultipartStream:
    """Write a multipart/related body into a prepared streaming response, one part at a time."""

    def __init__(self, response: web.StreamResponse, boundary: str) -> None:
        self.response = response
        self.boundary = boundary.encode("ascii")
        self.parts = 0

    @staticmethod
    def new_boundary() -> str:
        return uuid.uuid4().hex

    @staticmethod
    def content_type(part_type: str, boundary: str) -> str:
        return f'multipart/related; type="{part_type}"; boundary={boundary}'

    async def part(self, content_type: str, headers: dict[str, str] | None = None) -> None:
        """Start a part; its body follows with :meth:`write`."""
        lines = [b"\r\n" if self.parts else b"", b"--" + self.boundary + b"\r\n"]
        for name, value in {"Content-Type": content_type, **(headers or {})}.items():
            lines.append(f"{name}: {value}\r\n".encode("latin-1"))
        lines.append(b"\r\n")
        self.parts += 1
        await self.response.write(b"".join(lines))

    async def write(self, data: bytes) -> None:
        await self.response.write(data)

    async def close(self) -> None:
        await self.response.write(b"\r\n--" + self.boundary + b"--\r\n")
        await self.response.write_eof()
