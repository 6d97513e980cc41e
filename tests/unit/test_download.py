"""The zip download's streaming and its member names (archive.query.dicomweb.download)."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import tracemalloc
import zipfile
from pathlib import Path

import pytest

from archive.adapters.filesystem_store import FilesystemStore
from archive.core.models import Payload
from archive.core.records import CatalogInstance
from archive.query.dicomweb.download import member_name, zip_stream
from tests.factories import make_ct
from tests.unit.test_wado import SERIES, STUDY, World, world  # noqa: F401 (the world fixture)

MB = 1 << 20


def _instance(uid: str, size: int, sha: str, study: str = "1.2.3", series: str = "1.2.3.4") -> CatalogInstance:
    return CatalogInstance(sop_instance_uid=uid, study_uid=study, series_uid=series, object_key=f"k/{uid}",
                           size=size, sha256=sha)


async def test_memory_stays_flat_while_a_large_study_streams(tmp_path: Path) -> None:
    """48 MB of objects through the zip with Python allocations peaking far below one object."""
    store = FilesystemStore(tmp_path / "objects", fsync=False)
    await store.migrate()
    plan = []
    for n in range(3):
        data = os.urandom(16 * MB)  # incompressible: deflate cannot shrink what it buffers
        sha = hashlib.sha256(data).hexdigest()
        inst = _instance(f"1.2.3.4.{n}", len(data), sha)
        await store.put(inst.object_key, Payload((data,), len(data), sha))
        plan.append((inst, member_name(inst, 1, n + 1)))
        del data
    out = tmp_path / "study.zip"
    largest = 0
    tracemalloc.start()
    try:
        with open(out, "wb") as fh:
            async for chunk in zip_stream(plan, lambda inst: _open(store, inst)):
                largest = max(largest, len(chunk))
                fh.write(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        await store.close()
    assert largest <= 2 * 65536  # stream-zip's chunk size, never an object
    assert peak < 8 * MB, f"peak {peak / MB:.1f} MB while streaming 48 MB"
    with zipfile.ZipFile(out) as archive:
        assert archive.testzip() is None
        assert archive.namelist() == [name for _, name in plan]
        assert [i.file_size for i in archive.infolist()] == [16 * MB] * 3


async def _open(store: FilesystemStore, inst: CatalogInstance):  # type: ignore[no-untyped-def]
    return store.get(inst.object_key)


def test_member_names_come_from_uids_and_numbers_only() -> None:
    inst = _instance("1.2.3.4.5", 1, "")
    assert member_name(inst, 2, 7) == "1.2.3/2_1.2.3.4/7_1.2.3.4.5.dcm"
    assert member_name(inst, None, None) == "1.2.3/1.2.3.4/1.2.3.4.5.dcm"
    with pytest.raises(ValueError):
        member_name(_instance("../../etc/passwd", 1, ""), 1, 1)
    for hostile in ("/abs", "..", "1.2/..", "1.2\n", "", "1" * 65):
        with pytest.raises(ValueError):
            member_name(_instance("1.2", 1, "", study=hostile), 1, 1)


async def test_a_client_leaving_mid_zip_leaves_no_object_open(world: World) -> None:
    """The zip generator is closed with the response: the object being read is closed at once."""
    for i in range(3):  # ~8 MB each: the zip is far from sent when the client leaves
        await world.add(make_ct(study_uid=STUDY, series_uid=SERIES, instance_number=10 + i, seed=i, size=2048))
    objects = str(world.store.root)

    def open_objects() -> list[str]:
        out = []
        for fd in os.listdir("/proc/self/fd"):
            try:
                target = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                continue
            if target.startswith(objects):
                out.append(target)
        return out

    response = await world.client.get(f"/dicom-web/studies/{STUDY}", params={"accept": "application/zip"})
    assert response.status == 200
    await response.content.readexactly(100_000)
    response.close()  # the client goes away mid-zip
    for _ in range(200):  # wait on the condition: every object file closed
        if not open_objects():
            break
        await asyncio.sleep(0.02)
    assert open_objects() == []
    response = await world.client.get(f"/dicom-web/studies/{STUDY}", params={"accept": "application/zip"})
    with zipfile.ZipFile(io.BytesIO(await response.read())) as archive:  # the server still serves whole zips
        assert archive.testzip() is None and len(archive.namelist()) == len(world.stored)
