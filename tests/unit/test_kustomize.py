"""The plain manifests of deploy/k8s (kustomize base, components, example overlay) render, are
valid Kubernetes (strict; the custom resources against their CRDs), keep the pods locked down and
the credentials in Secrets, and say what the Helm chart says (a drift check against its rendering).

Needs kustomize and the CRDs (``scripts/install-kube-tools.sh``) and helm; skips without them on a
laptop and fails with CI=true.
"""

from __future__ import annotations

import base64
import copy
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from archive.settings import Settings
from tests.conftest import ROOT, missing
from tests.unit.test_chart_observability import CACHE, DASHBOARD, RULES, _validate, crds  # noqa: F401 - fixture
from tests.unit.test_helm_chart import (  # noqa: F401 - fixture
    CHART,
    CRD_GROUPS,
    KUBE_VERSION,
    SECRET_KEYS,
    Doc,
    _helm,
    _kinds,
    _pod_specs,
    helm,
)

K8S = ROOT / "deploy" / "k8s"
DATA_DIR = "/var/lib/dicom-archive"
HASHED = re.compile(r"^(dicom-archive-(?:config|credentials|routing))-[a-z0-9]{10}$")


@pytest.fixture(scope="module")
def kustomize() -> str:
    path = shutil.which("kustomize") or str(CACHE / "bin" / "kustomize")
    if not os.access(path, os.X_OK):
        missing("kustomize is not installed; run scripts/install-kube-tools.sh")
    return path


def _build(kustomize: str, directory: Path) -> list[Doc]:
    result = subprocess.run([kustomize, "build", str(directory)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


@pytest.fixture(scope="module")
def base_docs(kustomize: str) -> list[Doc]:
    return _build(kustomize, K8S / "base")


@pytest.fixture(scope="module")
def overlay_docs(kustomize: str) -> list[Doc]:
    return _build(kustomize, K8S / "overlays" / "example")


@pytest.fixture(scope="module")
def everything_docs(kustomize: str, tmp_path_factory: pytest.TempPathFactory) -> list[Doc]:
    """The base with both components and nothing of the example's own: what the chart renders."""
    directory = tmp_path_factory.mktemp("kustomize")
    (directory / "credentials.env").write_text("".join(f"{k}=placeholder\n" for k in sorted(SECRET_KEYS)))
    (directory / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": [os.path.relpath(K8S / "base", directory)],
        "components": [os.path.relpath(K8S / "components" / c, directory) for c in ("keda", "monitoring")],
        "secretGenerator": [{"name": "dicom-archive-credentials", "envs": ["credentials.env"]}],
    }))
    return _build(kustomize, directory)


@pytest.fixture(params=["base", "overlay", "everything"])
def docs(request: pytest.FixtureRequest) -> list[Doc]:
    return list(request.getfixturevalue(f"{request.param}_docs"))


def _named(docs: list[Doc], kind: str, name: str) -> Doc:
    found = [d for d in docs if d["kind"] == kind and HASHED.sub(r"\1", d["metadata"]["name"]) == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)}"
    return found[0]


def test_every_manifest_is_valid(docs: list[Doc], crds: dict[tuple[str, str], Doc]) -> None:
    import kubernetes_validate

    errors = []
    for doc in docs:
        if doc["apiVersion"].startswith(CRD_GROUPS):
            errors += _validate(doc, crds)
            continue
        try:
            kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            errors.append(f"{doc['kind']}/{doc['metadata']['name']} at {'/'.join(map(str, exc.path))}: {exc.message}")
    assert not errors, "\n".join(errors)


def test_pods_meet_the_restricted_pod_security_standard(docs: list[Doc]) -> None:
    pods = list(_pod_specs(docs))
    assert {d["metadata"]["name"] for d, _ in pods} == {
        f"dicom-archive-{r}" for r in ("scp", "indexer", "query", "forwarder", "migrate")}
    for doc, spec in pods:
        where = f"{doc['kind']}/{doc['metadata']['name']}"
        assert spec["securityContext"]["runAsNonRoot"] is True, where
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, where
        assert spec["automountServiceAccountToken"] is False, where
        assert not spec.get("hostNetwork") and not spec.get("hostPID"), where
        for container in spec["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True, where
            assert context["allowPrivilegeEscalation"] is False, where
            assert context["capabilities"]["drop"] == ["ALL"], where
            writable = {m["name"] for m in container["volumeMounts"] if not m.get("readOnly")}
            assert {m["mountPath"] for m in container["volumeMounts"] if m["name"] in writable} == {DATA_DIR, "/tmp"}, where
        # written: emptyDirs of a bounded size; the rest (the forwarding rules) read-only ConfigMaps
        for volume in spec["volumes"]:
            assert (volume["emptyDir"]["sizeLimit"] if volume["name"] in writable else volume["configMap"]), where


def test_no_credentials_outside_secrets(docs: list[Doc]) -> None:
    userinfo = re.compile(r"://[^/@\s]+:[^/@\s]+@")
    secrets = _kinds(docs, "Secret")
    values = {base64.b64decode(v).decode() for s in secrets for v in s["data"].values()}
    for doc in docs:
        if doc["kind"] == "Secret":
            assert set(doc["data"]) == SECRET_KEYS
            continue
        text = json.dumps(doc)
        assert not userinfo.search(text), doc["metadata"]["name"]
        assert not any(v in text for v in values if len(v) > 6), doc["metadata"]["name"]
        if doc["kind"] == "ConfigMap":
            assert not SECRET_KEYS & set(doc["data"])
    # The pods, the Job and KEDA read the one Secret the overlay made.
    names = {s["metadata"]["name"] for s in secrets}
    for _, spec in _pod_specs(docs):
        refs = {e["secretRef"]["name"] for e in spec["containers"][0]["envFrom"] if "secretRef" in e}
        assert refs == {"dicom-archive-credentials"} if not secrets else refs == names
    for auth in _kinds(docs, "TriggerAuthentication"):
        assert {r["name"] for r in auth["spec"]["secretTargetRef"]} == names


def test_overlay_settings_are_accepted_by_the_settings(overlay_docs: list[Doc]) -> None:
    config = _named(overlay_docs, "ConfigMap", "dicom-archive-config")["data"]
    secret = _named(overlay_docs, "Secret", "dicom-archive-credentials")["data"]
    settings = Settings.from_env(config | {k: base64.b64decode(v).decode() for k, v in secret.items()})
    assert settings.aet == "VNA" and settings.allowed_aets == ("CT01", "MR02")
    assert settings.object_store == "s3://minio.storage:9000/dicom-archive"
    assert all(d["metadata"].get("namespace") == "imaging" for d in overlay_docs)
    images = {c["image"] for _, spec in _pod_specs(overlay_docs) for c in spec["containers"]}
    assert images == {"registry.example.com/dicom-archive:0.1.0"}
    # KEDA instead of the indexer's HPA, never both.
    assert [h["metadata"]["name"] for h in _kinds(overlay_docs, "HorizontalPodAutoscaler")] == ["dicom-archive-scp"]
    assert _named(overlay_docs, "ScaledObject", "dicom-archive-indexer")


def test_overlay_forwards_by_its_rules_and_scales_the_forwarder_on_their_queues(overlay_docs: list[Doc]) -> None:
    """components/routing mounts the overlay's rules where ARCHIVE_ROUTING_RULES says; the rules
    name configured peers only (as the archive checks at start); forwarder-keda.yaml has one trigger
    per queue the forwarder consumes, named as the archive names them."""
    from archive.compose import forward_queue
    from archive.core.routing import parse
    from archive.runtime import destinations

    config = _named(overlay_docs, "ConfigMap", "dicom-archive-config")["data"]
    secret = _named(overlay_docs, "Secret", "dicom-archive-credentials")["data"]
    settings = Settings.from_env(config | {k: base64.b64decode(v).decode() for k, v in secret.items()})
    routing = _named(overlay_docs, "ConfigMap", "dicom-archive-routing")
    rules = parse(routing["data"]["rules.yaml"], settings.routing_rules, destinations(settings))
    assert rules.destinations == ("PACS",)
    for _, spec in _pod_specs(overlay_docs):
        container = spec["containers"][0]
        mounts = {m["name"]: m for m in container["volumeMounts"]}
        if container["name"] not in ("indexer", "forwarder", "query"):
            assert "routing" not in mounts, container["name"]
            continue
        assert mounts["routing"]["readOnly"] and "subPath" not in mounts["routing"]
        assert settings.routing_rules == mounts["routing"]["mountPath"] + "/rules.yaml"
        volume = next(v for v in spec["volumes"] if v["name"] == "routing")
        assert volume["configMap"]["name"] == routing["metadata"]["name"]  # the generated (hashed) name
    scaled = _named(overlay_docs, "ScaledObject", "dicom-archive-forwarder")
    names = dict.fromkeys(destinations(settings) + list(rules.destinations))
    assert [t["metadata"]["queueName"] for t in scaled["spec"]["triggers"]] == [
        forward_queue(settings, n).queue for n in names]  # type: ignore[attr-defined]
    assert {t["authenticationRef"]["name"] for t in scaled["spec"]["triggers"]} == {
        a["metadata"]["name"] for a in _kinds(overlay_docs, "TriggerAuthentication")}
    forwarder = _named(overlay_docs, "Deployment", "dicom-archive-forwarder")
    assert "replicas" not in forwarder["spec"]  # KEDA's
    assert not [h for h in _kinds(overlay_docs, "HorizontalPodAutoscaler")
                if h["spec"]["scaleTargetRef"]["name"] == "dicom-archive-forwarder"]


def test_copies_of_the_chart_files_are_equal() -> None:
    monitoring = K8S / "components" / "monitoring"
    assert json.loads((monitoring / "dicom-archive.json").read_text()) == json.loads(DASHBOARD.read_text())
    rule = yaml.safe_load((monitoring / "prometheusrule.yaml").read_text())
    assert rule["spec"] == {"groups": yaml.safe_load(RULES.read_text())["groups"]}


# --- drift: the same objects as the chart --------------------------------------------------------

def _normalized(doc: Doc) -> Doc:
    """What must agree between chart and kustomize: spec or data, without Helm's bookkeeping."""
    doc = copy.deepcopy(doc)
    body = doc.get("spec", doc.get("data"))
    template = body.get("template") if isinstance(body, dict) else None
    if template:
        annotations = {k: v for k, v in template["metadata"].pop("annotations", {}).items()
                       if not k.startswith("checksum/")}  # the chart's way to roll pods on a change
        if annotations:
            template["metadata"]["annotations"] = annotations
        for container in template["spec"]["containers"]:
            for source in container.get("envFrom", []):
                for ref in ("configMapRef", "secretRef"):
                    if ref in source:
                        source[ref]["name"] = ref  # names differ by design (hash suffix, hook copies)
    if doc["kind"] == "ServiceMonitor":
        body.pop("namespaceSelector", None)  # the chart names its release's namespace
    if doc["kind"] == "TriggerAuthentication":
        for ref in body["secretTargetRef"]:
            ref["name"] = "secret"
    return {"kind": doc["kind"], "name": HASHED.sub(r"\1", doc["metadata"]["name"]), "body": body}


def test_kustomize_says_what_the_chart_says(helm: str, everything_docs: list[Doc], tmp_path: Path) -> None:
    result = _helm(helm, "template", "dicom-archive", str(CHART), "--namespace", "imaging", "--kube-version",
                   KUBE_VERSION, "--set", "metrics.serviceMonitor.enabled=true", "--set",
                   "metrics.prometheusRule.enabled=true", "--set", "metrics.grafanaDashboard.enabled=true",
                   "--set", "indexer.autoscaling.kind=keda", "--set", "tests.enabled=false")
    assert result.returncode == 0, result.stderr
    chart = {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(result.stdout) if d}
    # the chart's own: its Secret of placeholder values, the migrate hook's copies of config and Secret
    del chart[("Secret", "dicom-archive-credentials")]
    del chart[("Secret", "dicom-archive-migrate")]
    del chart[("ConfigMap", "dicom-archive-migrate")]
    ours = {(n["kind"], n["name"]): n for n in map(_normalized, everything_docs) if n["kind"] != "Secret"}
    theirs = {key: _normalized(doc) for key, doc in chart.items()}
    assert set(ours) == set(theirs)
    differ: dict[Any, Any] = {}
    for key, body in theirs.items():
        if body != ours[key]:
            differ[key] = (body["body"], ours[key]["body"])
    assert not differ, yaml.safe_dump({f"{k[0]}/{k[1]}": {"chart": v[0], "kustomize": v[1]}
                                       for k, v in differ.items()}, width=150)[:6000]
