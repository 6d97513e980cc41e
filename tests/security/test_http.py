"""Hostile HTTP requests: traversal in URL segments, hostile UIDs, STOW-RS abuse, multipart
smuggling, XSS through the JSON surfaces, CORS with credentials from a foreign origin."""

from __future__ import annotations

import json
import urllib.parse

import pytest

from tests.factories import make_ct, write_part10
from tests.security.conftest import (
    HOSTILE_UIDS,
    MARKER,
    TRAVERSALS,
    Archive,
    ct,
    get,
    guarded,
    json_of,
    quote,
)
from tests.security.hostile import XSS_NAME
from tests.stow_client import CONTENT_TYPE, multipart, post, sequence, value

FAILED_SOP_SEQUENCE, FAILURE_REASON = "00081198", "00081197"
SEGMENTS = (*TRAVERSALS, "..", "%2e%2e", "%2E%2E%2F%2E%2E", "..%2f..%2fetc%2fpasswd", "%2fetc%2fpasswd",
            "....//....//etc", "%252e%252e%252f", "%c0%ae%c0%ae%2f", "1.2.3;rm", "١.٢", "²", "1,²")


def _resources(archive: Archive, bad: str) -> list[str]:
    study, series, sop = archive.location("ct0")
    base = f"{archive.http}/dicom-web"
    return [f"{base}/studies/{bad}", f"{base}/studies/{bad}/metadata", f"{base}/studies/{bad}/series",
            f"{base}/studies/{study}/series/{bad}", f"{base}/studies/{study}/series/{bad}/instances",
            f"{base}/studies/{study}/series/{series}/instances/{bad}/rendered",
            f"{base}/studies/{study}/series/{series}/instances/{sop}/frames/{bad}",
            f"{base}/studies/{study}/series/{series}/instances/{sop}/bulkdata/{bad}",
            f"{archive.http}/wado?requestType=WADO&studyUID={bad}&seriesUID={series}&objectUID={sop}"]


@pytest.mark.parametrize("segment", SEGMENTS)
def test_traversal_and_hostile_uids_in_url_segments(archive: Archive, segment: str) -> None:
    """Sent as is (no client-side normalisation): never 200, never 5xx, never a file's bytes."""
    with guarded(archive):
        for url in _resources(archive, segment if "%" in segment else quote(segment)):
            status, _, body = get(url)
            assert status in (400, 404, 406), (url, status, body[:200])
            assert b"root:" not in body  # (an error may quote the value: it is JSON, nosniff)


@pytest.mark.parametrize("uid", [*HOSTILE_UIDS, "١.٢"])
def test_hostile_uids_in_query_parameters(archive: Archive, uid: str) -> None:
    with guarded(archive):
        for path in ("/dicom-web/studies", "/dicom-web/instances"):
            status, _, body = get(f"{archive.http}{path}?StudyInstanceUID={quote(uid)}")
            assert status in (200, 400) and (status == 400 or json_of(body) == []), (path, status, body[:200])
        status, _, body = get(f"{archive.http}/api/search?StudyInstanceUID={quote(uid)}")
        assert status in (200, 400) and (status == 400 or json_of(body)["total"] == 0)


def _stow(archive: Archive, parts: list[bytes], study: str | None = None) -> tuple[int, object]:
    body, content_type = multipart(parts)
    url = f"{archive.http}/dicom-web/studies" + (f"/{study}" if study else "")
    status, _, answer = post(url, body, content_type)
    return status, answer


def _reasons(answer: object) -> list[int]:
    assert isinstance(answer, dict), answer
    return [value(item, FAILURE_REASON) for item in sequence(answer, FAILED_SOP_SEQUENCE)]


@pytest.mark.parametrize("uid", TRAVERSALS)
def test_stow_part_with_traversal_uid(archive: Archive, uid: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    part = write_part10(ct(sop_uid=uid), tmp_path / "x.dcm").read_bytes()
    with guarded(archive):
        status, answer = _stow(archive, [part])
    assert status == 409 and _reasons(answer) == [0xC001], answer


@pytest.mark.parametrize("study", [f"..%2F..%2F{MARKER}", "1.02.3", "1.2." + "3" * 63, "%2e%2e"])
def test_stow_url_with_hostile_study(archive: Archive, study: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    part = write_part10(ct(), tmp_path / "x.dcm").read_bytes()
    with guarded(archive):
        status, answer = _stow(archive, [part], study)
    assert status in (400, 404), (status, answer)


def test_stow_part_claiming_another_study(archive: Archive, tmp_path) -> None:  # type: ignore[no-untyped-def]
    study, _, _ = archive.location("ct0")
    part = write_part10(ct(), tmp_path / "x.dcm").read_bytes()  # a study of its own
    with guarded(archive):
        status, answer = _stow(archive, [part], study)
    assert status == 409 and _reasons(answer) == [0xA900], answer


@pytest.mark.parametrize("data", [b"", b"DICM", b"\x00" * 128 + b"DICM" + b"\xff" * 64, b"<html></html>"])
def test_stow_malformed_dicom(archive: Archive, data: bytes) -> None:
    with guarded(archive):
        status, answer = _stow(archive, [data])
    assert status == 409 and _reasons(answer) == [0xC000], answer


@pytest.mark.parametrize("chunked", [False, True])
def test_stow_oversized_body(archive: Archive, chunked: bool, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """ARCHIVE_STOW_MAX_BYTES is 2 MiB here: 413, and nothing stored, also of the parts before."""
    small = write_part10(ct(), tmp_path / "a.dcm").read_bytes()
    big = write_part10(make_ct(size=1100), tmp_path / "b.dcm").read_bytes()  # 2.4 MB of pixels
    body, content_type = multipart([small, big])
    import http.client
    conn = http.client.HTTPConnection("127.0.0.1", int(archive.http.rsplit(":", 1)[1]), timeout=30)
    with guarded(archive):
        if chunked:
            conn.request("POST", "/dicom-web/studies", body=iter([body[i:i + 65536] for i in range(0, len(body), 65536)]),
                         headers={"Content-Type": content_type}, encode_chunked=True)
        else:
            conn.request("POST", "/dicom-web/studies", body=body, headers={"Content-Type": content_type})
        try:
            status = conn.getresponse().status
        except (ConnectionError, http.client.HTTPException):
            status = 413  # answered and closed while we were still sending
        conn.close()
    assert status == 413


def _raw_stow(archive: Archive, body: bytes, content_type: str) -> int:
    return post(f"{archive.http}/dicom-web/studies", body, content_type)[0]


def test_multipart_header_smuggling(archive: Archive, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """CRLF in part headers, duplicate Content-Type, a boundary inside a header, a bare-LF header: never
    a 5xx, and only a well-formed application/dicom part is ever stored."""
    good = write_part10(ct(), tmp_path / "x.dcm").read_bytes()
    b = "b0undary"
    bodies = [
        f"--{b}\r\nContent-Type: application/dicom\r\nX-Injected: a\rb\r\n\r\n".encode() + good + f"\r\n--{b}--\r\n".encode(),
        f"--{b}\r\nContent-Type: text/html\r\nContent-Type: application/dicom\r\n\r\n".encode() + good + f"\r\n--{b}--\r\n".encode(),
        f"--{b}\r\nContent-Type: application/dicom; x=\"\r\n--{b}\r\n\"\r\n\r\n".encode() + good + f"\r\n--{b}--\r\n".encode(),
        f"--{b}\nContent-Type: application/dicom\n\n".encode() + good + f"\n--{b}--\n".encode(),
        f"--{b}\r\nContent-Type: application/dicom\r\nContent-Length: 5\r\n\r\n".encode() + good + f"\r\n--{b}--\r\n".encode(),
        f"--{b}\r\nContent-Type: application/dicom\r\n\r\n--{b}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        + good + f"\r\n--{b}--\r\n".encode(),
    ]
    for n, body in enumerate(bodies):
        with guarded(archive) as expect:
            status = _raw_stow(archive, body, CONTENT_TYPE.format(boundary=b))
            assert status in (200, 202, 400, 409, 415), (n, status)
            if status in (200, 202):
                expect.stored = 1
        if status in (200, 202):  # the next body may store the same instance: make it another one
            good = write_part10(ct(), tmp_path / f"x{n}.dcm").read_bytes()


@pytest.mark.parametrize("surface", ["qido", "metadata", "search"])
def test_xss_in_patient_names_stays_json(archive: Archive, surface: str) -> None:
    study, series, sop = archive.location("xss")
    url = {"qido": f"{archive.http}/dicom-web/studies?StudyInstanceUID={study}&includefield=all",
           "metadata": f"{archive.http}/dicom-web/studies/{study}/metadata",
           "search": f"{archive.http}/api/search?q=script+alert+img+svg+bold&level=instance"}[surface]
    with guarded(archive):
        status, headers, body = get(url)
    assert status == 200, body[:200]
    assert headers["Content-Type"].split(";")[0] in ("application/json", "application/dicom+json")
    assert headers.get("X-Content-Type-Options") == "nosniff"
    parsed = json.loads(body)
    assert XSS_NAME in body.decode() or surface == "search"  # data stays data, for the client to escape
    if surface == "search":
        hits = parsed["hits"]
        assert hits, parsed
        for hit in hits:
            for h in hit["highlights"]:
                for fragment in h["fragments"]:
                    assert "<" not in fragment.replace("<em>", "").replace("</em>", ""), fragment


@pytest.mark.parametrize("path", ["/dicom-web/studies", "/api/search?q=x", "/dicom-web/studies/1.2.3/metadata"])
def test_cors_with_credentials_from_a_foreign_origin(archive: Archive, path: str) -> None:
    with guarded(archive):
        status, headers, _ = get(archive.http + path, {"Origin": "https://evil.example", "Cookie": "session=1"})
        assert "Access-Control-Allow-Origin" not in headers and "Access-Control-Allow-Credentials" not in headers
        status, headers, _ = get(archive.http + path, {
            "Origin": "https://evil.example", "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization"}, method="OPTIONS")
        assert status == 403 and "Access-Control-Allow-Origin" not in headers
        status, headers, _ = get(archive.http + path, {"Origin": "https://viewer.example"})
        assert headers.get("Access-Control-Allow-Origin") == "https://viewer.example"
        assert "Access-Control-Allow-Credentials" not in headers and "Origin" in headers.get("Vary", "")
        status, headers, _ = get(archive.http + path, {"Origin": "null"})
        assert "Access-Control-Allow-Origin" not in headers


def test_long_request_lines(archive: Archive) -> None:
    """The OpenAPI document's longest search (q of 1024 characters, 4 bytes of UTF-8 each, 12 percent-encoded)
    and a QIDO-RS list of 300 UIDs fit the request line (ARCHIVE's 64 KiB, not aiohttp's 8190 bytes); a longer
    line is refused (400) before routing, and the log says so without quoting it (it can name a patient)."""
    secret = "SECRET" + MARKER.upper()
    uids = ",".join(f"1.2.826.0.1.3680043.10.1437.{n}.{n * 7919}" for n in range(1, 301))
    with guarded(archive):
        status, _, body = get(f"{archive.http}/api/search?q=" + quote("\U0001d507" * 1024))
        assert status == 200 and json_of(body)["total"] == 0, body[:200]
        status, _, body = get(f"{archive.http}/dicom-web/studies?StudyInstanceUID={uids}")
        assert status == 200 and json_of(body) == [], body[:200]
        status, _, _ = get(f"{archive.http}/dicom-web/studies?PatientName={secret}&x=" + "a" * (64 * 1024))
        assert status == 400
    log = archive.proc.log_path.read_text()
    assert secret not in log and "malformed HTTP request refused (LineTooLong" in log


@pytest.mark.parametrize("resource", ["/frames/²", "/frames/1,²", "/rendered?quality=²", "/rendered?quality=٥٠",
                                      "/rendered?window=nan,nan", "/rendered?window=40,1e999",
                                      "/rendered?viewport=٦٤,٦٤", "/frames/1/rendered?viewport=1_0,5",
                                      "wado:rows=²", "wado:frameNumber=²", "wado:windowCenter=inf&windowWidth=1"])
def test_numbers_that_are_not_ascii_digits(archive: Archive, resource: str) -> None:
    """str.isdigit() takes "²" (int() then fails: it was a 500) and "١"; int() and float() take "1_0", "nan",
    "1e999": numeric parameters of an instance that exists are ASCII digits or 400."""
    study, series, sop = archive.location("ct0")
    if resource.startswith("wado:"):
        url = (f"{archive.http}/wado?requestType=WADO&studyUID={study}&seriesUID={series}&objectUID={sop}"
               f"&contentType=image/jpeg&{urllib.parse.quote(resource[5:], safe='=&,')}")
    else:
        path, _, params = resource.partition("?")
        url = (f"{archive.http}/dicom-web/studies/{study}/series/{series}/instances/{sop}"
               + urllib.parse.quote(path, safe="/,") + ("?" + urllib.parse.quote(params, safe="=&,") if params else ""))
    with guarded(archive):
        status, headers, body = get(url)
    assert status == 400 and headers["Content-Type"].startswith("application/json"), (url, status, body[:200])


@pytest.mark.parametrize("level", ["study", "series"])
def test_a_group_rendering_whose_region_fits_no_image(archive: Archive, level: str) -> None:
    """schemathesis found it: a study's rendering with a viewport region outside the images began a
    multipart answer, then wrote a 400 response into it. The first image is rendered before the answer
    begins: 400, JSON."""
    study, series, _ = archive.location("ct0")
    url = f"{archive.http}/dicom-web/studies/{study}" + (f"/series/{series}" if level == "series" else "")
    with guarded(archive):
        status, headers, body = get(url + "/rendered?viewport=64,53,-1400310200,-140,-7,-27562230")
    assert status == 400 and headers["Content-Type"].startswith("application/json"), (status, body[:200])
    assert "outside the image" in json_of(body)["error"]
