"""SQL injection through QIDO-RS and C-FIND-like parameters, FTS5 and OpenSearch query injection
through the search API, on both backend families: embedded (SQLite catalog, FTS5) and
distributed (PostgreSQL catalog, OpenSearch) with the real services."""

from __future__ import annotations

import urllib.parse
import uuid
from collections.abc import Iterator
from urllib.parse import quote as urlquote

import pytest

from tests.conftest import service_setting
from tests.e2e.distributed import _drop_index, _pg_connect
from tests.security.conftest import Archive, get, guarded, json_of, start_archive, store_baseline
from tests.security.hostile import XSS_NAME
from tests.factories import make_ct, new_uid

SQL = ("' OR '1'='1", "x' OR 1=1 --", "'; DROP TABLE instances; --", "\\' OR 1=1 #", "%' OR '%'='",
       "1) UNION SELECT sop_instance_uid FROM instances --", "PAT-1' /*", "\x27 OR \x271\x27=\x271")
SEARCH = ('" OR *', "NEAR(nodule script)", "PatientName:*", "* OR 1", "nodule) OR (x", '{"match_all":{}}',
          "*:*", "a AND NOT b", "\\*", "^nodule", "text:nodule", "patient_name:*", "_exists_:PatientID",
          "nodule\"*", "(", "\"", "*")


@pytest.fixture(scope="module", params=["embedded", "postgresql+opensearch"])
def backend_archive(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Archive]:
    env: dict[str, str] = {}
    name = "sec" + uuid.uuid4().hex[:10]
    if request.param != "embedded":
        catalog, search = service_setting("ARCHIVE_CATALOG"), service_setting("ARCHIVE_SEARCH")
        with _pg_connect(catalog) as conn:
            conn.execute(f'CREATE SCHEMA "{name}"')
        sep = "&" if "?" in catalog else "?"
        env = {"ARCHIVE_CATALOG": f"{catalog}{sep}options={urllib.parse.quote(f'-csearch_path={name}', safe='')}",
               "ARCHIVE_SEARCH": search, "ARCHIVE_SEARCH_INDEX": name}
    root = tmp_path_factory.mktemp(request.param.replace("+", "-"))
    archive = start_archive(root, **env)
    try:
        study = new_uid()
        store_baseline(archive, {
            "a": make_ct(study_uid=study, patient_id="PAT-1", patient_name="Doe^Jane"),
            "b": make_ct(patient_id="PAT-2", patient_name="Roe^Richard", study_date="20230101"),
            "x": make_ct(patient_id="PAT-3", patient_name=XSS_NAME),
        }, root)
        yield archive
    finally:
        archive.proc.stop()
        if env:
            _drop_index(env["ARCHIVE_SEARCH"], name)
            with _pg_connect(service_setting("ARCHIVE_CATALOG")) as conn:
                conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


@pytest.mark.parametrize("attribute", ["PatientName", "PatientID", "StudyDescription", "AccessionNumber",
                                       "StudyDate", "ModalitiesInStudy", "00100020"])
def test_sql_injection_through_qido(backend_archive: Archive, attribute: str) -> None:
    """Values are bound, never spliced: no extra match, no error beyond a 400, tables intact."""
    with guarded(backend_archive):
        for value in SQL:
            for level in ("studies", "series", "instances"):
                status, _, body = get(f"{backend_archive.http}/dicom-web/{level}?{attribute}={urlquote(value)}"
                                      "&includefield=all")
                assert status in (200, 400), (value, status, body[:200])
                assert status == 400 or json_of(body) == [], (attribute, value, body[:300])
    assert backend_archive.catalog_count() == 3


@pytest.mark.parametrize("value", SEARCH + SQL)
def test_query_injection_through_search(backend_archive: Archive, value: str) -> None:
    """Query text is plain text (README: never interpreted as query syntax): an operator, a field
    filter or match-all finds nothing it does not literally contain."""
    with guarded(backend_archive):
        status, _, body = get(f"{backend_archive.http}/api/search?q={urlquote(value)}&level=instance")
        assert status in (200, 400), (status, body[:200])
        if status == 200 and value in SEARCH:  # (the SQL strings hold real words: PAT-1 matches PAT-1)
            assert json_of(body)["total"] == 0, (value, body[:300])
        for filter_name in ("PatientName", "PatientID", "StudyInstanceUID", "ContentSequence.TextValue"):
            status, _, body = get(f"{backend_archive.http}/api/search?{filter_name}={urlquote(value)}&level=instance")
            assert status in (200, 400), (filter_name, value, status, body[:200])
            total = json_of(body).get("total", 0)
            # a bare '*' is the universal match (PS3.4 C.2.2.2.3), not an injection
            assert status == 400 or total == 0 or value.strip("\\") == "*", (filter_name, value, body[:300])
    assert backend_archive.search_count() == 3
