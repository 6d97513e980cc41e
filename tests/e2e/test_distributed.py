"""End to end on the distributed roles: `scp`, `indexer`, `query` as separate processes
on S3 (SeaweedFS), RabbitMQ, PostgreSQL and OpenSearch, with real DICOM senders."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.distributed import (
    Distributed,
    distributed,
    object_uids,
    qido_instance_uids,
    schema_tables,
)
from tests.e2e.harness import http_json, verify, wait_until
from tests.e2e.senders import echoscu, pynetdicom_store, storescu
from tests.factories import make_ct, new_uid, write_part10

pytestmark = pytest.mark.services


@pytest.fixture
def dist(tmp_path: Path, unique: str) -> Iterator[Distributed]:
    with distributed(tmp_path, unique) as env:
        yield env


@pytest.mark.dcmtk
def test_roles_on_real_backends(dist: Distributed, tmp_path: Path) -> None:
    # The catalog's migrations ran inside the test's own schema (search_path from the URL).
    tables = schema_tables(dist.base_catalog, dist.name)
    assert {"patients", "studies", "series", "instances"} <= tables, tables

    assert echoscu(dist.scp.dicom_port).returncode == 0
    study, series = new_uid(), new_uid()
    datasets = [make_ct(study_uid=study, series_uid=series, instance_number=i, seed=i, patient_id="DIST-1")
                for i in range(20)]
    files = [write_part10(ds, tmp_path / f"ct{i}.dcm") for i, ds in enumerate(datasets)]
    result = storescu(dist.scp.dicom_port, files)
    assert result.returncode == 0, result.stderr
    sent = {str(ds.SOPInstanceUID) for ds in datasets}

    wait_until(lambda: len(qido_instance_uids(dist.query.http, study)) >= 20, timeout=30)
    found = qido_instance_uids(dist.query.http, study)
    assert sorted(found) == sorted(sent)
    status, body = http_json(f"{dist.query.http}/dicom-web/studies?PatientID=DIST-1")
    assert status == 200 and len(body) == 1, body
    assert body[0]["0020000D"]["Value"] == [study]
    assert body[0]["00201208"]["Value"] == [20]  # NumberOfStudyRelatedInstances
    assert body[0]["00201206"]["Value"] == [1]  # NumberOfStudyRelatedSeries
    assert set(object_uids(dist.env)) == sent

    code, report = verify(dist.env)
    assert code == 0 and report["consistent"], report
    assert report["objects"] == report["catalog_instances"] == report["search_documents"] == 20


def test_two_stateless_scps_share_the_backends(dist: Distributed) -> None:
    second = dist.another_scp("scp2")
    study = new_uid()
    first_batch = [make_ct(study_uid=study, instance_number=i, seed=i, patient_id="DIST-2") for i in range(10)]
    second_batch = [make_ct(study_uid=study, instance_number=10 + i, seed=i, patient_id="DIST-2") for i in range(10)]
    both = make_ct(study_uid=study, instance_number=99, patient_id="DIST-2")  # sent to each receiver
    results: dict[int, list[int]] = {}

    def send(port: int) -> None:
        batch = first_batch if port == dist.scp.dicom_port else second_batch
        results[port] = pynetdicom_store(port, [*batch, both])

    threads = [threading.Thread(target=send, args=(p,)) for p in (dist.scp.dicom_port, second.dicom_port)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == {dist.scp.dicom_port: [0] * 11, second.dicom_port: [0] * 11}

    expected = sorted(str(ds.SOPInstanceUID) for ds in [*first_batch, *second_batch, both])
    wait_until(lambda: len(qido_instance_uids(dist.query.http, study)) >= 21, timeout=30)
    # Indexed once: the instance sent to both receivers appears once.
    assert sorted(qido_instance_uids(dist.query.http, study)) == expected
    assert sorted(object_uids(dist.env)) == expected
    code, report = verify(dist.env)
    assert code == 0 and report["consistent"], report
    assert report["objects"] == report["catalog_instances"] == report["search_documents"] == 21


@pytest.mark.dcmtk
def test_query_role_answers_find_move_and_get_from_postgresql_and_s3(tmp_path: Path, unique: str) -> None:
    from tests.e2e.dimse_peers import StoreSCPPeer, findscu, getscu, movescu

    peer = StoreSCPPeer(tmp_path / "peer").start()
    try:
        with distributed(tmp_path, unique, start=False) as dist:
            dist.env["ARCHIVE_PEERS"] = f"{peer.aet}@127.0.0.1:{peer.port}"
            dist.start()
            study, series = new_uid(), new_uid()
            datasets = [make_ct(study_uid=study, series_uid=series, instance_number=i, seed=i, patient_id="DQR-1")
                        for i in range(1, 4)]
            files = [write_part10(ds, tmp_path / f"{i}.dcm") for i, ds in enumerate(datasets)]
            assert storescu(dist.scp.dicom_port, files).returncode == 0
            wait_until(lambda: len(qido_instance_uids(dist.query.http, study)) == 3, timeout=30)
            uids = {str(ds.SOPInstanceUID) for ds in datasets}

            code, found, log = findscu(dist.query.dicom_port, "study", [
                "QueryRetrieveLevel=STUDY", "PatientID=DQR-1", "StudyInstanceUID", "NumberOfStudyRelatedInstances"],
                tmp_path / "find")
            assert code == 0, log
            assert [(str(r.StudyInstanceUID), int(r.NumberOfStudyRelatedInstances)) for r in found] == [(study, 3)]

            moved = movescu(dist.query.dicom_port, peer.aet, ["QueryRetrieveLevel=SERIES", f"StudyInstanceUID={study}",
                                                              f"SeriesInstanceUID={series}"])
            assert moved.returncode == 0, moved.stderr
            assert uids <= set(peer.received())

            got = getscu(dist.query.dicom_port, ["QueryRetrieveLevel=STUDY", f"StudyInstanceUID={study}"],
                         tmp_path / "got")
            assert got.returncode == 0, got.stderr
            assert {p.name.split(".", 1)[1] for p in (tmp_path / "got").iterdir()} == uids
    finally:
        peer.stop()
