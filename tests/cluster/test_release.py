"""The chart on a real one-node Kubernetes (``make cluster``): the release is up, ``helm test``
passes, and instances stored through the scp Service are found through the query Service.

Issue 11: scp, indexer and query pods Ready, the migrate hook Job succeeded; DCMTK storescu
through the scp NodePort, QIDO-RS and C-FIND through the query Service's NodePorts.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.cluster.conftest import Cluster
from tests.cluster.dimse import findscu_study, storescu
from tests.e2e.harness import wait_until
from tests.factories import make_ct, new_uid, write_part10

EXPECTED_REPLICAS = {"scp": 2, "indexer": 1, "query": 1}


def test_pods_ready_and_migrate_hook_succeeded(cluster: Cluster) -> None:
    pods = cluster.kubectl_json("get", "pods", "-l", f"app.kubernetes.io/instance={cluster.release}")["items"]
    ready: dict[str, int] = {}
    for pod in pods:
        component = pod["metadata"]["labels"].get("app.kubernetes.io/component", "")
        conditions = {c["type"]: c["status"] for c in pod["status"].get("conditions", [])}
        terminating = pod["metadata"].get("deletionTimestamp") is not None  # an old pod after an upgrade
        if pod["status"].get("phase") == "Running" and conditions.get("Ready") == "True" and not terminating:
            ready[component] = ready.get(component, 0) + 1
    assert {k: ready.get(k, 0) for k in EXPECTED_REPLICAS} == EXPECTED_REPLICAS, ready
    # The hook Job is deleted once it succeeded (hook-delete-policy); helm records how it ended.
    status = cluster.helm_status()
    hooks = {(h["kind"], h["name"]): h.get("last_run", {}).get("phase") for h in status.get("hooks", [])}
    assert hooks.get(("Job", f"{cluster.fullname}-migrate")) == "Succeeded", hooks
    assert status["info"]["status"] == "deployed"


def test_pods_run_restricted(cluster: Cluster) -> None:
    """The namespace enforces the restricted Pod Security Standard and the pods' root is read-only."""
    namespace = cluster.kubectl_json("get", "namespace", cluster.namespace, namespace="default")
    assert namespace["metadata"]["labels"].get("pod-security.kubernetes.io/enforce") == "restricted"
    pods = cluster.kubectl_json("get", "pods", "-l", f"app.kubernetes.io/instance={cluster.release}")["items"]
    assert pods
    for pod in pods:
        for container in pod["spec"]["containers"]:
            assert container["securityContext"]["readOnlyRootFilesystem"] is True


def test_helm_test_passes(cluster: Cluster) -> None:
    result = cluster.helm("test", cluster.release, "--timeout", "5m", check=False)
    if result.returncode != 0:  # the test pod stays when it failed (hook-delete-policy: hook-succeeded)
        logs = cluster.kubectl("logs", f"{cluster.fullname}-test-readyz", check=False)
        raise AssertionError(f"helm test failed: {result.stdout}{result.stderr}\npod logs: {logs.stdout}{logs.stderr}")
    assert "Phase:          Succeeded" in result.stdout, result.stdout


def test_store_through_scp_service_and_find_through_query_service(cluster: Cluster, tmp_path: Path) -> None:
    study, series = new_uid(), new_uid()
    datasets = [make_ct(study_uid=study, series_uid=series, instance_number=i, seed=i, patient_id="CLUSTER-1")
                for i in range(5)]
    files = [write_part10(ds, tmp_path / f"ct{i}.dcm") for i, ds in enumerate(datasets)]
    stored = storescu(cluster, files)
    assert stored.returncode == 0, stored.stderr
    sent = sorted(str(ds.SOPInstanceUID) for ds in datasets)

    # Indexing is asynchronous (queue -> indexer): poll QIDO-RS until every instance is there.
    wait_until(lambda: sorted(cluster.qido_instance_uids(study)) == sent, timeout=120, interval=0.5)
    code, found, stderr = findscu_study(cluster, ["QueryRetrieveLevel=STUDY", f"StudyInstanceUID={study}",
                                                  "NumberOfStudyRelatedInstances"], tmp_path / "find")
    assert code == 0, stderr
    assert [(ds.StudyInstanceUID, int(ds.NumberOfStudyRelatedInstances)) for ds in found] == [(study, 5)]
    code, found, stderr = findscu_study(cluster, ["QueryRetrieveLevel=IMAGE", f"StudyInstanceUID={study}",
                                                  f"SeriesInstanceUID={series}",
                                                  "SOPInstanceUID"], tmp_path / "find-images")
    assert code == 0, stderr
    assert sorted(str(ds.SOPInstanceUID) for ds in found) == sent


def test_http_api_needs_the_key(cluster: Cluster) -> None:
    """Without an OpenID issuer the pods answer API keys only: a request without one (not from the
    pod's loopback) gets 403 (README, "HTTP sign-in"); with the writer's key, QIDO-RS answers."""
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{cluster.http}/dicom-web/studies?limit=1", timeout=10)
    assert refused.value.code == 403
    status, _ = cluster.http_json("/dicom-web/studies?limit=1")
    assert status in (200, 204)
