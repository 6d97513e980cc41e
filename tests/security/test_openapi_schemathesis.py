"""schemathesis against ``/api/openapi.json`` of a real ``serve``: the document and the handlers agree.

In the suite: a fixed seed and a small budget per operation (well under a minute): no 5xx, every
response conforms to the document (status, content type, schema), each within
``REQUEST_SECONDS``. ``make fuzz`` sets FUZZ_EXPLORE=1: a larger budget and a random seed.
(schemathesis' pytest plugin does not load under this pytest; its command line is the same engine.)

It runs against an archive of its own (a baseline study, the suite's settings): as an admin it
follows the document's links to DELETE what it found, which must not take the shared archive's
baseline away from the other attack cases.

Every request carries an admin's API key made with ``dicom-archive api-key create`` (admin: DELETE
on the DICOMweb URLs is documented too, and a writer would get only 403 there): a token that
is sent is always checked, and schemathesis would otherwise send made-up ones for the document's
bearer scheme (all 401). What the document says of requests without a valid token (401, a
``WWW-Authenticate: Bearer`` challenge, the Error schema) is checked operation by operation here.
STOW-RS bodies go out as multipart/related through ``schemathesis_hooks``.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from tests.e2e.harness import ROOT
from tests.security.conftest import Archive, get, json_of, start_archive, store_baseline

EXPLORE = os.environ.get("FUZZ_EXPLORE") == "1"
REQUEST_SECONDS = 5.0
SEED = 20261204
# what each path parameter is, for requests that must be refused before the parameter matters
PATH_VALUES = {"study": "1.2.3", "series": "1.2.3.4", "instance": "1.2.3.4.5", "frames": "1",
               "path": "7FE00010"}
NOT_TOKENS = {
    "an unknown API key": "Bearer dka_" + "A" * 43,
    "a made-up JWT": "Bearer eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln",
    "no token after Bearer": "Bearer ",
    "Basic credentials": "Basic YWRtaW46YWRtaW4=",
}


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Archive]:
    """schemathesis' own sandboxed archive, holding the suite's baseline study."""
    from tests.security.hostile import baseline_datasets

    root = tmp_path_factory.mktemp("schemathesis")
    archive = start_archive(root)
    try:
        store_baseline(archive, baseline_datasets(), root)
        yield archive
    finally:
        assert archive.proc.stop() == 0, archive.proc.log_tail()


@pytest.fixture(scope="module")
def admin_key(fuzzed: Archive) -> str:
    """An admin's API key in the fuzzed archive's catalog (its data directory)."""
    created = subprocess.run([sys.executable, "-m", "archive.cli", "api-key", "create", "schemathesis",
                              "--role", "admin"], env={**os.environ, **fuzzed.proc.env}, cwd=ROOT,
                             capture_output=True, text=True, timeout=60)
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    assert key.startswith("dka_")
    return key


def test_api_conforms_to_openapi(fuzzed: Archive, admin_key: str) -> None:
    st = shutil.which("st", path=str(Path(sys.executable).parent)) or "st"
    seed = random.randrange(1 << 31) if EXPLORE else SEED
    command = [st, "run", f"{fuzzed.http}/api/openapi.json", "--checks", "all",
               # ignored_auth: a loopback client needs no token when no issuer is configured (the default)
               # use_after_free: after DELETE of a study, schemathesis expects 404 from QIDO-RS under it
               # (/studies/{study}/series/...), a search that rightly answers 200 and no matches (PS3.18 10.6);
               # WADO-RS of a deleted study is 404 (tests/e2e/test_delete.py)
               "--exclude-checks", "ignored_auth,positive_data_acceptance,missing_required_header,use_after_free",
               "-H", f"Authorization: Bearer {admin_key}",
               "--max-examples", "200" if EXPLORE else "5", "--seed", str(seed), "--workers", "1",
               "--max-response-time", str(REQUEST_SECONDS), "--request-timeout", "10", "--no-color"]
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "tests.security.schemathesis_hooks",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)
    output = result.stdout.replace(admin_key, "dka_[key]")
    assert result.returncode == 0, f"seed {seed}\n{output[-6000:]}\n{result.stderr[-2000:]}"
    assert "Serialization not possible" not in output and "Authentication failed" not in output, output[-3000:]


def _operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(method.upper(), path, operation) for path, operations in document["paths"].items()
            for method, operation in operations.items()]


def _url(archive: Archive, path: str, operation: dict[str, Any]) -> str:
    url = archive.http + re.sub(r"\{(\w+)\}", lambda m: PATH_VALUES[m.group(1)], path)
    required = [p for p in operation.get("parameters", []) if p["in"] == "query" and p.get("required")]
    if required:  # WADO-URI: a request that would be valid with a valid token
        values = {"requestType": "WADO", "studyUID": "1.2.3", "seriesUID": "1.2.3.4", "objectUID": "1.2.3.4.5"}
        url += "?" + "&".join(f"{p['name']}={values[p['name']]}" for p in required)
    return url


@pytest.mark.parametrize("credential", list(NOT_TOKENS))
def test_requests_without_a_valid_token_get_the_documented_401(archive: Archive, credential: str) -> None:
    """Every operation the document secures answers a request whose Authorization is not a valid
    token as its 401 says (401, ``WWW-Authenticate: Bearer realm=...``, an Error body), before any
    handler (a STOW-RS body is not read); the operations it leaves open answer as without a token."""
    status, _, body = get(f"{archive.http}/api/openapi.json")
    assert status == 200
    document = json_of(body)
    error_schema = {**document["components"]["schemas"]["Error"], "components": document["components"]}
    secured = 0
    for method, path, operation in _operations(document):
        url = _url(archive, path, operation)
        headers = {"Authorization": NOT_TOKENS[credential]}
        if method == "POST":
            headers["Content-Type"] = 'multipart/related; type="application/dicom"; boundary=x'
        status, response_headers, answer = _send(url, headers, method)
        if operation["security"] == []:  # open: the header is not looked at
            assert status == 200, (method, path, status)
            continue
        secured += 1
        documented = operation["responses"]["401"]["content"]
        assert status == 401, (method, path, status, answer[:200])
        media = response_headers["Content-Type"].split(";")[0]
        assert media in documented, (method, path, media)
        jsonschema.validate(json_of(answer), error_schema)
        assert response_headers["WWW-Authenticate"].startswith(
            'Bearer realm="dicom-archive", error="invalid_token"'), (method, path)
    assert secured >= 25, secured


def _send(url: str, headers: dict[str, str], method: str) -> tuple[int, dict[str, str], bytes]:
    body = b"--x\r\nContent-Type: application/dicom\r\n\r\n" + b"\0" * 1024 + b"\r\n--x--\r\n"
    request = urllib.request.Request(url, data=body if method == "POST" else None, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def test_the_document_names_the_security_scheme(archive: Archive) -> None:
    document = json_of(get(f"{archive.http}/api/openapi.json")[2])
    scheme = document["components"]["securitySchemes"]["bearer"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    for method, path, operation in _operations(document):
        if operation["security"]:
            assert operation["x-required-role"] in ("reader", "writer", "admin"), (method, path)
            assert {"401", "403"} <= set(operation["responses"]), (method, path)
