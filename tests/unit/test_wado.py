"""WADO-RS retrieve, metadata, bulkdata and CORS over the embedded catalog and filesystem store."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import io
import json
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
from aiohttp import ClientPayloadError
from aiohttp.test_utils import TestClient, TestServer
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from yarl import URL
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGBaseline8Bit, RLELossless

from archive.adapters.filesystem_store import FilesystemStore
from archive.adapters.sqlite_catalog import SqliteCatalog
from archive.core.models import Payload
from archive.core.records import CatalogEntry
from archive.core.uids import object_key
from archive.ingest.describe import dataset_offset, describe
from archive.query.dicomweb.media.transcode import choose
from archive.query.dicomweb.negotiation import ANY, DEFAULT, wanted_syntaxes
from archive.query.routes import add_routes
from archive.settings import Settings
from archive.web import base_app
from tests.factories import make_ct, new_uid, write_part10

STUDY, SERIES, OTHER_SERIES = new_uid(), new_uid(), new_uid()
ELE, ILE, RLE = str(ExplicitVRLittleEndian), str(ImplicitVRLittleEndian), str(RLELossless)
DICOM_ACCEPT = 'multipart/related; type="application/dicom"'


def multipart(body: bytes, content_type: str) -> list[tuple[dict[str, str], bytes]]:
    """Split a multipart/related body into (headers, content) per part (strict framing)."""
    assert content_type.startswith("multipart/related")
    boundary = content_type.split("boundary=")[1].split(";")[0].strip('"').encode()
    assert body.endswith(b"\r\n--" + boundary + b"--\r\n")
    body = body[: -len(b"\r\n--" + boundary + b"--\r\n")]
    assert body.startswith(b"--" + boundary + b"\r\n")
    parts = []
    for raw in body[len(b"--" + boundary + b"\r\n"):].split(b"\r\n--" + boundary + b"\r\n"):
        head, _, content = raw.partition(b"\r\n\r\n")
        headers = dict(line.split(": ", 1) for line in head.decode().split("\r\n"))
        parts.append((headers, content))
    return parts


@dataclasses.dataclass
class Stored:
    path: Path  # the Part 10 file as stored
    dataset: Dataset


class World:
    def __init__(self, client: TestClient, store: FilesystemStore, catalog: SqliteCatalog, files: Path) -> None:
        self.client, self.store, self.catalog, self.files = client, store, catalog, files
        self.stored: dict[str, Stored] = {}

    async def add(self, ds: Dataset, syntax: str = ELE) -> Stored:
        if syntax == RLE:
            ds = copy.deepcopy(ds)  # compress() would change the caller's PixelData element
            ds.file_meta = FileMetaDataset()
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds.compress(RLELossless, generate_instance_uid=False)
        path = write_part10(ds, self.files / f"{ds.SOPInstanceUID}.dcm", syntax)
        data = path.read_bytes()
        sha = hashlib.sha256(data).hexdigest()
        d = describe(path, syntax, offset=dataset_offset(path))
        key = object_key(d.sop_instance_uid)
        await self.store.put(key, Payload((data,), len(data), sha))
        await self.catalog.upsert([CatalogEntry.from_message(d.index_message(key, len(data), sha, "TEST"))])
        self.stored[str(ds.SOPInstanceUID)] = stored = Stored(path, dcmread(path))
        return stored


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    catalog = SqliteCatalog(tmp_path / "catalog.db")
    store = FilesystemStore(tmp_path / "objects", fsync=False)
    await catalog.migrate()
    await store.migrate()
    (tmp_path / "files").mkdir()
    app = base_app([catalog])
    settings = Settings(data_dir=tmp_path / "data", cors_origins=("https://viewer.example",))
    add_routes(app, catalog, max_limit=100, store=store, settings=settings)
    async with TestClient(TestServer(app)) as client:
        w = World(client, store, catalog, tmp_path / "files")
        for i in range(3):
            await w.add(make_ct(study_uid=STUDY, series_uid=SERIES, instance_number=i + 1, seed=i, size=16))
        yield w
    await catalog.close()
    await store.close()


def _uids(world: World, series: str = SERIES) -> list[str]:
    return [uid for uid, s in world.stored.items() if s.dataset.SeriesInstanceUID == series]


# -- negotiation (PS3.18 8.7.3.5) ------------------------------------------------------------


def test_accept_header_parsing_and_transfer_syntax_choice() -> None:
    accept = ('multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.5;q=0.5, '
              'multipart/related; type="application/dicom", text/html;q=0')
    assert wanted_syntaxes(accept, "application/dicom") == [DEFAULT, RLE]  # by quality, q=0 left out
    assert wanted_syntaxes(None, "application/dicom") == [DEFAULT]
    assert wanted_syntaxes("*/*", "application/dicom") == [DEFAULT]
    assert wanted_syntaxes(f"{DICOM_ACCEPT}; transfer-syntax=*", "application/dicom") == [ANY]
    assert wanted_syntaxes("application/json, text/html", "application/dicom") == []
    assert wanted_syntaxes('multipart/related; type="application/octet-stream"', "application/dicom") == []
    assert choose(ELE, [ANY]) == ELE
    assert choose(RLE, [DEFAULT]) == ELE  # the default is Explicit VR Little Endian
    assert choose(str(JPEGBaseline8Bit), [DEFAULT]) == str(JPEGBaseline8Bit)  # lossy: sent as stored
    assert choose(ILE, [DEFAULT]) == ELE
    assert choose(ELE, [RLE]) == RLE
    assert choose(str(JPEGBaseline8Bit), [RLE]) is None  # no lossless re-encoding of lossy data
    assert choose(ELE, [str(JPEGBaseline8Bit)]) is None  # we never compress lossy
    assert choose(ELE, ["1.2.3.4", ILE]) == ILE  # first producible in the client's order


# -- retrieve ----------------------------------------------------------------------------------


async def _retrieve(world: World, path: str, accept: str | None, status: int = 200) -> list[tuple[dict[str, str], bytes]]:
    headers = {"Accept": accept} if accept is not None else {}
    response = await world.client.get(path, headers=headers)
    body = await response.read()
    assert response.status == status, body[:300]
    return multipart(body, response.headers["Content-Type"]) if status == 200 else []


async def test_instance_as_stored_is_byte_identical(world: World) -> None:
    uid = _uids(world)[0]
    [(headers, content)] = await _retrieve(
        world, f"/dicom-web/studies/{STUDY}/series/{SERIES}/instances/{uid}", f"{DICOM_ACCEPT}; transfer-syntax=*")
    assert headers["Content-Type"] == f"application/dicom; transfer-syntax={ELE}"
    assert content == world.stored[uid].path.read_bytes()


async def test_study_and_series_retrieve_one_part_per_instance(world: World) -> None:
    other = await world.add(make_ct(study_uid=STUDY, series_uid=OTHER_SERIES, size=8))
    parts = await _retrieve(world, f"/dicom-web/studies/{STUDY}", None)
    assert sorted(dcmread(io.BytesIO(c)).SOPInstanceUID for _, c in parts) == sorted(world.stored)
    parts = await _retrieve(world, f"/dicom-web/studies/{STUDY}/series/{OTHER_SERIES}", "*/*")
    assert [dcmread(io.BytesIO(c)).SOPInstanceUID for _, c in parts] == [other.dataset.SOPInstanceUID]


async def test_compressed_instance_is_decoded_for_the_default_and_kept_with_star(world: World) -> None:
    ds = make_ct(study_uid=STUDY, series_uid=OTHER_SERIES, size=32, seed=7)
    stored = await world.add(ds, RLE)
    path = f"/dicom-web/studies/{STUDY}/series/{OTHER_SERIES}/instances/{ds.SOPInstanceUID}"
    [(headers, content)] = await _retrieve(world, path, DICOM_ACCEPT)  # no transfer-syntax: the default
    assert headers["Content-Type"] == f"application/dicom; transfer-syntax={ELE}"
    got = dcmread(io.BytesIO(content))
    assert got.file_meta.TransferSyntaxUID == ELE
    assert got.PixelData == ds.PixelData  # decoded: the original native pixels
    assert got.PatientName == ds.PatientName
    [(headers, content)] = await _retrieve(world, path, f"{DICOM_ACCEPT}; transfer-syntax=*")
    assert headers["Content-Type"] == f"application/dicom; transfer-syntax={RLE}"
    assert content == stored.path.read_bytes()
    [(_, content)] = await _retrieve(world, path, f"{DICOM_ACCEPT}; transfer-syntax={ILE}")
    assert dcmread(io.BytesIO(content)).file_meta.TransferSyntaxUID == ILE


async def test_uncompressed_instance_is_encoded_in_rle_on_request(world: World) -> None:
    uid = _uids(world)[1]
    path = f"/dicom-web/studies/{STUDY}/series/{SERIES}/instances/{uid}"
    [(headers, content)] = await _retrieve(world, path, f"{DICOM_ACCEPT}; transfer-syntax={RLE}")
    assert headers["Content-Type"] == f"application/dicom; transfer-syntax={RLE}"
    got = dcmread(io.BytesIO(content))
    assert got.file_meta.TransferSyntaxUID == RLE
    assert np.array_equal(got.pixel_array, world.stored[uid].dataset.pixel_array)
    assert got.PixelData != world.stored[uid].dataset.PixelData  # really encoded


async def test_not_acceptable(world: World) -> None:
    uid = _uids(world)[0]
    path = f"/dicom-web/studies/{STUDY}/series/{SERIES}/instances/{uid}"
    await _retrieve(world, path, "application/json", 406)
    await _retrieve(world, path, f"{DICOM_ACCEPT}; transfer-syntax={JPEGBaseline8Bit}", 406)
    await _retrieve(world, path, f"{DICOM_ACCEPT}; transfer-syntax=1.2.3.4", 406)


@pytest.mark.parametrize("bad", ["1.2.abc", "1.2.03", "1." + "2" * 70, "1.2.3%20OR%201=1", "1.2.%00", "1.2.3%2F4"])
async def test_hostile_uids_are_refused(world: World, bad: str) -> None:
    for path in (f"/dicom-web/studies/{bad}", f"/dicom-web/studies/{STUDY}/series/{bad}/metadata",
                 f"/dicom-web/studies/{STUDY}/series/{SERIES}/instances/{bad}/bulkdata/7FE00010"):
        response = await world.client.get(path)
        assert response.status in (400, 404), path  # 404 only where the router refuses the path itself
        if response.status == 400:
            assert "not a valid UID" in (await response.json())["error"]
    response = await world.client.get(f"/dicom-web/studies/{bad}")
    assert response.status == 400


async def test_unknown_uids_are_not_found(world: World) -> None:
    for path in (f"/dicom-web/studies/{new_uid()}", f"/dicom-web/studies/{STUDY}/series/{new_uid()}",
                 f"/dicom-web/studies/{new_uid()}/metadata",
                 f"/dicom-web/studies/{STUDY}/series/{SERIES}/instances/{new_uid()}/bulkdata/7FE00010"):
        response = await world.client.get(path)
        assert response.status == 404, path
        assert "error" in await response.json()


async def test_an_object_lost_mid_study_cuts_the_response(world: World) -> None:
    uids = _uids(world)
    await world.store.delete(object_key(uids[-1]))
    response = await world.client.get(f"/dicom-web/studies/{STUDY}/series/{SERIES}")
    assert response.status == 200  # the first instance was there: the response had started
    with pytest.raises(ClientPayloadError):
        await response.read()
    await world.store.delete(object_key(uids[0]))
    response = await world.client.get(f"/dicom-web/studies/{STUDY}/series/{SERIES}/instances/{uids[0]}")
    assert response.status == 404  # known before the first byte


# -- metadata ----------------------------------------------------------------------------------


async def test_metadata_is_the_stored_json_with_bulk_data_uris(world: World) -> None:
    ds = make_ct(study_uid=STUDY, series_uid=OTHER_SERIES, size=8)
    ds.add_new(0x00091010, "OB", bytes(range(256)) * 100)  # a private value above the bulk threshold
    ds.add_new(0x00091002, "LO", "CREATOR")
    await world.add(ds)
    response = await world.client.get(f"/dicom-web/studies/{STUDY}/series/{OTHER_SERIES}/metadata")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("application/dicom+json")
    [meta] = await response.json()
    base = f"http://{world.client.host}:{world.client.port}/dicom-web/studies/{STUDY}/series/{OTHER_SERIES}"
    base += f"/instances/{ds.SOPInstanceUID}/bulkdata/"
    assert meta["00091010"] == {"vr": "OB", "BulkDataURI": base + "00091010"}
    assert meta["7FE00010"] == {"vr": "OW", "BulkDataURI": base + "7FE00010"}
    expected = {k: v for k, v in ds.to_json_dict(bulk_data_threshold=16 * 1024,
                                                 bulk_data_element_handler=lambda e: "").items()
                if "BulkDataURI" not in v and k != "7FE00010"}
    assert {k: v for k, v in meta.items() if "BulkDataURI" not in v} == expected

    response = await world.client.get(f"/dicom-web/studies/{STUDY}/metadata")
    assert len(await response.json()) == 4
    assert response.headers["ETag"]
    response = await world.client.get(f"/dicom-web/studies/{STUDY}/series/{SERIES}/instances/{_uids(world)[0]}"
                                      "/metadata")
    assert [m["00080018"]["Value"][0] for m in await response.json()] == [_uids(world)[0]]


async def test_metadata_never_reads_objects(world: World) -> None:
    """Answered from the catalog's stored JSON: the same with every object gone from the store."""
    path = f"/dicom-web/studies/{STUDY}/metadata"
    before = await (await world.client.get(path)).json()
    for uid in world.stored:
        await world.store.delete(object_key(uid))
    response = await world.client.get(path)
    assert response.status == 200
    assert await response.json() == before


async def test_metadata_etag_and_if_none_match(world: World) -> None:
    path = f"/dicom-web/studies/{STUDY}/metadata"
    first = await world.client.get(path)
    tag = first.headers["ETag"]
    again = await world.client.get(path, headers={"If-None-Match": tag})
    assert again.status == 304 and again.headers["ETag"] == tag and await again.read() == b""
    assert (await world.client.get(path, headers={"If-None-Match": f'W/{tag}, "other"'})).status == 304
    assert (await world.client.get(path, headers={"If-None-Match": '"stale"'})).status == 200
    await world.add(make_ct(study_uid=STUDY, series_uid=SERIES, instance_number=9))
    changed = await world.client.get(path, headers={"If-None-Match": tag})
    assert changed.status == 200 and changed.headers["ETag"] != tag and len(await changed.json()) == 4


async def test_metadata_accept(world: World) -> None:
    path = f"/dicom-web/studies/{STUDY}/metadata"
    assert (await world.client.get(path, headers={"Accept": "application/dicom+xml"})).status == 406
    assert (await world.client.get(path, headers={"Accept": "application/json"})).status == 200


# -- bulkdata ----------------------------------------------------------------------------------


async def _bulk(world: World, url: str) -> list[tuple[dict[str, str], bytes]]:
    response = await world.client.get(url, headers={"Accept": 'multipart/related; type="application/octet-stream"'})
    assert response.status == 200, await response.text()
    return multipart(await response.read(), response.headers["Content-Type"])


async def test_bulk_data_uris_resolve_to_the_values(world: World) -> None:
    ds = make_ct(study_uid=STUDY, series_uid=OTHER_SERIES, size=64)
    private = bytes(range(256)) * 80
    ds.add_new(0x00091002, "LO", "CREATOR")
    ds.add_new(0x00091010, "OB", private)
    item = Dataset()
    item.add_new(0x00091002, "LO", "CREATOR")
    item.add_new(0x00091011, "OB", private[::-1])
    ds.add_new(0x00091020, "SQ", [item])
    await world.add(ds)
    [meta] = await (await world.client.get(f"/dicom-web/studies/{STUDY}/series/{OTHER_SERIES}/metadata")).json()
    [(headers, content)] = await _bulk(world, URL(meta["7FE00010"]["BulkDataURI"]).path)
    assert headers["Content-Type"] == "application/octet-stream" and content == ds.PixelData
    [(_, content)] = await _bulk(world, URL(meta["00091010"]["BulkDataURI"]).path)
    assert content == private
    instance = URL(meta["7FE00010"]["BulkDataURI"]).path.rsplit("/", 1)[0]
    # inside a sequence item: the metadata's own BulkDataURI names the item (PS3.18 F.2.6)
    nested = meta["00091020"]["Value"][0]["00091011"]["BulkDataURI"]
    assert URL(nested).path == f"{instance}/00091020/0/00091011"
    [(_, content)] = await _bulk(world, URL(nested).path)
    assert content == private[::-1]
    assert (await world.client.get(f"{instance}/00091099")).status == 404
    assert (await world.client.get(f"{instance}/00091020/5/00091011")).status == 404
    assert (await world.client.get(f"{instance}/7FE00010", headers={"Accept": "image/jpeg"})).status == 406


async def test_compressed_pixel_data_is_sent_one_part_per_frame(world: World) -> None:
    ds = make_ct(study_uid=STUDY, series_uid=OTHER_SERIES, size=64)
    pixels = np.frombuffer(ds.PixelData, np.uint16).reshape(64, 64)
    frames = np.stack([pixels, pixels[::-1]])
    ds.NumberOfFrames = 2
    ds.PixelData = frames.tobytes()
    stored = await world.add(ds, RLE)
    [meta] = await (await world.client.get(f"/dicom-web/studies/{STUDY}/series/{OTHER_SERIES}/metadata")).json()
    assert meta["7FE00010"]["vr"] == "OB"
    parts = await _bulk(world, URL(meta["7FE00010"]["BulkDataURI"]).path)
    assert [h["Content-Type"] for h, _ in parts] == [f"application/octet-stream; transfer-syntax={RLE}"] * 2
    from pydicom.encaps import generate_frames
    assert [c for _, c in parts] == list(generate_frames(stored.dataset.PixelData, number_of_frames=2))


# -- CORS ----------------------------------------------------------------------------------------


async def test_cors_preflight_and_exposed_headers(world: World) -> None:
    origin = {"Origin": "https://viewer.example"}
    preflight = await world.client.options(f"/dicom-web/studies/{STUDY}/metadata", headers={
        **origin, "Access-Control-Request-Method": "GET", "Access-Control-Request-Headers": "accept, if-none-match"})
    assert preflight.status == 204
    assert preflight.headers["Access-Control-Allow-Origin"] == "https://viewer.example"
    assert "GET" in preflight.headers["Access-Control-Allow-Methods"]
    assert preflight.headers["Access-Control-Allow-Headers"] == "accept, if-none-match"
    response = await world.client.get(f"/dicom-web/studies/{STUDY}/metadata", headers=origin)
    assert response.headers["Access-Control-Allow-Origin"] == "https://viewer.example"
    assert {"ETag", "Warning"} <= {h.strip() for h in response.headers["Access-Control-Expose-Headers"].split(",")}
    missing = await world.client.get(f"/dicom-web/studies/{new_uid()}/metadata", headers=origin)
    assert missing.status == 404 and missing.headers["Access-Control-Allow-Origin"] == "https://viewer.example"
    qido = await world.client.get("/dicom-web/studies", headers=origin)
    assert qido.headers["Access-Control-Allow-Origin"] == "https://viewer.example"
    # an origin not in ARCHIVE_CORS_ORIGINS
    other = {"Origin": "https://evil.example"}
    assert "Access-Control-Allow-Origin" not in (await world.client.get("/dicom-web/studies", headers=other)).headers
    refused = await world.client.options("/dicom-web/studies", headers={**other, "Access-Control-Request-Method": "GET"})
    assert refused.status == 403 and "Access-Control-Allow-Origin" not in refused.headers


def test_cors_origins_setting() -> None:
    assert Settings().cors_origins == ("*",)
    env = {"ARCHIVE_CORS_ORIGINS": "https://a.example/, https://b.example"}
    assert Settings.from_env(env).cors_origins == ("https://a.example", "https://b.example")
    assert json.dumps(Settings.from_env({}).cors_origins) == '["*"]'


async def test_metadata_stays_valid_json_whatever_the_host_header(world: World) -> None:
    ds = make_ct(study_uid=STUDY, series_uid=OTHER_SERIES, size=8)
    ds.add_new(0x00091002, "LO", "CREATOR")
    ds.add_new(0x00091010, "OB", bytes(20000))
    await world.add(ds)
    response = await world.client.get(f"/dicom-web/studies/{STUDY}/series/{OTHER_SERIES}/metadata",
                                      headers={"Host": 'evil"\\host'})
    [meta] = json.loads(await response.read())
    assert meta["00091010"]["BulkDataURI"].startswith('http://evil"\\host/dicom-web/studies/')
