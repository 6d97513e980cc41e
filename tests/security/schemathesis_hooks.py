"""schemathesis hooks for the suite's run (loaded through ``SCHEMATHESIS_HOOKS``).

STOW-RS takes ``multipart/related; type="application/dicom"`` (PS3.18 10.5.1.2, RFC 2387);
schemathesis encodes multipart/form-data and multipart/mixed only, and gives up on every other
multipart type ("Serialization not possible"). The document is right; so here the generated
body (bytes for the document's binary schema, any other value in negative cases) goes out as
the one ``application/dicom`` part of a multipart/related body, with a boundary it does not hold.
"""

from __future__ import annotations

import json
from typing import Any

from schemathesis.transport import SerializationContext, register_serializer


def _bytes(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8", "surrogatepass")
    return json.dumps(value, default=str).encode()


def multipart_related(ctx: SerializationContext, value: Any) -> dict[str, Any]:
    payload = _bytes(value)
    boundary, n = "dicom-part", 0
    while boundary.encode() in payload:
        n += 1
        boundary = f"dicom-part-{n}"
    body = (f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + payload
            + f"\r\n--{boundary}--\r\n".encode())
    return {"data": body,
            "headers": {"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'}}


register_serializer(multipart_related, "multipart/related")
