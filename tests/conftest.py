"""Shared fixtures.

Tests of a real service (PostgreSQL, RabbitMQ, S3, OpenSearch, DCMTK, Orthanc)
read its address from the environment or from ``.services.env`` (written by
``make services``). When the service is absent they skip with the reason on a
laptop, and fail when ``CI=true``.
"""

from __future__ import annotations

import os
import shutil
import socket
import uuid
from pathlib import Path

import pytest

from archive.compat.pynetdicom import fix_reactor_pause

ROOT = Path(__file__).resolve().parent.parent
# The tests' own pynetdicom clients: plain pynetdicom loses now and then the response of a quick
# peer (the asyncio engine answers within its reactor's race window): archive/compat says why.
fix_reactor_pause()
SERVICES_ENV = ROOT / ".services.env"


def _services_env() -> dict[str, str]:
    values: dict[str, str] = {}
    if SERVICES_ENV.exists():
        for line in SERVICES_ENV.read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#") and "=" in line:
                key, _, value = line.partition("=")
                values[key.strip()] = value.strip().strip('"').strip("'")
    return values


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def missing(reason: str) -> None:
    """Skip (laptop) or fail (CI) because a real component is absent."""
    if in_ci():
        pytest.fail(f"required in CI: {reason}")
    pytest.skip(reason)


def service_setting(name: str) -> str:
    """An ``ARCHIVE_*`` setting of the real services, or skip/fail."""
    value = os.environ.get(name) or _services_env().get(name)
    if not value:
        missing(f"{name} is not set; run `make services` to start the real services")
    assert value is not None
    return value


def require_tool(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        missing(f"{tool} is not installed (apt-get install dcmtk / orthanc)")
    assert path is not None
    return path


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A loopback port nothing listens on, never the same twice in a run.

    The kernel may give a port it just gave back (a server of one test takes its ports
    only when it starts, after all of them were chosen), so remember what was handed out.
    """
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


@pytest.fixture
def unique() -> str:
    """A short name unique to the test (queue names, buckets, indexes)."""
    return "t" + uuid.uuid4().hex[:12]
