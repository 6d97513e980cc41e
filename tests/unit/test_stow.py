"""STOW-RS (archive/query/dicomweb/stow.py) on the embedded object store with an in-memory queue.

Request-level faults (multipart framing, media types, size cap) and per-instance
failures (Table I.2-2 reasons), the response body shape (PS3.18 Annex I) and the
HTTP status semantics (Table 10.5.3-1).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from pydicom.dataset import Dataset

from archive.adapters.filesystem_store import FilesystemStore
from archive.core.errors import BackendUnavailable
from archive.core.models import IndexMessage
from archive.core.uids import object_key
from archive.ingest.describe import dataset_offset
from archive.ingest.service import IngestService
from archive.query.context import INGEST, SETTINGS
from archive.query.dicomweb import routes, stow
from archive.settings import DuplicatePolicy, Settings
from archive.web import error_middleware
from tests.factories import make_ct, new_uid, write_part10
from tests.stow_client import multipart, sequence, value

FAILED, REFERENCED, RETRIEVE_URL = "00081198", "00081199", "00081190"
SOP_CLASS, SOP_UID, FAILURE, WARNING = "00081150", "00081155", "00081197", "00081196"


class MemoryQueue:
    """The queue port's publish side; ``down`` makes it fail as a broker that is gone."""

    def __init__(self) -> None:
        self.messages: list[IndexMessage] = []
        self.down = False
        self.attempts = 0

    async def publish(self, body: bytes) -> None:
        self.attempts += 1
        if self.down:
            raise BackendUnavailable("queue", "connection refused")
        self.messages.append(IndexMessage.from_bytes(body))


class Archive:
    def __init__(self, client: TestClient, store: FilesystemStore, queue: MemoryQueue, data_dir: Path) -> None:
        self.client, self.store, self.queue, self.data_dir = client, store, queue, data_dir

    async def post(self, parts: list[bytes], study: str | None = None, **kw: Any) -> tuple[int, Any]:
        body, content_type = multipart(parts, **kw)
        return await self.raw(body, content_type, study)

    async def raw(self, body: Any, content_type: str, study: str | None = None,
                  headers: dict[str, str] | None = None) -> tuple[int, Any]:
        url = "/dicom-web/studies" + (f"/{study}" if study else "")
        response = await self.client.post(url, data=body, headers={"Content-Type": content_type, **(headers or {})})
        text = await response.text()
        if response.status in (200, 202, 409, 503):
            assert response.headers["Content-Type"] == "application/dicom+json"  # exactly: clients compare it
        return response.status, json.loads(text) if text else None

    async def stored(self, sop_uid: str) -> bool:
        return await self.store.head(object_key(sop_uid)) is not None

    def spool_files(self) -> list[Path]:
        return [p for p in (self.data_dir / "spool").rglob("*") if p.is_file()]


async def _archive(tmp_path: Path, policy: DuplicatePolicy = DuplicatePolicy.KEEP_FIRST,
                   max_bytes: int = 1 << 30) -> tuple[TestClient, Archive]:
    store = FilesystemStore(tmp_path / "objects", fsync=False)
    queue = MemoryQueue()
    app = web.Application(middlewares=[error_middleware])
    app[SETTINGS] = Settings(data_dir=tmp_path / "data", stow_max_bytes=max_bytes)
    app[INGEST] = IngestService(store, queue, policy)  # type: ignore[arg-type]
    routes.add_routes(app)  # the DICOMweb routes this app can serve: STOW-RS (no STORE, so no WADO pixels)
    client = TestClient(TestServer(app))
    await client.start_server()
    return client, Archive(client, store, queue, tmp_path / "data")


@pytest.fixture
async def archive(tmp_path: Path) -> AsyncIterator[Archive]:
    client, arch = await _archive(tmp_path)
    yield arch
    await client.close()


def part10(ds: Dataset, tmp_path: Path, transfer_syntax: str | None = None) -> bytes:
    path = tmp_path / f"{new_uid()}.dcm"
    if transfer_syntax:
        return write_part10(ds, path, transfer_syntax).read_bytes()
    return write_part10(ds, path).read_bytes()


def _ct(**kw: Any) -> Dataset:
    return make_ct(**{"size": 8, **kw})


async def test_stores_every_part_and_answers_the_store_instances_response(archive: Archive, tmp_path: Path) -> None:
    study, series = new_uid(), new_uid()
    datasets = [_ct(study_uid=study, series_uid=series, instance_number=i, seed=i) for i in range(3)]
    status, body = await archive.post([part10(ds, tmp_path) for ds in datasets])
    assert status == 200
    assert FAILED not in body
    assert value(body, RETRIEVE_URL).endswith(f"/dicom-web/studies/{study}")
    items = sequence(body, REFERENCED)
    assert [value(i, SOP_UID) for i in items] == [str(ds.SOPInstanceUID) for ds in datasets]
    for item, ds in zip(items, datasets):
        assert value(item, SOP_CLASS) == str(ds.SOPClassUID)
        assert value(item, RETRIEVE_URL).endswith(
            f"/dicom-web/studies/{study}/series/{series}/instances/{ds.SOPInstanceUID}")
        assert WARNING not in item
        assert body[RETRIEVE_URL]["vr"] == "UR" and item[SOP_UID]["vr"] == "UI"
    for ds in datasets:
        assert await archive.stored(str(ds.SOPInstanceUID))
    # queued for indexing exactly as a C-STORE would be
    assert sorted(m.sop_instance_uid for m in archive.queue.messages) == sorted(str(d.SOPInstanceUID) for d in datasets)
    assert {m.source_aet for m in archive.queue.messages} == {"STOW-RS"}
    assert archive.spool_files() == []


async def test_stored_object_is_the_dataset_with_our_file_meta(archive: Archive, tmp_path: Path) -> None:
    ds = _ct()
    status, _ = await archive.post([part10(ds, tmp_path)])
    assert status == 200
    stored = b"".join([c async for c in archive.store.get(object_key(str(ds.SOPInstanceUID)))])
    sent = part10(ds, tmp_path)
    # the dataset bytes after the File Meta are the ones sent
    assert stored.endswith(sent[-(len(ds.PixelData) + 200):])
    assert stored[128:132] == b"DICM"


async def test_study_in_url_rejects_instances_of_other_studies(archive: Archive, tmp_path: Path) -> None:
    study = new_uid()
    good, other = _ct(study_uid=study), _ct()
    status, body = await archive.post([part10(good, tmp_path), part10(other, tmp_path)], study=study)
    assert status == 202
    failed = sequence(body, FAILED)
    assert [(value(f, SOP_UID), value(f, FAILURE)) for f in failed] == [(str(other.SOPInstanceUID), 0xA900)]
    assert value(failed[0], SOP_CLASS) == str(other.SOPClassUID)
    assert [value(i, SOP_UID) for i in sequence(body, REFERENCED)] == [str(good.SOPInstanceUID)]
    assert value(body, RETRIEVE_URL).endswith(f"/studies/{study}")
    assert not await archive.stored(str(other.SOPInstanceUID))

    status, body = await archive.post([part10(_ct(), tmp_path)], study=study)
    assert status == 409  # none stored: conflict
    assert (await archive.post([part10(_ct(), tmp_path)], study="1.2.x"))[0] == 400  # not a UID
    assert REFERENCED not in body and len(sequence(body, FAILED)) == 1


async def test_malformed_part_fails_with_cannot_understand_while_the_others_are_stored(
        archive: Archive, tmp_path: Path) -> None:
    good = _ct()
    path = write_part10(_ct(), tmp_path / "broken.dcm")
    meta_only = path.read_bytes()[: dataset_offset(path)]  # preamble + File Meta, no dataset
    garbage_dataset = meta_only + bytes(range(256)) * 4
    status, body = await archive.post([b"not dicom at all", part10(good, tmp_path), b"", meta_only,
                                       garbage_dataset])
    assert status == 202
    failures = sequence(body, FAILED)
    # Cxxx, cannot understand (PS3.18 Table I.2-2); C001: no valid UIDs in what pydicom made of it
    assert [value(f, FAILURE) for f in failures] == [0xC000, 0xC000, 0xC000, 0xC001]
    # unknown UIDs are present and empty (a File Meta that could be read names them)
    assert failures[0][SOP_UID] == {"vr": "UI"} and failures[1][SOP_UID] == {"vr": "UI"}
    assert value(failures[2], SOP_UID) is not None
    assert [value(i, SOP_UID) for i in sequence(body, REFERENCED)] == [str(good.SOPInstanceUID)]
    assert archive.spool_files() == []


async def test_unsupported_sop_class_and_transfer_syntax(archive: Archive, tmp_path: Path) -> None:
    not_storage = _ct()
    not_storage.SOPClassUID = "1.2.840.10008.1.1"  # Verification: not a storage SOP class
    unknown_ts = part10(_ct(), tmp_path)
    unknown_ts = unknown_ts.replace(b"1.2.840.10008.1.2.1\x00", b"1.2.840.99999.1.2.9\x00", 1)
    status, body = await archive.post([part10(not_storage, tmp_path), unknown_ts])
    assert status == 409
    assert [value(f, FAILURE) for f in sequence(body, FAILED)] == [0x0122, 0xC122]
    assert value(sequence(body, FAILED)[0], SOP_UID) == str(not_storage.SOPInstanceUID)
    assert body[RETRIEVE_URL] == {"vr": "UR"}  # Type 2: empty, nothing stored


async def test_file_meta_must_name_the_instance_it_holds(archive: Archive, tmp_path: Path) -> None:
    ds = _ct()
    data = part10(ds, tmp_path)
    other_uid = new_uid()[: len(str(ds.SOPInstanceUID))].ljust(len(str(ds.SOPInstanceUID)), "1")
    forged = data.replace(str(ds.SOPInstanceUID).encode(), other_uid.encode(), 1)  # only the File Meta's
    invalid = _ct()
    invalid.SeriesInstanceUID = "1.2.abc"
    status, body = await archive.post([forged, part10(invalid, tmp_path)])
    assert status == 409
    assert [value(f, FAILURE) for f in sequence(body, FAILED)] == [0xA900, 0xC001]


async def test_duplicates_identical_success_different_warning(archive: Archive, tmp_path: Path) -> None:
    ds = _ct()
    data = part10(ds, tmp_path)
    assert (await archive.post([data]))[0] == 200
    status, body = await archive.post([data])
    assert status == 200  # identical re-send: success, queued again
    assert len(archive.queue.messages) == 2
    changed = ds.copy()
    changed.PatientSex = "M"
    status, body = await archive.post([part10(changed, tmp_path)])
    assert status == 202  # PS3.18 Table 10.5.3-1: stored ... but warnings exist
    (item,) = sequence(body, REFERENCED)
    assert value(item, WARNING) == 0xB000 and value(item, SOP_UID) == str(ds.SOPInstanceUID)
    assert len(archive.queue.messages) == 2


async def test_duplicate_rejected_by_policy(tmp_path: Path) -> None:
    client, arch = await _archive(tmp_path, DuplicatePolicy.REJECT)
    try:
        ds = _ct()
        assert (await arch.post([part10(ds, tmp_path)]))[0] == 200
        changed = ds.copy()
        changed.PatientSex = "M"
        status, body = await arch.post([part10(changed, tmp_path)])
        assert status == 409
        assert value(sequence(body, FAILED)[0], FAILURE) == 0x0111
    finally:
        await client.close()


async def test_backend_down_answers_503_and_stops_trying(archive: Archive, tmp_path: Path) -> None:
    archive.queue.down = True
    datasets = [_ct() for _ in range(3)]
    status, body = await archive.post([part10(ds, tmp_path) for ds in datasets])
    assert status == 503
    assert [value(f, FAILURE) for f in sequence(body, FAILED)] == [0xA700] * 3
    assert [value(f, SOP_UID) for f in sequence(body, FAILED)] == [str(ds.SOPInstanceUID) for ds in datasets]
    assert archive.queue.attempts == 1  # the others were not tried against a broker that is gone


async def test_size_cap_413_and_spool_cleaned(tmp_path: Path) -> None:
    client, arch = await _archive(tmp_path, max_bytes=4000)
    try:
        parts = [part10(_ct(size=16), tmp_path) for _ in range(5)]  # ~1.1 KB each
        status, body = await arch.post(parts)
        assert status == 413 and "ARCHIVE_STOW_MAX_BYTES" in body["error"]
        body_bytes, content_type = multipart(parts)

        async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: the cap counts as it reads
            for i in range(0, len(body_bytes), 500):
                yield body_bytes[i:i + 500]

        status, _ = await arch.raw(chunked(), content_type)
        assert status == 413
        assert arch.spool_files() == []
        assert arch.queue.messages == []  # nothing was stored
        assert (await arch.post(parts[:2]))[0] == 200  # under the cap
    finally:
        await client.close()


@pytest.mark.parametrize("content_type", [
    "application/dicom",
    'multipart/related; type="application/dicom+json"; boundary=b',
    "multipart/form-data; boundary=b",
    "text/plain",
])
async def test_unsupported_request_media_type_415(archive: Archive, tmp_path: Path, content_type: str) -> None:
    body, _ = multipart([part10(_ct(), tmp_path)], boundary="b")
    assert (await archive.raw(body, content_type))[0] == 415
    assert archive.queue.messages == []


async def test_unsupported_part_415_before_anything_is_stored(archive: Archive, tmp_path: Path) -> None:
    good = part10(_ct(), tmp_path)
    assert (await archive.post([good, b"{}"], part_type="application/dicom+json"))[0] == 415
    body, content_type = multipart([good], boundary="outer")
    mixed = body.replace(b"--outer--", b"--outer\r\nContent-Type: text/plain\r\n\r\nhello\r\n--outer--")
    assert (await archive.raw(mixed, content_type))[0] == 415
    nested_inner, inner_type = multipart([good], boundary="inner")
    nested = (b"--outer\r\nContent-Type: " + inner_type.encode() + b"\r\n\r\n" + nested_inner + b"\r\n--outer--\r\n")
    assert (await archive.raw(nested, content_type))[0] == 415
    b64 = b"--outer\r\nContent-Type: application/dicom\r\nContent-Transfer-Encoding: base64\r\n\r\nAAAA\r\n--outer--\r\n"
    assert (await archive.raw(b64, content_type))[0] == 415
    assert archive.queue.messages == []
    # a part without its own Content-Type takes the request's type parameter
    assert (await archive.post([good], part_type=None))[0] == 200


async def test_malformed_multipart_400(archive: Archive, tmp_path: Path) -> None:
    good = part10(_ct(), tmp_path)
    body, content_type = multipart([good, good], boundary="bnd")
    cases = [
        (body, 'multipart/related; type="application/dicom"'),  # no boundary
        (b"no boundary line anywhere\r\n", content_type),
        (body[: len(body) // 2], content_type),  # truncated: no closing boundary
        (b"--bnd--\r\n", content_type),  # no parts
        (b"--bnd\r\n" + b"X-Long: " + b"a" * 20000 + b"\r\n\r\n" + good + b"\r\n--bnd--\r\n", content_type),
        (b"--bnd\r\nno colon header\r\n\r\n" + good + b"\r\n--bnd--\r\n", content_type),
        (b"--bnd\r\nContent-Length: 5\r\n\r\n" + good + b"\r\n--bnd--\r\n", content_type),  # lying length
    ]
    for raw, ctype in cases:
        status, answer = await archive.raw(raw, ctype)
        assert status == 400, (raw[:40], answer)
    assert archive.queue.messages == []
    assert archive.spool_files() == []


async def test_not_acceptable_406(archive: Archive, tmp_path: Path) -> None:
    body, content_type = multipart([part10(_ct(), tmp_path)])
    assert (await archive.raw(body, content_type, headers={"Accept": "application/dicom+xml"}))[0] == 406
    status, _ = await archive.raw(body, content_type, headers={"Accept": "application/dicom+json, */*;q=0.1"})
    assert status == 200


async def test_study_url_study_wins_retrieve_url_and_multi_study_is_empty(archive: Archive, tmp_path: Path) -> None:
    status, body = await archive.post([part10(_ct(), tmp_path), part10(_ct(), tmp_path)])
    assert status == 200
    assert body[RETRIEVE_URL] == {"vr": "UR"}  # instances of two studies: no single study URL


def test_failure_reason_table() -> None:
    from archive.core.errors import DuplicateConflict, InvalidUID, MalformedDataset, UIDMismatch

    assert stow.failure_reason(stow.UnsupportedSOPClass("x")) == 0x0122
    assert stow.failure_reason(stow.UnsupportedTransferSyntax("x")) == 0xC122
    assert stow.failure_reason(stow.StudyMismatch("x")) == 0xA900
    assert stow.failure_reason(UIDMismatch("x")) == 0xA900
    assert stow.failure_reason(MalformedDataset("x")) == 0xC000
    assert stow.failure_reason(InvalidUID("SOPInstanceUID", "x")) == 0xC001
    assert stow.failure_reason(BackendUnavailable("store", "x")) == 0xA700
    assert stow.failure_reason(TimeoutError()) == 0xA701
    assert stow.failure_reason(DuplicateConflict("x")) == 0x0111
    assert stow.failure_reason(RuntimeError("bug")) == 0x0110


def test_http_status_semantics() -> None:
    ok, warn = stow.PartResult("1.2", "1.3"), stow.PartResult("1.2", "1.4", warning=0xB000)
    bad, busy = stow.PartResult(failure=0xC000), stow.PartResult(failure=0xA700)
    assert stow.http_status([ok, ok]) == 200
    assert stow.http_status([ok, warn]) == 202
    assert stow.http_status([ok, bad]) == 202
    assert stow.http_status([bad, busy]) == 409
    assert stow.http_status([busy, busy]) == 503


async def test_client_gone_mid_body_leaves_nothing(archive: Archive, tmp_path: Path) -> None:
    import asyncio

    body, content_type = multipart([part10(_ct(), tmp_path), part10(_ct(size=64), tmp_path)])
    server = archive.client.server
    reader, writer = await asyncio.open_connection(server.host, server.port)
    writer.write((f"POST /dicom-web/studies HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\n"
                  f"Content-Length: {len(body)}\r\n\r\n").encode() + body[: len(body) - 3000])
    await writer.drain()
    for _ in range(100):  # the server is inside the second part, its first part spooled
        await asyncio.sleep(0.02)
        if archive.spool_files():
            break
    assert archive.spool_files()
    writer.close()
    for _ in range(100):  # the handler sees the connection lost and cleans up
        await asyncio.sleep(0.02)
        if not archive.spool_files():
            break
    assert archive.spool_files() == []
    assert archive.queue.messages == []  # nothing stored from an incomplete request
