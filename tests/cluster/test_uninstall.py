"""``helm uninstall`` leaves nothing of the release behind (issue 11).

A release of its own in a namespace of its own (the main release stays for the other tests and
for `make cluster` users): installed with the cluster's values, Ready, then uninstalled; no pod,
Service, Job, Secret, ConfigMap, PVC, Deployment, PDB or HPA of it remains.
"""

from __future__ import annotations

from typing import Any

from tests.cluster.conftest import Cluster
from tests.e2e.harness import wait_until

RELEASE = "uninstall-check"
NAMESPACE = "dicom-archive-uninstall"
KINDS = "pods,services,jobs,secrets,configmaps,persistentvolumeclaims,deployments,replicasets," \
        "poddisruptionbudgets,horizontalpodautoscalers,networkpolicies,serviceaccounts,endpointslices"


def _left(cluster: Cluster) -> list[str]:
    items: list[dict[str, Any]] = cluster.kubectl_json("get", KINDS, namespace=NAMESPACE)["items"]
    names = []
    for item in items:
        name = item["metadata"]["name"]
        # What Kubernetes itself puts into every namespace.
        if (item["kind"], name) in {("ConfigMap", "kube-root-ca.crt"), ("ServiceAccount", "default")}:
            continue
        names.append(f"{item['kind']}/{name}")
    return names


def test_helm_uninstall_leaves_nothing(cluster: Cluster) -> None:
    cluster.kubectl("delete", "namespace", NAMESPACE, "--ignore-not-found", "--wait", "--timeout", "180s",
                    namespace="default")
    cluster.kubectl("create", "namespace", NAMESPACE, namespace="default")
    cluster.kubectl("label", "namespace", NAMESPACE, "pod-security.kubernetes.io/enforce=restricted",
                    namespace="default")
    try:
        cluster.helm("install", RELEASE, cluster.chart, "-f", cluster.values, "--set", "scp.replicaCount=1",
                     "--set", "scp.service.type=ClusterIP", "--set", "query.service.type=ClusterIP",
                     "--wait", "--timeout", "10m", namespace=NAMESPACE)
        assert _left(cluster), "the release made nothing"

        cluster.helm("uninstall", RELEASE, "--wait", "--timeout", "5m", namespace=NAMESPACE)
        # Pods go with their ReplicaSets (garbage collection, after helm returns).
        wait_until(lambda: not _left(cluster), timeout=180, interval=1.0)
        assert cluster.helm("status", RELEASE, namespace=NAMESPACE, check=False).returncode != 0
    finally:
        cluster.kubectl("delete", "namespace", NAMESPACE, "--ignore-not-found", "--wait=false", namespace="default")
