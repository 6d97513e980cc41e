"""DICOMweb peers for the conformance tests: Orthanc with its DICOMweb plugin beside our archive,
an HTTP client that answers the same way for both, and the helpers that compare their answers."""

from __future__ import annotations

import email.parser
import email.policy
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from tests.conftest import missing, require_tool
from tests.e2e.dimse_peers import OrthancPeer

PREFIX = "/dicom-web"


def dicomweb_plugin() -> str:
    """The Orthanc DICOMweb plugin shared library installed by Debian's ``orthanc-dicomweb``."""
    require_tool("dpkg")
    listed = subprocess.run(["dpkg", "-L", "orthanc-dicomweb"], capture_output=True, text=True)
    libraries = [line for line in listed.stdout.splitlines() if "/plugins/" in line and ".so" in line]
    if listed.returncode != 0 or not libraries:
        missing("orthanc-dicomweb is not installed (apt-get install orthanc-dicomweb)")
    return libraries[0]


def orthanc_dicomweb(workdir: Path, archive_port: int) -> OrthancPeer:
    """An Orthanc whose DICOMweb root is ``/dicom-web/``, like ours."""
    return OrthancPeer(workdir, archive_port, extra_config={
        "Plugins": [dicomweb_plugin()],
        "DicomWeb": {"Enable": True, "Root": f"{PREFIX}/", "EnableWado": True, "WadoRoot": "/wado",
                     "Ssl": False, "StudiesMetadata": "Full", "SeriesMetadata": "Full"},
        "DefaultEncoding": "Utf8",
    })


@dataclass
class Answer:
    status: int
    content_type: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return requests.models.complexjson.loads(self.body) if self.body else None

    def parts(self) -> list[tuple[str, bytes]]:
        """(Content-Type, payload) of each part of a multipart/related body."""
        return multipart_parts(self.content_type, self.body)


@dataclass
class Web:
    """GETs under one server's base URL (``http://host:port``)."""

    base: str
    session: requests.Session

    def get(self, path: str, accept: str | None = None, headers: dict[str, str] | None = None) -> Answer:
        sent = dict(headers or {})
        if accept is not None:
            sent["Accept"] = accept
        response = self.session.get(self.base + path, headers=sent, timeout=60)
        return Answer(response.status_code, response.headers.get("Content-Type", ""), dict(response.headers),
                      response.content)

    def request(self, method: str, path: str, headers: dict[str, str]) -> requests.Response:
        return self.session.request(method, self.base + path, headers=headers, timeout=60)


def multipart_parts(content_type: str, body: bytes) -> list[tuple[str, bytes]]:
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body)
    if not message.is_multipart():
        raise AssertionError(f"not a multipart body: {content_type}")
    return [(part.get("Content-Type", ""), part.get_payload(decode=True) or b"") for part in message.iter_parts()]


def tag_values(item: dict[str, Any]) -> dict[str, Any]:
    """A DICOM JSON object with the values made comparable across servers (PS3.18 F.2)."""
    out: dict[str, Any] = {}
    for tag, element in item.items():
        if "Value" in element:
            if element.get("vr") == "SQ":
                out[tag] = [tag_values(i) for i in element["Value"]]
            else:
                out[tag] = [_scalar(v) for v in element["Value"]]
        elif "BulkDataURI" in element or "InlineBinary" in element:
            out[tag] = "<bulk>"
        else:
            out[tag] = None
    return out


def _scalar(value: Any) -> Any:
    if isinstance(value, dict):  # person name groups
        return {k: v for k, v in value.items() if v}
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value
