"""The attack suite's archive: a real ``dicom-archive serve`` in a sandbox, and the guard every case runs under.

The process runs with its working directory and TMPDIR in a sandbox beside its data
directory, so that a file written anywhere but the data directory shows. :func:`guarded`
takes a snapshot before a hostile case and checks after it that nothing was written outside
the data directory (nor under a traversal target's name in /tmp or the checkout), that the
object store holds only keys made from valid UIDs, and that nothing stored was lost (object
store, catalog and search counts; with ``stored=0``, nothing new either).
"""

from __future__ import annotations

import contextlib
import json
import re
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset

from tests.e2e.harness import ROOT, ArchiveProcess, http_json, wait_until
from tests.stow_client import stow
from tests.conftest import free_port
from tests.factories import make_ct, new_uid

MARKER = "pwned-" + uuid.uuid4().hex[:8]  # the file name every traversal attempt aims at
TRAVERSALS = (f"../../../../../../tmp/{MARKER}", f"/tmp/{MARKER}", f"..\\..\\{MARKER}", f"1.2.3/../../{MARKER}",
              f"%2e%2e%2f%2e%2e%2f{MARKER}", f"..%2F..%2F{MARKER}", f"1.2.840.{MARKER}")
HOSTILE_UIDS = ("1.2." + "3" * 63, "1.2.abc", "1.02.3", "1..2", ".1.2", "1.2.", "1.2.3 4", "-1.2",
                "1.2.3\\1.2.4", "1.2.3%00")
KEY = re.compile(r"^instances/[0-9a-f]{2}/[0-9a-f]{2}/(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*\.dcm$")
SETTINGS = {
    "ARCHIVE_MAX_ASSOCIATIONS": "4",
    "ARCHIVE_ACSE_TIMEOUT": "2",
    "ARCHIVE_NETWORK_TIMEOUT": "3",
    "ARCHIVE_DIMSE_TIMEOUT": "5",
    "ARCHIVE_STOW_MAX_BYTES": str(2 << 20),
    "ARCHIVE_CORS_ORIGINS": "https://viewer.example",
    "ARCHIVE_FSYNC": "false",
}


@dataclass
class Sandbox:
    root: Path

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def cwd(self) -> Path:
        return self.root / "cwd"

    def outside_files(self) -> set[str]:
        """Every file under the sandbox but the data directory and the process logs."""
        return {str(p.relative_to(self.root)) for p in self.root.rglob("*")
                if p.is_file() and not p.is_relative_to(self.data) and p.suffix != ".log"}


@dataclass
class Archive:
    """A running ``serve`` in its sandbox, with what it held before the suite began."""

    proc: ArchiveProcess
    sandbox: Sandbox
    baseline: dict[str, str] = field(default_factory=dict)  # name -> SOP Instance UID stored by the fixture
    token: str | None = None  # what the guard's own requests send (an archive with sign-in on)

    def _json(self, url: str) -> tuple[int, Any]:
        status, _, body = get(url, {"Authorization": f"Bearer {self.token}"} if self.token else None)
        return status, json_of(body)

    @property
    def http(self) -> str:
        return self.proc.http

    @property
    def dicom_port(self) -> int:
        return self.proc.dicom_port

    def location(self, name: str) -> tuple[str, str, str]:
        """(study, series, SOP Instance UID) of a baseline instance."""
        uid = self.baseline[name]
        status, body = self._json(f"{self.http}/dicom-web/instances?SOPInstanceUID={uid}")
        assert status == 200 and body, body
        return body[0]["0020000D"]["Value"][0], body[0]["0020000E"]["Value"][0], uid

    def objects(self) -> set[str]:
        base = self.sandbox.data / "objects"
        return {str(p.relative_to(base)) for p in base.rglob("*.dcm")} if base.exists() else set()

    def catalog_count(self) -> int:
        status, body = self._json(f"{self.http}/dicom-web/instances?limit=100000&includefield=SOPInstanceUID")
        assert status == 200, body
        return len(body)

    def search_count(self) -> int:
        status, body = self._json(f"{self.http}/api/search?level=instance&limit=1&facets=")
        assert status == 200, body
        return int(body["total"])

    def alive(self) -> None:
        """The archive still answers on both ports."""
        from pynetdicom import AE
        from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

        assert self.proc.proc is not None and self.proc.proc.poll() is None, self.proc.log_tail()
        assert http_json(f"{self.http}/healthz")[0] == 200

        def echo() -> bool:  # slots of associations just ended may take a moment to free
            ae = AE(ae_title="PROBE")
            ae.add_requested_context(Verification)
            assoc = ae.associate("127.0.0.1", self.dicom_port, ae_title="ARCHIVE")
            if not assoc.is_established:
                return False
            status = assoc.send_c_echo().Status
            assoc.release()
            return bool(status == 0)

        wait_until(echo, timeout=15, interval=0.3)


@dataclass(frozen=True)
class Snapshot:
    objects: frozenset[str]
    catalog: int
    search: int
    outside: frozenset[str]


def snapshot(archive: Archive) -> Snapshot:
    return Snapshot(frozenset(archive.objects()), archive.catalog_count(), archive.search_count(),
                    frozenset(archive.sandbox.outside_files()))


def no_marker_anywhere(sandbox: Sandbox) -> None:
    for base in (sandbox.root, Path("/tmp"), ROOT, sandbox.root.parent):
        found = [p for p in (base.rglob(f"*{MARKER}*") if base == sandbox.root else base.glob(f"*{MARKER}*"))]
        assert not found, f"a traversal wrote {found}"


@dataclass
class Expect:
    stored: int = 0  # new objects the case may leave (set it inside the block when the answer says so)


@contextlib.contextmanager
def guarded(archive: Archive, *, stored: int = 0) -> Iterator[Expect]:
    """Run a hostile case; then: nothing outside the data dir, nothing lost, ``stored`` new objects."""
    before = snapshot(archive)
    expect = Expect(stored)
    yield expect
    stored = expect.stored
    after_objects = archive.objects()
    assert before.objects <= after_objects, f"stored objects lost: {before.objects - after_objects}"
    new = after_objects - before.objects
    assert len(new) == stored, f"expected {stored} new objects, found {sorted(new)}"
    assert all(KEY.fullmatch(k) for k in after_objects), [k for k in after_objects if not KEY.fullmatch(k)]
    if stored:  # what was stored must reach catalog and search index; nothing else may
        wait_until(lambda: archive.catalog_count() == before.catalog + stored, timeout=30)
        wait_until(lambda: archive.search_count() == before.search + stored, timeout=30)
    assert archive.catalog_count() == before.catalog + stored
    assert archive.search_count() == before.search + stored
    outside = archive.sandbox.outside_files()
    assert outside <= before.outside, f"files appeared outside the data dir: {outside - before.outside}"
    no_marker_anywhere(archive.sandbox)
    archive.alive()


def start_archive(root: Path, **env: str) -> Archive:
    sandbox = Sandbox(root)
    sandbox.cwd.mkdir(parents=True, exist_ok=True)
    (root / "tmp").mkdir(exist_ok=True)
    proc = ArchiveProcess("serve", {"ARCHIVE_DATA_DIR": str(sandbox.data), "TMPDIR": str(root / "tmp"),
                                    **SETTINGS, **env},
                          root / "serve.log", free_port(), free_port(), cwd=sandbox.cwd)
    proc.start()
    return Archive(proc, sandbox)


def store_baseline(archive: Archive, datasets: dict[str, Dataset], tmp: Path) -> None:
    """STOW-RS ``datasets`` and wait until every one is in the catalog and the search index."""
    from tests.factories import write_part10

    parts = []
    for name, ds in datasets.items():
        meta = getattr(ds, "file_meta", None)
        syntax = str(meta.TransferSyntaxUID) if meta is not None else "1.2.840.10008.1.2.1"
        parts.append(write_part10(ds, tmp / f"{name}.dcm", syntax).read_bytes())
    status, _, body = stow(archive.http, parts)
    assert status == 200, body
    archive.baseline.update({name: str(ds.SOPInstanceUID) for name, ds in datasets.items()})
    wait_until(lambda: archive.search_count() >= len(archive.baseline), timeout=30)


def get(url: str, headers: dict[str, str] | None = None, method: str = "GET",
        timeout: float = 30.0) -> tuple[int, dict[str, str], bytes]:
    """Any HTTP request, the URL sent as given (no normalisation of ``..`` or ``%2e``)."""
    request = urllib.request.Request(url, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def json_of(body: bytes) -> Any:
    return json.loads(body) if body else None


def quote(value: str) -> str:
    return urllib.parse.quote(value, safe="")


@pytest.fixture(scope="session")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Archive]:
    """The suite's archive (asyncio engine, small caps), holding a baseline study."""
    from tests.security.hostile import baseline_datasets

    root = tmp_path_factory.mktemp("attack")
    archive = start_archive(root, ARCHIVE_PEERS=f"KNOWNPEER@127.0.0.1:{free_port()}")
    try:
        store_baseline(archive, baseline_datasets(), root)
        yield archive
    finally:
        assert archive.proc.stop() == 0, archive.proc.log_tail()


def ct(**kw: Any) -> Dataset:
    return make_ct(size=8, **kw)


def peak_rss_mb(archive: Archive) -> float:
    """The serve process's peak resident memory so far (VmHWM, MiB)."""
    assert archive.proc.proc is not None
    for line in Path(f"/proc/{archive.proc.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")
