"""archive.compat: dependency workarounds stay in one place, and their tests say when to drop them."""

from __future__ import annotations

import ast
import inspect
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider
from pynetdicom.service_class import QueryRetrieveServiceClass
from pynetdicom.transport import AssociationSocket

from tests.conftest import ROOT

ARCHIVE = ROOT / "archive"
PROBE = Path(__file__).with_name("compat_probe.py")
# what only archive/compat may touch: pynetdicom's private DUL and ACSE parts, its options
# module, the AE's server list, and the interpreter-wide temporary directory
PRIVATE_ATTRIBUTES = {"dul", "acse", "_servers", "to_provider_queue", "peek_next_pdu", "is_rejected", "tempdir",
                      "_put_object"}


def _probe(tmp_path: Path, *flags: str) -> dict[str, Any]:
    result = subprocess.run([sys.executable, str(PROBE), *flags, str(tmp_path)], capture_output=True, text=True,
                            timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))


def test_upstream_pynetdicom_still_needs_the_retrieve_patch(tmp_path: Path) -> None:
    """Plain pynetdicom, no patch: when this fails, upstream changed; drop that half of the patch."""
    plain = _probe(tmp_path)
    assert plain["move_originator"] == "QRSCP", (
        "pynetdicom now names the C-MOVE requestor as Move Originator (PS3.7 9.1.1.1): remove "
        "move_originator() and the originator_aet rewrite from archive/compat/pynetdicom.py")
    assert plain["get_received"] == 0, (
        "pynetdicom now sends a file path yielded by a C-GET/C-MOVE handler: yield paths from "
        "archive.query.dimse.retrieve and remove SendsItself from archive/compat/pynetdicom.py")


def _reactor_probe(*flags: str) -> dict[str, Any]:
    probe = PROBE.with_name("reactor_probe.py")
    result = subprocess.run([sys.executable, str(probe), *flags], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))


def test_upstream_pynetdicom_reactor_still_takes_responses_from_a_paused_send() -> None:
    """Plain pynetdicom: a send_* right after another one's sees the reactor paused while it is
    not, and the reactor takes the response. When this fails, drop fix_reactor_pause."""
    plain = _reactor_probe()
    assert plain["stolen"] > 0, "pynetdicom now pauses its reactor safely: remove fix_reactor_pause from archive/compat"


def test_the_reactor_fix_keeps_every_response_for_the_send_that_waits() -> None:
    fixed = _reactor_probe("--fix")
    assert fixed == {"rounds": fixed["rounds"], "stolen": 0}


def test_upstream_minio_still_cannot_send_request_headers() -> None:
    """When this fails, put_object takes headers: send If-None-Match through it and drop
    archive/compat/minio.py."""
    from minio import Minio
    from minio.helpers import normalize_headers

    assert "headers" not in inspect.signature(Minio.put_object).parameters
    assert "X-Amz-Meta-If-None-Match" in normalize_headers({"If-None-Match": "*"})  # turned into metadata


def test_upstream_minio_still_hashes_every_body_it_signs() -> None:
    """When this fails, minio takes a given digest (or stopped hashing): drop compat.minio.Client."""
    import hashlib

    from minio import Minio
    from minio.credentials import Credentials

    from archive.compat.minio import Client

    creds = Credentials("access", "secret")
    built, _ = Minio("127.0.0.1:9", "access", "secret", secure=False)._build_headers(
        "127.0.0.1:9", {"x-amz-content-sha256": "f" * 64}, b"body", creds)
    assert built["x-amz-content-sha256"] == hashlib.sha256(b"body").hexdigest()  # ours ignored, hashed again
    ours, _ = Client("127.0.0.1:9", "access", "secret", secure=False)._build_headers(
        "127.0.0.1:9", {"x-archive-body-sha256": "f" * 64}, b"body", creds)
    assert ours["x-amz-content-sha256"] == "f" * 64 and ours["Content-Length"] == "4"
    assert "x-archive-body-sha256" not in ours
    tls, _ = Client("127.0.0.1:9", "access", "secret", secure=True)._build_headers(
        "127.0.0.1:9", {"x-archive-body-sha256": "f" * 64}, b"body", creds)  # HTTPS: as minio builds it
    assert tls["x-amz-content-sha256"] == "UNSIGNED-PAYLOAD" and "Content-MD5" in tls
    assert "x-archive-body-sha256" not in tls


def test_the_patch_sends_files_with_the_requestor_as_move_originator(tmp_path: Path) -> None:
    patched = _probe(tmp_path, "--install")
    assert patched["move_originator"] == "REQUESTOR"
    assert patched["get_received"] == 1 and patched["get_statuses"][-1] == 0x0000
    assert patched["move_statuses"][-1] == 0x0000


def test_the_private_parts_compat_reads_are_still_there() -> None:
    """An upgrade that renames them fails here, not in production."""
    dul = DULServiceProvider.__init__.__code__.co_names
    assert {"socket", "to_provider_queue"} <= set(dul) | set(vars(DULServiceProvider))
    assert callable(DULServiceProvider.peek_next_pdu)
    from archive.compat import pynetdicom as compat

    init = compat._original_init.__code__.co_names  # tests/conftest.py installed fix_reactor_pause
    assert {"acse", "kill", "is_rejected", "send_c_store"} <= set(dir(Association)) | set(init)
    # fix_reactor_pause: the checkpoint it replaces and the flags it reads
    assert {"_reactor_checkpoint", "_is_paused", "_kill"} <= set(init)
    # guard_requests wraps the Query/Retrieve service class's SCP and answers on its DIMSE provider
    assert {"SCP", "ae", "assoc", "dimse"} <= set(dir(QueryRetrieveServiceClass)) | set(
        QueryRetrieveServiceClass.__init__.__code__.co_names)
    assert "socket" in AssociationSocket.__init__.__code__.co_names  # peer_certificate: dul.socket.socket


def _offences(path: Path, name: str) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for node in ast.walk(tree):
        where = f"{name}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in ("pynetdicom", "pydicom"):
            private = [a.name for a in node.names if a.name.startswith("_")]
            if private or any(part.startswith("_") for part in (node.module or "").split(".")):
                found.append(f"{where}: imports {node.module} {private}")
        elif isinstance(node, ast.Import):
            found += [f"{where}: imports {a.name}" for a in node.names
                      if a.name.split(".")[0] in ("pynetdicom", "pydicom") and "._" in a.name]
        elif isinstance(node, ast.Attribute) and node.attr in PRIVATE_ATTRIBUTES:
            found.append(f"{where}: .{node.attr}")
        elif isinstance(node, (ast.Assign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:  # Association.send_c_store = ..., SomeClass.attr = ...
                if isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name) and target.value.id[:1].isupper():
                    found.append(f"{where}: assigns {target.value.id}.{target.attr}")
    return found


def test_only_archive_compat_touches_dependency_internals() -> None:
    offences = [o for path in sorted(ARCHIVE.rglob("*.py")) if "compat" not in path.relative_to(ARCHIVE).parts
                for o in _offences(path, str(path.relative_to(ROOT)))]
    assert offences == [], "move these into archive/compat (with why and a test):\n" + "\n".join(offences)


@pytest.mark.parametrize("snippet", [
    "from pynetdicom import _config\n_config.STORE_SEND_CHUNKED_DATASET = True\n",
    "import tempfile\ntempfile.tempdir = '/x'\n",
    "from pynetdicom.association import Association\nAssociation.send_c_store = None\n",
    "def f(assoc):\n    return assoc.dul.socket\n",
    "from pydicom.filereader import _read_file_meta_info\n",
])
def test_the_guard_sees_each_kind_of_offence(tmp_path: Path, snippet: str) -> None:
    module = tmp_path / "probe.py"
    module.write_text(snippet)
    assert _offences(module, "probe.py")


def test_upstream_pynetdicom_still_reads_any_pdu_length() -> None:
    """Plain ``AssociationSocket.recv`` reads whatever length a PDU header announces, without a
    bound or a timeout; when it refuses 4 GiB itself, drop _bounded_recv from archive/compat."""
    import socket
    import threading
    from types import SimpleNamespace

    from archive.compat import pynetdicom as compat

    ours, peer = socket.socketpair()
    try:
        peer.sendall(b"\x00" * 10)
        threading.Timer(0.3, peer.close).start()
        data = compat._original_recv(SimpleNamespace(socket=ours), 0xFFFFFFFF)  # type: ignore[arg-type]
        assert len(data) == 10, "plain pynetdicom now bounds PDU reads: remove _bounded_recv"
    finally:
        ours.close()


def test_the_recv_patch_refuses_long_pdus_and_bounds_silence() -> None:
    import socket
    from types import SimpleNamespace

    from archive.compat import pynetdicom as compat

    saved = dict(compat._recv_limits)
    compat._recv_limits.update(max_bytes=compat.MIN_PDU_LIMIT, timeout=0.2)
    ours, peer = socket.socketpair()
    try:
        fake = SimpleNamespace(socket=ours)
        with pytest.raises(OSError, match="exceeds our Maximum Length"):
            compat._bounded_recv(fake, 0xFFFFFFFF)  # type: ignore[arg-type]
        peer.sendall(b"\x01")
        with pytest.raises(TimeoutError):  # one byte of six, then silence
            compat._bounded_recv(fake, 6)  # type: ignore[arg-type]
    finally:
        compat._recv_limits.update(saved)
        ours.close()
        peer.close()
