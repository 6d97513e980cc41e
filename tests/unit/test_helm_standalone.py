"""The chart's standalone trial mode renders one pod running `serve` on a claim, and nothing else.

`mode: standalone` (``ci/standalone-values.yaml``: NodePorts and a local PersistentVolume, as on
the test cluster) is linted, rendered and validated against the Kubernetes schemas like the
distributed mode (tests/unit/test_helm_chart.py, whose helpers these are). Needs helm and
kubernetes-validate: skips without them on a laptop, fails with CI=true. No cluster is used;
tests/cluster/test_standalone.py installs it on one.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from archive.settings import Settings
from tests.unit.test_helm_chart import (
    CHART, IMAGE_CMD, KUBE_VERSION, NAMESPACE, RELEASE, Doc, _container, _helm, _kinds, _one, _pod_specs, _render,
    _template, helm, invalid_manifests,
)

__all__ = ["helm"]  # the fixture, shared with the distributed mode's tests

VALUES = CHART / "ci" / "standalone-values.yaml"
NAME = f"{RELEASE}-dicom-archive"
CLAIM = f"{NAME}-data"
VOLUME = f"{NAME}-{NAMESPACE}-data"  # cluster-scoped: the namespace is in the name
DISTRIBUTED_ONLY = {"HorizontalPodAutoscaler", "PodDisruptionBudget", "Job", "Secret", "NetworkPolicy",
                    "StatefulSet", "DaemonSet", "ScaledObject", "CronJob"}


@pytest.fixture(scope="module")
def docs(helm: str) -> list[Doc]:
    return _render(helm, "-f", str(VALUES))


def _config(docs: list[Doc]) -> dict[str, str]:
    return dict(_one(docs, "ConfigMap", f"{NAME}-config")["data"])


def _pod(docs: list[Doc]) -> Doc:
    return dict(_one(docs, "Deployment", NAME)["spec"]["template"]["spec"])


def test_helm_lint_is_clean(helm: str) -> None:
    result = _helm(helm, "lint", "--strict", "--kube-version", KUBE_VERSION, str(CHART), "-f", str(VALUES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_manifest_is_valid_kubernetes(docs: list[Doc]) -> None:
    errors = invalid_manifests(docs)
    assert not errors, "\n".join(errors)


def test_one_pod_runs_serve_and_nothing_of_the_distributed_mode_is_rendered(docs: list[Doc]) -> None:
    workloads = [(d["kind"], d["metadata"]["name"]) for d, _ in _pod_specs(docs)
                 if "helm.sh/hook" not in d["metadata"].get("annotations", {})]
    assert workloads == [("Deployment", NAME)]  # exactly one pod template (the helm test pod is a hook)
    deployment = _one(docs, "Deployment", NAME)
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}  # never two pods on the SQLite files
    container = _container(deployment)
    assert container["command"] == [f"{IMAGE_CMD}/serve"] and "args" not in container
    assert not {d["kind"] for d in docs} & DISTRIBUTED_ONLY
    assert not [d for d in docs if d["kind"] != "Pod" and "helm.sh/hook" in d["metadata"].get("annotations", {})]
    assert [s["metadata"]["name"] for s in _kinds(docs, "Service")] == [NAME]
    # No credentials: no secretRef, and the embedded backends' defaults, all under the data directory.
    assert [list(source) for source in container["envFrom"]] == [["configMapRef"]]
    config = _config(docs)
    assert not {"ARCHIVE_OBJECT_STORE", "ARCHIVE_QUEUE", "ARCHIVE_CATALOG", "ARCHIVE_SEARCH"} & set(config)
    settings = Settings.from_env(config)
    data = str(settings.data_dir)
    assert data == config["ARCHIVE_DATA_DIR"] == "/var/lib/dicom-archive"
    assert settings.object_store == f"file://{data}/objects"
    assert (settings.catalog, settings.search, settings.queue) == (
        f"sqlite://{data}/catalog.db", f"sqlite://{data}/search.db", f"sqlite://{data}/queue.db")


def test_the_data_directory_is_the_claim(docs: list[Doc]) -> None:
    pod = _pod(docs)
    mounts = {m["mountPath"]: m["name"] for m in pod["containers"][0]["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes[mounts[_config(docs)["ARCHIVE_DATA_DIR"]]] == {
        "name": "data", "persistentVolumeClaim": {"claimName": CLAIM}}
    assert volumes[mounts["/tmp"]]["emptyDir"]["sizeLimit"]
    claim = _one(docs, "PersistentVolumeClaim", CLAIM)
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "2Gi"


def test_the_local_volume_is_bound_to_the_claim_alone(docs: list[Doc]) -> None:
    volume = _one(docs, "PersistentVolume", VOLUME)["spec"]
    claim = _one(docs, "PersistentVolumeClaim", CLAIM)["spec"]
    assert claim["volumeName"] == VOLUME
    assert volume["claimRef"] == {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "namespace": NAMESPACE,
                                  "name": CLAIM}
    # Static binding: the same (empty) class on both sides, or a default class would be put on the claim.
    assert volume["storageClassName"] == claim["storageClassName"] == ""
    assert volume["capacity"]["storage"] == claim["resources"]["requests"]["storage"]
    assert volume["accessModes"] == claim["accessModes"]
    assert volume["local"] == {"path": "/srv/dicom-archive"}
    assert volume["persistentVolumeReclaimPolicy"] == "Retain"  # uninstall never deletes the files
    term = volume["nodeAffinity"]["required"]["nodeSelectorTerms"]
    assert term == [{"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In", "values": ["node-1"]}]}]


def test_without_local_path_the_claim_uses_a_class_or_an_existing_claim(helm: str) -> None:
    docs = _render(helm, "--set", "mode=standalone")
    assert not _kinds(docs, "PersistentVolume")
    claim = _one(docs, "PersistentVolumeClaim", CLAIM)["spec"]
    assert "storageClassName" not in claim and "volumeName" not in claim  # the cluster's default class
    assert claim["resources"]["requests"]["storage"] == "10Gi"
    assert _one(docs, "Service", NAME)["spec"]["type"] == "ClusterIP"
    docs = _render(helm, "--set", "mode=standalone", "--set", "standalone.persistence.storageClassName=fast-ssd")
    assert _one(docs, "PersistentVolumeClaim", CLAIM)["spec"]["storageClassName"] == "fast-ssd"
    docs = _render(helm, "--set", "mode=standalone", "--set", "standalone.persistence.existingClaim=my-data")
    assert not _kinds(docs, "PersistentVolumeClaim") and not _kinds(docs, "PersistentVolume")
    volumes = {v["name"]: v for v in _pod(docs)["volumes"]}
    assert volumes["data"]["persistentVolumeClaim"] == {"claimName": "my-data"}


def test_pod_is_locked_down_and_writes_only_to_the_claim_and_tmp(docs: list[Doc]) -> None:
    pod = _pod(docs)
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["fsGroup"] == 10001  # the kubelet gives the volume to the archive's group
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    container = pod["containers"][0]
    context = container["securityContext"]
    assert context["readOnlyRootFilesystem"] is True and context["allowPrivilegeEscalation"] is False
    assert context["capabilities"]["drop"] == ["ALL"]
    writable = {m["mountPath"] for m in container["volumeMounts"] if not m.get("readOnly")}
    assert writable == {_config(docs)["ARCHIVE_DATA_DIR"], "/tmp"}


def test_probes_and_the_service_reach_the_pod(docs: list[Doc]) -> None:
    deployment = _one(docs, "Deployment", NAME)
    container = _container(deployment)
    for probe, path in (("startupProbe", "/healthz"), ("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        assert container[probe]["httpGet"] == {"path": path, "port": "http"}, probe
    assert container["lifecycle"]["preStop"]["exec"]["command"][0] == "sleep"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"dicom": 11112, "http": 8080, "metrics": 9102}
    service = _one(docs, "Service", NAME)
    assert service["spec"]["type"] == "NodePort"
    assert service["spec"]["externalTrafficPolicy"] == "Local"  # the sender's address for allow-lists
    assert {p["name"]: p["targetPort"] for p in service["spec"]["ports"]} == {"dicom": "dicom", "http": "http"}
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    # `helm test` asks the pod's Service for /readyz.
    test_pod = _one(docs, "Pod", f"{NAME}-test-readyz")
    assert f"://{NAME}:8080/readyz" in test_pod["spec"]["containers"][0]["command"][-1]


def test_dicom_tls_the_ingress_and_the_service_monitor_in_standalone_mode(helm: str) -> None:
    docs = _render(helm, "-f", str(VALUES), "--set", "dicomTls.enabled=true", "--set", "dicomTls.secretName=tls",
                   "--set", "standalone.service.tlsNodePort=32762", "--set", "query.ingress.enabled=true",
                   "--set", "metrics.serviceMonitor.enabled=true")
    labels = _one(docs, "Deployment", NAME)["spec"]["template"]["metadata"]["labels"]
    assert _one(docs, "Service", f"{NAME}-metrics")["spec"]["selector"].items() <= labels.items()
    pod = _pod(docs)
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["dicom-tls"]["secret"]["secretName"] == "tls"
    ports = {p["name"]: p for p in _one(docs, "Service", NAME)["spec"]["ports"]}
    assert ports["dicom-tls"]["nodePort"] == 32762
    backend = _one(docs, "Ingress", f"{NAME}-query")["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": NAME, "port": {"name": "http"}}
    assert not invalid_manifests(docs)


def _notes(helm: str, chart: Path, *args: str) -> str:
    """NOTES.txt as `helm install` prints it: `helm template` leaves it out and an install dry run needs a
    cluster, so a copy of the chart renders it into a ConfigMap."""
    copy = chart / "dicom-archive"
    shutil.copytree(CHART, copy)
    text = (copy / "templates" / "NOTES.txt").read_text()
    (copy / "templates" / "_notes_under_test.tpl").write_text('{{- define "notes-under-test" }}' + text + "{{- end }}")
    (copy / "templates" / "notes-under-test.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: notes-under-test}\n"
        'data: {notes: {{ include "notes-under-test" . | quote }}}\n')
    result = _helm(helm, "template", RELEASE, str(copy), "--namespace", NAMESPACE, "--kube-version", KUBE_VERSION,
                   "--show-only", "templates/notes-under-test.yaml", *args)
    assert result.returncode == 0, result.stderr
    return str(yaml.safe_load(result.stdout)["data"]["notes"])


def test_notes_say_it_is_not_for_production_and_how_to_sign_in(helm: str, tmp_path: Path) -> None:
    notes = _notes(helm, tmp_path, "-f", str(VALUES))
    assert "NOT for production" in notes
    assert f"exec deploy/{NAME} -- dicom-archive api-key create trial --role writer" in notes
    assert "--set auth.insecureOpen=true" in notes
    assert "/srv/dicom-archive on node node-1" in notes
    assert f"get svc {NAME} -o jsonpath='{{.spec.ports[?(@.name==\"dicom\")].nodePort}}'" in notes
    assert "-query" not in notes and "-scp" not in notes  # nothing of the distributed mode
    opened = _notes(helm, tmp_path / "open", "--set", "mode=standalone", "--set", "auth.insecureOpen=true")
    assert "WARNING: auth.insecureOpen" in opened and "api-key create" not in opened
    assert f"port-forward svc/{NAME} 11112 8080" in opened  # ClusterIP by default
    distributed = _notes(helm, tmp_path / "distributed")
    assert "NOT for production" not in distributed and f"svc/{NAME}-query" in distributed


@pytest.mark.parametrize(("args", "message"), [
    (["--set", "standalone.replicas=2"], "/standalone/replicas"),
    (["--set", "mode=standalone-ish"], "/mode"),
    (["--set", "standalone.persistence.localNode="], "/standalone/persistence"),
    (["--set", "standalone.persistence.localPath=data"], "/standalone/persistence/localPath"),
    (["--set", "standalone.persistence.existingClaim=mine"], "/standalone/persistence"),
    (["--set", "networkPolicy.enabled=true"], "/networkPolicy/enabled"),
    (["--set", "standalone.persistence.size=lots"], "/standalone/persistence/size"),
    (["--set", "settings.allowedNetworks={10.0.0.0/8}", "--set", "standalone.service.externalTrafficPolicy=Cluster"],
     "needs standalone.service.externalTrafficPolicy=Local"),
], ids=["two-replicas", "unknown-mode", "local-path-without-node", "relative-path", "local-path-and-existing-claim",
        "network-policy", "bad-size", "snat-allow-list"])
def test_chart_refuses_standalone_configurations_that_cannot_work(helm: str, args: list[str], message: str) -> None:
    result = _template(helm, "-f", str(VALUES), *args)
    assert result.returncode != 0, result.stdout[:500]
    assert message in result.stderr


def test_standalone_needs_none_of_the_distributed_backends(helm: str) -> None:
    # The distributed mode refuses an embedded object store; the standalone mode ignores `backends`.
    assert _template(helm, "--set", "backends.objectStore=file:///data").returncode != 0
    docs = _render(helm, "-f", str(VALUES), "--set", "backends.objectStore=", "--set", "backends.catalog=")
    assert "ARCHIVE_OBJECT_STORE" not in _config(docs)
