"""Decompression bombs and oversized outputs sent to rendering, frames and transcoding.

A stored instance of ~100 bytes of RLE (or an 8 x 8 JPEG) declaring 40000 x 40000 pixels
(60000 x 60000 for the JPEG) must be refused cleanly (a 4xx; nothing else in the archive
affected) with bounded memory: the serve process's peak RSS may not grow by more than
``RSS_BUDGET_MB`` over the case. Likewise a viewport or WADO-URI size asking for a huge output.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.harness import wait_until
from tests.security.conftest import Archive, ct, get, guarded, peak_rss_mb, store_baseline

RSS_BUDGET_MB = 400


def _instance_url(archive: Archive, name: str) -> str:
    uid = archive.baseline[name]
    from tests.e2e.harness import http_json
    status, body = http_json(f"{archive.http}/dicom-web/instances?SOPInstanceUID={uid}")
    assert status == 200 and body, body
    study, series = body[0]["0020000D"]["Value"][0], body[0]["0020000E"]["Value"][0]
    return f"{archive.http}/dicom-web/studies/{study}/series/{series}/instances/{uid}"


@pytest.mark.parametrize("bomb", ["rle_bomb", "jpeg_bomb"])
@pytest.mark.parametrize("resource,accept", [
    ("/rendered", "image/jpeg"),
    ("/frames/1/rendered", "image/png"),
    ("/thumbnail", "image/jpeg"),
    ("/frames/1", 'multipart/related; type="application/octet-stream"'),
    ("", 'multipart/related; type="application/dicom"'),  # WADO-RS default: Explicit VR LE, decoded
])
def test_decompression_bomb_fails_cleanly(archive: Archive, bomb: str, resource: str, accept: str) -> None:
    url = _instance_url(archive, bomb) + resource
    before = peak_rss_mb(archive)
    with guarded(archive):
        status, _, body = get(url, {"Accept": accept})
    grown = peak_rss_mb(archive) - before
    assert grown < RSS_BUDGET_MB, f"peak RSS grew by {grown:.0f} MiB"
    if resource == "" and bomb == "jpeg_bomb":  # lossy: sent as stored by default (PS3.18 8.7.3.5.2), no decode
        assert status == 200 and b"transfer-syntax=1.2.840.10008.1.2.4.50" in body[:200], (status, body[:300])
        return
    assert 400 <= status < 500, (status, body[:300])


@pytest.mark.parametrize("bomb", ["rle_bomb", "jpeg_bomb"])
@pytest.mark.parametrize("content_type", ["image/jpeg", "application/dicom"])
def test_decompression_bomb_through_wado_uri(archive: Archive, bomb: str, content_type: str) -> None:
    instance = _instance_url(archive, bomb)
    study, series, uid = instance.split("/")[-5], instance.split("/")[-3], instance.split("/")[-1]
    url = (f"{archive.http}/wado?requestType=WADO&studyUID={study}&seriesUID={series}&objectUID={uid}"
           f"&contentType={content_type}")
    before = peak_rss_mb(archive)
    with guarded(archive):
        status, _, body = get(url)
    assert peak_rss_mb(archive) - before < RSS_BUDGET_MB
    assert 400 <= status < 500, (status, body[:300])


@pytest.mark.parametrize("query", ["viewport=60000,60000", "viewport=60000,60000,0,0,8,8", "quality=100&viewport=9999999,1"])
def test_huge_viewport_is_bounded(archive: Archive, query: str) -> None:
    url = _instance_url(archive, "ct0") + "/rendered?" + query
    before = peak_rss_mb(archive)
    with guarded(archive):
        status, headers, body = get(url, {"Accept": "image/png"})
    assert peak_rss_mb(archive) - before < RSS_BUDGET_MB
    assert status in (200, 400), (status, body[:200])


def test_huge_wado_uri_size_is_bounded(archive: Archive) -> None:
    instance = _instance_url(archive, "ct0")
    study, series, uid = instance.split("/")[-5], instance.split("/")[-3], instance.split("/")[-1]
    url = f"{archive.http}/wado?requestType=WADO&studyUID={study}&seriesUID={series}&objectUID={uid}&rows=1000000"
    before = peak_rss_mb(archive)
    with guarded(archive):
        status, _, body = get(url)
    assert peak_rss_mb(archive) - before < RSS_BUDGET_MB
    assert status in (200, 400), (status, body[:200])


@pytest.mark.parametrize("scope", ["study", "series"])
def test_a_study_holding_a_bomb_is_refused_before_the_multipart_response_starts(
        archive: Archive, scope: str, tmp_path: Path) -> None:
    """Converting every instance of a study (the WADO-RS default syntax) would have to decode the
    bomb midway, after a harmless first instance went out; the catalog's attributes refuse it
    before the response starts (406), instead of a cut connection."""
    url = _instance_url(archive, "rle_bomb").rsplit("/instances/", 1)[0]
    study, series = url.split("/studies/")[1].split("/series/")
    if "bomb_neighbour" not in archive.baseline:  # sent first: instance number 0
        catalog, search = archive.catalog_count(), archive.search_count()
        store_baseline(archive, {"bomb_neighbour": ct(study_uid=study, series_uid=series, instance_number=0)},
                       tmp_path)
        wait_until(lambda: (archive.catalog_count(), archive.search_count()) == (catalog + 1, search + 1), timeout=30)
    if scope == "study":
        url = url.rsplit("/series/", 1)[0]
    with guarded(archive):
        status, _, body = get(url, {"Accept": 'multipart/related; type="application/dicom"'})
    assert status == 406 and b"rle_bomb" not in body and b"decoded per request" in body, (status, body[:300])
    status, headers, body = get(url, {"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'})
    assert status == 200, (status, body[:300])  # as stored: no decoding, nothing refused
