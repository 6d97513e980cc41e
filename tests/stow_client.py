"""A minimal STOW-RS client for tests and benchmarks: multipart/related bodies, POSTed with urllib."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid
from collections.abc import Sequence
from typing import Any

CONTENT_TYPE = 'multipart/related; type="application/dicom"; boundary={boundary}'


def multipart(parts: Sequence[bytes], *, boundary: str | None = None,
              part_type: str | None = "application/dicom") -> tuple[bytes, str]:
    """The body and Content-Type of a STOW-RS request holding ``parts`` (PS3.18 10.5.1.2)."""
    boundary = boundary or uuid.uuid4().hex
    chunks = []
    for data in parts:
        chunks.append(f"--{boundary}\r\n".encode())
        if part_type is not None:
            chunks.append(f"Content-Type: {part_type}\r\n".encode())
        chunks.append(b"\r\n" + data + b"\r\n")
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks), CONTENT_TYPE.format(boundary=boundary)


def post(url: str, body: bytes, content_type: str, *, accept: str | None = None,
         timeout: float = 120.0) -> tuple[int, dict[str, str], Any]:
    """POST and return (status, headers, JSON body or text)."""
    headers = {"Content-Type": content_type}
    if accept is not None:
        headers["Accept"] = accept
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, response_headers, raw = response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        status, response_headers, raw = exc.code, dict(exc.headers), exc.read()
    try:
        return status, response_headers, json.loads(raw) if raw else None
    except ValueError:
        return status, response_headers, raw.decode(errors="replace")


def stow(base_url: str, parts: Sequence[bytes], study: str | None = None) -> tuple[int, dict[str, str], Any]:
    """STOW-RS ``parts`` (Part 10 files) to ``{base_url}/dicom-web/studies[/{study}]``."""
    body, content_type = multipart(parts)
    url = f"{base_url}/dicom-web/studies" + (f"/{study}" if study else "")
    return post(url, body, content_type)


def sequence(response: dict[str, Any], tag: str) -> list[dict[str, Any]]:
    """Items of a sequence in a DICOM JSON response (empty when absent)."""
    return list(response.get(tag, {}).get("Value", []))


def value(item: dict[str, Any], tag: str) -> Any:
    values = item.get(tag, {}).get("Value")
    return values[0] if values else None
