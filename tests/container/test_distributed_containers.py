"""The distributed roles in containers of the image, against the real services on the host.

`migrate` runs once (as the chart's hook Job does), then `scp`, `indexer` and `query` start
together, each in its own read-only container on the host network, with the test's own bucket,
queue, index and schema (``tests.e2e.distributed``). DCMTK stores through `scp`; the instances
are found through `query` (QIDO-RS and C-FIND), and `verify` on the host finds the backends
agreeing. Run once on SeaweedFS (the services' S3) and once on MinIO (the design's object store).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import free_port, service_setting
from tests.container.docker import IMAGE_CMD, STOP_GRACE, Container, Containers, Docker, run_once
from tests.e2e.dimse_peers import findscu
from tests.e2e.distributed import Distributed, object_uids, qido_instance_uids
from tests.e2e.harness import verify, wait_until
from tests.e2e.senders import echoscu, storescu
from tests.factories import make_ct, new_uid, write_part10

pytestmark = [pytest.mark.services, pytest.mark.dcmtk]


def _use_minio(env: dict[str, str], bucket: str) -> None:
    store = service_setting("MINIO_OBJECT_STORE")  # scripts/services.sh: s3://host:port/bucket
    env["ARCHIVE_OBJECT_STORE"] = f"{store.rsplit('/', 1)[0]}/{bucket}"
    env["ARCHIVE_S3_ACCESS_KEY"] = service_setting("MINIO_ACCESS_KEY")
    env["ARCHIVE_S3_SECRET_KEY"] = service_setting("MINIO_SECRET_KEY")


@pytest.mark.parametrize("s3", ["seaweedfs", "minio"])
def test_scp_indexer_and_query_containers_store_and_find(docker: Docker, containers: Containers, tmp_path: Path,
                                                         unique: str, s3: str) -> None:
    dist = Distributed(tmp_path, unique)
    roles: list[Container] = []
    try:
        dist.configure()
        if s3 == "minio":
            _use_minio(dist.env, unique)
        env = {k: v for k, v in dist.env.items() if k != "ARCHIVE_DATA_DIR"}  # the image's, on a tmpfs

        migrated = run_once(docker, [f"{IMAGE_CMD}/migrate"], env)
        assert migrated.returncode == 0, migrated.stdout + migrated.stderr

        scp_port, query_port = free_port(), free_port()
        scp = containers("scp", [f"{IMAGE_CMD}/scp"], env, http_port=free_port(), dicom_port=scp_port)
        indexer = containers("indexer", [f"{IMAGE_CMD}/indexer"], env, http_port=free_port())
        query = containers("query", [f"{IMAGE_CMD}/query"], {**env, "ARCHIVE_QUERY_DICOM_PORT": str(query_port)},
                           http_port=free_port())
        roles = [scp, indexer, query]
        for role in roles:  # together, as pods would
            role.start(wait_ready=False)
        for role in roles:
            role.wait_ready()

        assert echoscu(scp_port).returncode == 0
        study = new_uid()
        datasets = [make_ct(study_uid=study, instance_number=i, seed=i, patient_id="CONTAINERS-1") for i in range(3)]
        files = [write_part10(ds, tmp_path / f"ct{i}.dcm") for i, ds in enumerate(datasets)]
        stored = storescu(scp_port, files)
        assert stored.returncode == 0, stored.stderr
        sent = sorted(str(ds.SOPInstanceUID) for ds in datasets)

        wait_until(lambda: sorted(qido_instance_uids(query.http, study)) == sent, timeout=60)
        code, found, stderr = findscu(query_port, "study", ["QueryRetrieveLevel=STUDY", f"StudyInstanceUID={study}",
                                                            "NumberOfStudyRelatedInstances"], tmp_path / "find")
        assert code == 0, stderr
        assert [(ds.StudyInstanceUID, int(ds.NumberOfStudyRelatedInstances)) for ds in found] == [(study, 3)]
        assert sorted(object_uids(dist.env)) == sent  # in the bucket of the S3 under test

        code_, report = verify(dist.env)
        assert code_ == 0 and report["consistent"], report

        for role in roles:  # SIGTERM drains every role
            assert role.stop() == 0, role.logs()
            assert role.stop_seconds is not None and role.stop_seconds < STOP_GRACE
    finally:
        for role in roles:
            role.remove()
        dist.teardown()
