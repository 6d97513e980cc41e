"""The Helm chart renders valid Kubernetes objects that run the roles the way the code expects.

Needs helm (``scripts/install-helm.sh``) and kubernetes-validate; skips without them on a
laptop and fails with CI=true. Rendering is local (``helm template``): no cluster is used.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from archive import ae_config
from archive.settings import SETTINGS, Settings
from tests.conftest import ROOT, missing

CHART = ROOT / "deploy" / "helm" / "dicom-archive"
FULL_VALUES = CHART / "ci" / "full-values.yaml"
DOCKERFILE = ROOT / "Dockerfile"
KUBE_VERSION = "1.30.0"  # a recent version kubernetes-validate ships schemas for
RELEASE = "rel"
NAMESPACE = "imaging"
ROLES = ("scp", "indexer", "query", "forwarder")
CREDENTIALS_DIR = "/etc/dicom-archive/forward-credentials"  # routing.credentialsSecret
IMAGE_CMD = "/opt/dicom-archive/cmd"  # where the Dockerfile copies cmd/
SETTING_NAMES = {s.env for s in SETTINGS}
SECRET_KEYS = {"ARCHIVE_S3_ACCESS_KEY", "ARCHIVE_S3_SECRET_KEY", "ARCHIVE_QUEUE", "ARCHIVE_CATALOG", "ARCHIVE_SEARCH"}
DRAIN_SECONDS = 30  # archive.runtime.DRAIN_SECONDS
CRD_GROUPS = ("monitoring.coreos.com/", "keda.sh/")  # custom resources: checked against their CRDs (test_chart_observability)

Doc = dict[str, Any]


def _find_helm() -> str | None:
    if path := shutil.which("helm"):
        return path
    candidates = [Path.home() / "go" / "bin" / "helm"]
    if go := shutil.which("go"):
        gopath = subprocess.run([go, "env", "GOPATH"], capture_output=True, text=True).stdout.strip()
        if gopath:
            candidates.insert(0, Path(gopath) / "bin" / "helm")
    return next((str(c) for c in candidates if os.access(c, os.X_OK)), None)


@pytest.fixture(scope="module")
def helm() -> str:
    path = _find_helm()
    if path is None:
        missing("helm is not installed; run scripts/install-helm.sh")
    assert path is not None
    return path


def _helm(helm: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([helm, *args], capture_output=True, text=True, timeout=60)


def _template(helm: str, *args: str) -> subprocess.CompletedProcess[str]:
    return _helm(helm, "template", RELEASE, str(CHART), "--namespace", NAMESPACE,
                 "--kube-version", KUBE_VERSION, *args)


def _render(helm: str, *args: str) -> list[Doc]:
    result = _template(helm, *args)
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


@pytest.fixture(scope="module")
def default_docs(helm: str) -> list[Doc]:
    return _render(helm)


@pytest.fixture(scope="module")
def full_docs(helm: str) -> list[Doc]:
    return _render(helm, "-f", str(FULL_VALUES))


@pytest.fixture(params=["default", "full"])
def docs(request: pytest.FixtureRequest) -> list[Doc]:
    return list(request.getfixturevalue(f"{request.param}_docs"))


def _kinds(docs: list[Doc], kind: str) -> list[Doc]:
    return [d for d in docs if d["kind"] == kind]


def _one(docs: list[Doc], kind: str, name: str) -> Doc:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} rendered"
    return found[0]


def _name(suffix: str) -> str:
    return f"{RELEASE}-dicom-archive-{suffix}"


def _is_hook(doc: Doc) -> bool:
    return "helm.sh/hook" in doc["metadata"].get("annotations", {})


def _config(docs: list[Doc]) -> dict[str, str]:
    return dict(_one(docs, "ConfigMap", _name("config"))["data"])


def _container(deployment: Doc) -> Doc:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return dict(containers[0])


def _pod_specs(docs: list[Doc]) -> Iterator[tuple[Doc, Doc]]:
    for doc in docs:
        if doc["kind"] in ("Deployment", "Job"):
            yield doc, doc["spec"]["template"]["spec"]
        elif doc["kind"] == "Pod":
            yield doc, doc["spec"]


# --- helm itself -----------------------------------------------------------------------------

@pytest.mark.parametrize("values", [[], ["-f", str(FULL_VALUES)]], ids=["default", "full"])
def test_helm_lint_is_clean(helm: str, values: list[str]) -> None:
    result = _helm(helm, "lint", "--strict", "--kube-version", KUBE_VERSION, str(CHART), *values)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_manifest_is_valid_kubernetes(docs: list[Doc]) -> None:
    errors = invalid_manifests(docs)
    assert not errors, "\n".join(errors)


def invalid_manifests(docs: list[Doc]) -> list[str]:
    """What the Kubernetes schemas (strict) refuse in rendered manifests; custom resources are skipped."""
    try:
        import kubernetes_validate
    except ImportError:
        missing("kubernetes-validate is not installed; run scripts/install-helm.sh")
    errors = []
    for doc in docs:
        if doc["apiVersion"].startswith(CRD_GROUPS):
            continue  # checked structurally below
        try:
            kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = "/".join(str(p) for p in exc.path)
            errors.append(f"{doc['kind']}/{doc['metadata']['name']} at {path}: {exc.message}")
    return errors


# --- the roles -------------------------------------------------------------------------------

def test_each_role_is_a_deployment_running_its_subcommand(docs: list[Doc]) -> None:
    deployments = {d["metadata"]["name"]: d for d in _kinds(docs, "Deployment")}
    assert set(deployments) == {_name(r) for r in ROLES}
    for role in ROLES:
        deployment = deployments[_name(role)]
        container = _container(deployment)
        assert container["command"] == [f"{IMAGE_CMD}/{role}"]  # cmd/<role>, copied there by the Dockerfile
        assert "args" not in container
        assert container["image"].endswith(":0.1.0")
        pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()


def test_probes_use_healthz_and_readyz_on_the_http_port(docs: list[Doc]) -> None:
    config = _config(docs)
    http_port, https = int(config["ARCHIVE_HTTP_PORT"]), "ARCHIVE_HTTP_TLS_CERT" in config
    for deployment in _kinds(docs, "Deployment"):
        container = _container(deployment)
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports["http"] == http_port == (8443 if https else 8080)
        scheme = {"scheme": "HTTPS"} if https else {}  # the probes' routes are open, but HTTPS is not optional
        for probe, path in (("startupProbe", "/healthz"), ("livenessProbe", "/healthz"),
                            ("readinessProbe", "/readyz")):
            assert container[probe]["httpGet"] == {"path": path, "port": "http", **scheme}, probe
        # The start-up probe covers `migrate` on start; liveness only takes over afterwards.
        startup = container["startupProbe"]
        assert startup["periodSeconds"] * startup["failureThreshold"] >= 60


def test_shutdown_leaves_time_to_drain(docs: list[Doc]) -> None:
    for deployment in _kinds(docs, "Deployment"):
        spec = deployment["spec"]["template"]["spec"]
        command = _container(deployment)["lifecycle"]["preStop"]["exec"]["command"]
        assert command[0] == "sleep"
        assert spec["terminationGracePeriodSeconds"] > int(command[1]) + DRAIN_SECONDS


def test_resources_and_scp_memory_limit(docs: list[Doc]) -> None:
    for deployment in _kinds(docs, "Deployment"):
        resources = _container(deployment)["resources"]
        assert {"cpu", "memory"} <= resources["requests"].keys()  # the HPA needs CPU requests
        assert "memory" in resources["limits"]
    scp = _container(_one(docs, "Deployment", _name("scp")))
    assert scp["resources"]["limits"]["memory"] == "512Mi"


def test_pods_are_locked_down_and_write_only_to_emptydirs(docs: list[Doc]) -> None:
    data_dir = _config(docs)["ARCHIVE_DATA_DIR"]
    for doc, spec in _pod_specs(docs):
        where = f"{doc['kind']}/{doc['metadata']['name']}"
        assert spec["securityContext"]["runAsNonRoot"] is True, where
        assert spec["automountServiceAccountToken"] is False, where
        for container in spec["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True, where
            assert context["allowPrivilegeEscalation"] is False, where
            assert context["capabilities"]["drop"] == ["ALL"], where
        if doc["kind"] == "Pod":
            continue  # the helm test pod writes nothing
        volumes = {v["name"]: v for v in spec["volumes"]}
        mounts = {m["mountPath"]: m for m in spec["containers"][0]["volumeMounts"]}
        writable = {path for path, m in mounts.items() if not m.get("readOnly")}
        assert writable == {data_dir, "/tmp"}, where
        # the rest, read-only: the HTTPS key, the DICOM TLS Secret, the AE configuration, the audit
        # collector's CA and client certificate, the forwarding rules and destinations' credentials
        assert set(mounts) - writable <= {"/etc/dicom-archive/http-tls", "/etc/dicom-archive/tls",
                                          "/etc/dicom-archive/ae", "/etc/dicom-archive/audit-tls",
                                          "/etc/dicom-archive/routing", CREDENTIALS_DIR}, where
        mounts = {path: m["name"] for path, m in mounts.items()}
        for path in (data_dir, "/tmp"):
            assert volumes[mounts[path]]["emptyDir"]["sizeLimit"], where
    # The scp spools received datasets under ARCHIVE_DATA_DIR/spool: room for large instances.
    scp = _one(docs, "Deployment", _name("scp"))["spec"]["template"]["spec"]
    data = next(v for v in scp["volumes"] if v["name"] == "data")
    assert data["emptyDir"]["sizeLimit"] == "20Gi"


# --- services, scaling, disruption -----------------------------------------------------------

def test_scp_service_exposes_the_dicom_port(default_docs: list[Doc], full_docs: list[Doc]) -> None:
    for docs in (default_docs, full_docs):
        service = _one(docs, "Service", _name("scp"))
        # the full values turn the plain port off and serve DICOM over TLS only
        assert service["spec"]["ports"] == ([
            {"name": "dicom", "port": 11112, "targetPort": "dicom", "protocol": "TCP"}] if docs is default_docs else [
            {"name": "dicom-tls", "port": 2762, "targetPort": "dicom-tls", "protocol": "TCP", "nodePort": 32762}])
        assert service["spec"]["sessionAffinity"] == "None"
        # The modality's address must reach the pod for ARCHIVE_ALLOWED_NETWORKS.
        assert service["spec"]["externalTrafficPolicy"] == "Local"
        assert service["spec"]["selector"].items() <= _pod_labels(docs, "scp").items()
        container = _container(_one(docs, "Deployment", _name("scp")))
        port = {"name": "dicom", "containerPort": 11112, "protocol": "TCP"}
        assert (port in container["ports"]) is (docs is default_docs)
        assert _config(docs)["ARCHIVE_DICOM_PORT"] == "11112"


def _mounts(docs: list[Doc], role: str) -> tuple[dict[str, Doc], dict[str, Doc]]:
    """(volume mounts, volumes) of a role's pod, by name."""
    deployment = _one(docs, "Deployment", _name(role))
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    return {m["name"]: m for m in _container(deployment)["volumeMounts"]}, volumes


def _ae_config_text(docs: list[Doc], credentials: Path) -> str:
    """The rendered AE configuration, its credential files made under ``credentials`` (the
    archive checks that every file an entry names exists)."""
    text = str(_one(docs, "ConfigMap", _name("ae-config"))["data"]["aes.yaml"])
    for name in re.findall(re.escape(CREDENTIALS_DIR) + r"/([\w.-]+)", text):
        (credentials / name).write_text("secret\n")
    return text.replace(CREDENTIALS_DIR, str(credentials))


def test_dicom_tls_port_certificate_from_a_secret_and_ae_config_from_a_configmap(
        default_docs: list[Doc], full_docs: list[Doc], tmp_path: Path) -> None:
    config = _config(full_docs)
    assert (config["ARCHIVE_DICOM_TLS_PORT"], config["ARCHIVE_QUERY_DICOM_TLS_PORT"]) == ("2762", "2762")
    assert config["ARCHIVE_DICOM_PLAIN"] == "false"
    for role in ("scp", "query"):
        mounts, volumes = _mounts(full_docs, role)
        assert volumes["dicom-tls"]["secret"]["secretName"] == "archive-dicom-tls"
        tls_dir = mounts["dicom-tls"]["mountPath"]
        assert mounts["dicom-tls"]["readOnly"] is True
        assert (config["ARCHIVE_TLS_CERT"], config["ARCHIVE_TLS_KEY"], config["ARCHIVE_TLS_CLIENT_CA"]) == (
            f"{tls_dir}/tls.crt", f"{tls_dir}/tls.key", f"{tls_dir}/ca.crt")  # a kubernetes.io/tls Secret's keys
        assert volumes["ae-config"]["configMap"]["name"] == _name("ae-config")
        assert config["ARCHIVE_AE_CONFIG"] == f"{mounts['ae-config']['mountPath']}/aes.yaml"
        container = _container(_one(full_docs, "Deployment", _name(role)))
        assert {"name": "dicom-tls", "containerPort": 2762, "protocol": "TCP"} in container["ports"]
        service = _one(full_docs, "Service", _name(role))
        assert any(p["name"] == "dicom-tls" and p["port"] == 2762 for p in service["spec"]["ports"])
        assert not any(p["name"] == "dicom" for p in service["spec"]["ports"])
    # The key stays where DICOM is served or associations are opened (the forwarder presents it to
    # TLS peers); the indexer loads the AE configuration only for the forwarding destinations' names.
    mounts, volumes = _mounts(full_docs, "indexer")
    assert "dicom-tls" not in volumes and "ae-config" in volumes
    mounts, volumes = _mounts(full_docs, "forwarder")
    assert "dicom-tls" in volumes and "ae-config" in volumes
    assert not {"dicom", "dicom-tls"} & {p["name"] for p in _container(_one(full_docs, "Deployment",
                                                                                _name("forwarder")))["ports"]}
    # The AE configuration file is the values' and parses as the archive parses it.
    entries = ae_config.parse(_ae_config_text(full_docs, tmp_path), "aes.yaml")
    assert entries["CT01"].permissions == {ae_config.Permission.STORE}
    assert entries["WORKSTATION_7"].tls is not None and entries["WORKSTATION_7"].subject == "ws7.radiology.example"
    # Defaults: plain DICOM only, no AE configuration
    config = _config(default_docs)
    assert config["ARCHIVE_DICOM_PLAIN"] == "true"
    assert not {"ARCHIVE_TLS_CERT", "ARCHIVE_TLS_KEY", "ARCHIVE_AE_CONFIG", "ARCHIVE_DICOM_TLS_PORT"} & set(config)
    assert not [d for d in default_docs if d["metadata"]["name"] == _name("ae-config")]
    assert _one(default_docs, "Service", _name("scp"))["spec"]["type"] == "LoadBalancer"
    assert _one(full_docs, "Service", _name("scp"))["spec"]["type"] == "NodePort"


def _pod_labels(docs: list[Doc], role: str) -> dict[str, str]:
    return dict(_one(docs, "Deployment", _name(role))["spec"]["template"]["metadata"]["labels"])


def test_query_service_selects_query_pods_on_http(docs: list[Doc]) -> None:
    service = _one(docs, "Service", _name("query"))
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    assert service["spec"]["selector"].items() <= _pod_labels(docs, "query").items()
    assert not service["spec"]["selector"].items() <= _pod_labels(docs, "scp").items()


def test_scp_and_indexer_autoscale_on_cpu(docs: list[Doc]) -> None:
    hpas = {h["spec"]["scaleTargetRef"]["name"]: h for h in _kinds(docs, "HorizontalPodAutoscaler")}
    keda = {s["spec"]["scaleTargetRef"]["name"] for s in _kinds(docs, "ScaledObject")}
    assert {_name("scp"), _name("indexer")} <= set(hpas) | keda and not keda & set(hpas)  # never both
    hpas.update({name: {} for name in keda})
    for name, hpa in hpas.items():
        if not hpa:  # a ScaledObject (KEDA makes the HPA)
            assert "replicas" not in _one(docs, "Deployment", name)["spec"]
            continue
        assert hpa["apiVersion"] == "autoscaling/v2"
        assert hpa["spec"]["scaleTargetRef"]["kind"] == "Deployment"
        assert hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
        assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
        # An HPA-managed Deployment leaves replicas alone, or every upgrade resets the scale.
        assert "replicas" not in _one(docs, "Deployment", name)["spec"]
    for deployment in _kinds(docs, "Deployment"):
        if deployment["metadata"]["name"] not in hpas:
            assert deployment["spec"]["replicas"] >= 1


def test_scp_has_a_disruption_budget(docs: list[Doc]) -> None:
    pdb = _one(docs, "PodDisruptionBudget", _name("scp"))
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"].items() <= _pod_labels(docs, "scp").items()
    assert not pdb["spec"]["selector"]["matchLabels"].items() <= _pod_labels(docs, "query").items()


# --- migrate hook ----------------------------------------------------------------------------

def test_migrate_job_is_a_pre_install_hook(docs: list[Doc]) -> None:
    job = _one(docs, "Job", _name("migrate"))
    annotations = job["metadata"]["annotations"]
    assert set(annotations["helm.sh/hook"].split(",")) == {"pre-install", "pre-upgrade"}
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == [f"{IMAGE_CMD}/migrate"]
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    # Pre-install hooks run before the release's own ConfigMap/Secret exist: whatever the Job
    # reads must be a hook created earlier (lower weight) or the user's existing Secret.
    job_weight = int(annotations["helm.sh/hook-weight"])
    existing = {"archive-credentials"} if _is_existing_secret(docs) else set()
    for source in container["envFrom"]:
        kind, ref = ("ConfigMap", source["configMapRef"]) if "configMapRef" in source else ("Secret", source["secretRef"])
        if ref["name"] in existing:
            continue
        dependency = _one(docs, kind, ref["name"])
        assert _is_hook(dependency), f"{kind}/{ref['name']} would not exist yet at pre-install"
        assert "pre-install" in dependency["metadata"]["annotations"]["helm.sh/hook"]
        assert int(dependency["metadata"]["annotations"]["helm.sh/hook-weight"]) < job_weight
    assert _config(docs) == _one(docs, "ConfigMap", _name("migrate"))["data"]


def _is_existing_secret(docs: list[Doc]) -> bool:
    return not any(d["kind"] == "Secret" for d in docs)


# --- settings --------------------------------------------------------------------------------

def test_every_archive_variable_in_the_chart_is_a_real_setting(docs: list[Doc]) -> None:
    sources = [p for p in CHART.rglob("*") if p.is_file()] + [DOCKERFILE]
    named = {m for p in sources for m in re.findall(r"\bARCHIVE_[A-Z0-9_]+", p.read_text())}
    rendered: set[str] = set()
    for doc in docs:
        if doc["kind"] in ("ConfigMap", "Secret"):
            rendered |= set(doc.get("data", {}))
    for _, spec in _pod_specs(docs):
        for container in spec["containers"]:
            rendered |= {e["name"] for e in container.get("env", [])}
    assert named and rendered
    unknown = {n for n in named | rendered if n.startswith("ARCHIVE_")} - SETTING_NAMES
    assert not unknown, f"not in archive.settings.SETTINGS: {sorted(unknown)}"
    # Every setting a pod needs in Kubernetes is set by the chart (the rest keep their defaults).
    assert SECRET_KEYS | {"ARCHIVE_OBJECT_STORE", "ARCHIVE_DATA_DIR", "ARCHIVE_LOG_FORMAT"} <= named


def test_rendered_environment_is_accepted_by_the_settings(default_docs: list[Doc], full_docs: list[Doc]) -> None:
    # Default values: ConfigMap + the chart's Secret, exactly as envFrom merges them.
    secret = _one(default_docs, "Secret", _name("credentials"))
    env = _config(default_docs) | {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    settings = Settings.from_env(env)
    assert settings.object_store.startswith("s3://")
    assert settings.catalog.startswith("postgresql://") and settings.queue.startswith("amqp://")
    assert settings.search.startswith("http://")
    assert settings.log_format == "json" and settings.workers == 1
    # Everything on: the user's Secret stands in for the chart's.
    env = _config(full_docs) | {
        "ARCHIVE_S3_ACCESS_KEY": "a", "ARCHIVE_S3_SECRET_KEY": "s", "ARCHIVE_QUEUE": "amqp://u:p@mq/",
        "ARCHIVE_CATALOG": "postgresql://u:p@db/archive", "ARCHIVE_SEARCH": "https://search:9200"}
    settings = Settings.from_env(env)
    assert settings.aet == "HOSPITAL_VNA"
    assert settings.allowed_aets == ("CT01", "MR02", "PACS")
    assert [str(n) for n in settings.allowed_networks] == ["10.20.0.0/16", "192.168.7.0/24"]
    assert settings.duplicate_policy.value == "reject"
    assert (settings.delivery_limit, settings.indexer_batch, settings.indexer_prefetch) == (8, 500, 1000)
    assert settings.max_pdu == 16777216 and settings.store_timeout == 90.5 and settings.query_timeout == 45
    assert settings.fsync is False
    assert (settings.study_stable_seconds, settings.forward_attempts, settings.forward_batch) == (120, 6, 20)
    assert settings.routing_rules == "/etc/dicom-archive/routing/rules.yaml"


def test_no_credentials_outside_secrets(default_docs: list[Doc], full_docs: list[Doc], helm: str) -> None:
    secret = _one(default_docs, "Secret", _name("credentials"))
    secret_values = {base64.b64decode(v).decode() for v in secret["data"].values()}
    assert set(secret["data"]) == SECRET_KEYS
    userinfo = re.compile(r"://[^/@\s]+:[^/@\s]+@")
    for docs in (default_docs, full_docs):
        for configmap in _kinds(docs, "ConfigMap"):
            data = configmap["data"]
            assert not SECRET_KEYS & set(data), configmap["metadata"]["name"]
            for key, value in data.items():
                assert not userinfo.search(value), key
                assert not any(s in value for s in secret_values), key
    # With existingSecret the chart renders no Secret and the credential values go nowhere.
    assert _is_existing_secret(full_docs)
    assert "UNUSED-" not in _template(helm, "-f", str(FULL_VALUES)).stdout
    for deployment in _kinds(full_docs, "Deployment") + _kinds(full_docs, "Job"):
        refs = [s["secretRef"]["name"] for s in _container(deployment)["envFrom"] if "secretRef" in s]
        assert refs == ["archive-credentials"]


# --- optional features -----------------------------------------------------------------------

def test_optional_features_are_off_by_default(default_docs: list[Doc]) -> None:
    kinds = {d["kind"] for d in default_docs}
    assert not kinds & {"Ingress", "ServiceMonitor", "NetworkPolicy"}
    assert {d["metadata"]["name"] for d in _kinds(default_docs, "Service")} == {_name("scp"), _name("query")}
    annotations = _one(default_docs, "Deployment", _name("indexer"))["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true" and annotations["prometheus.io/port"] == "9102"
    config = _config(default_docs)
    assert config["ARCHIVE_OIDC_ISSUER"] == "" and config["ARCHIVE_HTTP_INSECURE_OPEN"] == "false"
    assert "ARCHIVE_HTTP_TLS_CERT" not in config


def test_ingress_routes_to_the_query_service(full_docs: list[Doc]) -> None:
    ingress = _one(full_docs, "Ingress", _name("query"))
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    service = _one(full_docs, "Service", backend["name"])
    assert backend["port"]["name"] in {p["name"] for p in service["spec"]["ports"]}
    assert ingress["spec"]["tls"][0]["secretName"] == "archive-tls"


def test_service_monitor_scrapes_every_role(full_docs: list[Doc]) -> None:
    monitor = _one(full_docs, "ServiceMonitor", f"{RELEASE}-dicom-archive")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    endpoint = monitor["spec"]["endpoints"][0]
    assert endpoint["port"] == "metrics" and endpoint["path"] == "/metrics"
    services = [s for s in _kinds(full_docs, "Service")
                if monitor["spec"]["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()]
    assert [s["metadata"]["name"] for s in services] == [_name("metrics")]
    metrics = services[0]
    assert metrics["spec"]["clusterIP"] == "None"
    assert endpoint["port"] in {p["name"] for p in metrics["spec"]["ports"]}
    for role in ROLES:
        assert metrics["spec"]["selector"].items() <= _pod_labels(full_docs, role).items(), role
    job_labels = _one(full_docs, "Job", _name("migrate"))["spec"]["template"]["metadata"]["labels"]
    assert not metrics["spec"]["selector"].items() <= job_labels.items()


def test_network_policies_admit_only_the_configured_peers(full_docs: list[Doc]) -> None:
    policies = {p["metadata"]["name"]: p for p in _kinds(full_docs, "NetworkPolicy")}
    assert set(policies) == {_name(r) for r in (*ROLES, "migrate")}
    scp = policies[_name("scp")]["spec"]
    assert scp["podSelector"]["matchLabels"].items() <= _pod_labels(full_docs, "scp").items()
    dicom_rule = next(r for r in scp["ingress"] if r["ports"][0]["port"] == "dicom-tls")
    assert dicom_rule["from"] == [{"ipBlock": {"cidr": "10.20.0.0/16"}}]
    assert not [r for r in scp["ingress"] if r["ports"][0]["port"] == "dicom"]  # the plain port is off
    assert policies[_name("migrate")]["spec"]["ingress"] == []
    # the forwarder only opens connections (to its destinations); it takes probes and scrapes
    forwarder = policies[_name("forwarder")]["spec"]
    assert sorted(r["ports"][0]["port"] for r in forwarder["ingress"]) == ["http", "metrics"]
    assert all(r["from"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
               for r in forwarder["ingress"])
    for policy in policies.values():
        assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
        assert {"port": 53, "protocol": "UDP"} in policy["spec"]["egress"][0]["ports"]


# --- guard rails -----------------------------------------------------------------------------

@pytest.mark.parametrize(("args", "message"), [
    (["--set", "backends.catalog=sqlite:///archive/catalog.db"], "backends.catalog must be a postgresql://"),
    (["--set", "backends.queue=sqlite:///q.db"], "backends.queue must be an amqp://"),
    (["--set", "backends.objectStore=file:///data"], "/backends/objectStore"),
    (["--set", "settings.allowedNetworks={10.0.0.0/8}", "--set", "scp.service.externalTrafficPolicy=Cluster"],
     "needs scp.service.externalTrafficPolicy=Local"),
    (["--set", "settings.duplicatePolicy=overwrite"], "/settings/duplicatePolicy"),
    (["--set", "settings.aetitle=X"], "aetitle"),
    (["--set", "extraConfig.ARCHIVE_CATALOG=postgresql://u:p@db/a"], "holds credentials"),
    (["--set", "auth.oidc.issuer=http://sso.example.com/realms/a"], "/auth/oidc/issuer"),
    (["--set", "auth.oidc.issuer=https://sso.example.com/realms/a", "--set", "auth.oidc.audience="],
     "auth.oidc.audience is required"),
    (["--set", "auth.oidc.rolesClaim=realm_access..roles"], "/auth/oidc/rolesClaim"),
    (["--set", "dicomTls.enabled=true"], "dicomTls.secretName is required"),
    (["--set", "dicomTls.plainPort=false"], "dicomTls.plainPort=false needs dicomTls.enabled"),
    (["--set", "aeConfig.modalities.CT1=x"], "aeConfig"),
    (["--set", "routing.rules[0].name=r", "--set", "routing.rules[0].destinations={NOWHERE}"],
     'destination "NOWHERE" is not a configured peer'),
    (["--set", "routing.rules[0].name=r", "--set", "routing.rules[0].destination=PACS"], "/routing/rules/0"),
    (["--set", "forwarder.autoscaling.enabled=true", "--set", "forwarder.autoscaling.kind=keda"],
     "there are none: name destinations"),
], ids=["sqlite-catalog", "sqlite-queue", "file-store", "snat-allow-list", "bad-policy", "typo", "secret-in-config",
        "plain-http-issuer", "issuer-without-audience", "bad-claim-path",
        "tls-without-secret", "no-dicom-port", "ae-config-typo", "unknown-destination", "rule-key-typo",
        "keda-without-destinations"])
def test_chart_refuses_configurations_that_cannot_work(helm: str, args: list[str], message: str) -> None:
    result = _template(helm, *args)
    assert result.returncode != 0
    assert message in result.stderr


def test_image_and_chart_agree(default_docs: list[Doc]) -> None:
    dockerfile = DOCKERFILE.read_text()
    assert f"COPY cmd {IMAGE_CMD}" in dockerfile  # the containers' commands are there
    assert "ENTRYPOINT" not in dockerfile  # the chart's command is the whole command line
    user = re.search(r"^USER\s+(\d+)", dockerfile, re.M)
    assert user, "the image runs as a numeric non-root user"
    spec = _one(default_docs, "Deployment", _name("scp"))["spec"]["template"]["spec"]
    assert int(user.group(1)) == spec["securityContext"]["runAsUser"] != 0
    data_dir = re.search(r"ARCHIVE_DATA_DIR=(\S+)", dockerfile)
    assert data_dir and data_dir.group(1) == _config(default_docs)["ARCHIVE_DATA_DIR"]


def test_audit_trail_goes_to_the_data_volume_and_the_collector_with_its_ca(default_docs: list[Doc],
                                                                          full_docs: list[Doc]) -> None:
    config = next(d for d in default_docs if d["kind"] == "ConfigMap")["data"]
    assert config["ARCHIVE_AUDIT_FILE"] == f"{config['ARCHIVE_DATA_DIR']}/audit/audit.log"
    assert config["ARCHIVE_AUDIT_SYSLOG"] == "" and "ARCHIVE_AUDIT_TLS_CA" not in config
    full = next(d for d in full_docs if d["kind"] == "ConfigMap")["data"]
    assert full["ARCHIVE_AUDIT_SYSLOG"] == "tls://atna.security.svc:6514"
    assert full["ARCHIVE_AUDIT_SOURCE_ID"] == "VNA-1"
    for deployment in (d for d in full_docs if d["kind"] in ("Deployment", "Job")):
        pod = deployment["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes["audit-tls"]["secret"]["secretName"] == "archive-audit-tls"
        mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "audit-tls")
        assert mount["readOnly"] and full["ARCHIVE_AUDIT_TLS_CA"] == f"{mount['mountPath']}/ca.crt"
        assert full["ARCHIVE_AUDIT_TLS_KEY"].startswith(mount["mountPath"])


# --- HTTP sign-in, HTTPS, the metrics port ------------------------------------------------------

def test_sign_in_https_and_the_metrics_port_reach_the_settings(full_docs: list[Doc]) -> None:
    config = _config(full_docs)
    env = config | {"ARCHIVE_S3_ACCESS_KEY": "a", "ARCHIVE_S3_SECRET_KEY": "s", "ARCHIVE_QUEUE": "amqp://u:p@mq/",
                    "ARCHIVE_CATALOG": "postgresql://u:p@db/archive", "ARCHIVE_SEARCH": "https://search:9200"}
    settings = Settings.from_env(env)
    assert settings.oidc_issuer == "https://sso.example.com/realms/archive"
    assert (settings.oidc_audience, settings.oidc_roles_claim) == ("dicom-archive", "roles")
    assert settings.metrics_port == 9464 and settings.http_port == 8443
    tls_dir = str(Path(settings.http_tls_cert).parent)
    assert settings.http_tls_key == tls_dir + "/tls.key"
    for role in ROLES:
        deployment = _one(full_docs, "Deployment", _name(role))
        spec = deployment["spec"]["template"]["spec"]
        container = _container(deployment)
        assert {"name": "metrics", "containerPort": 9464, "protocol": "TCP"} in container["ports"]
        mount = next(m for m in container["volumeMounts"] if m["mountPath"] == tls_dir)
        assert mount["readOnly"] is True
        volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
        assert volume["secret"]["secretName"] == "archive-http-tls"  # the key comes from a Secret
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/port"] == "9464"
    job = _one(full_docs, "Job", _name("migrate"))  # migrate serves no HTTP: no HTTPS key in it
    assert all(v.get("secret", {}).get("secretName") != "archive-http-tls" for v in job["spec"]["template"]["spec"]["volumes"])
    metrics_service = _one(full_docs, "Service", _name("metrics"))
    assert metrics_service["spec"]["ports"] == [{"name": "metrics", "port": 9464, "targetPort": "metrics",
                                                 "protocol": "TCP"}]
    query_service = _one(full_docs, "Service", _name("query"))
    assert "metrics" not in {p.get("targetPort") for p in query_service["spec"]["ports"]}  # not via the Ingress
    for policy in _kinds(full_docs, "NetworkPolicy"):
        if policy["metadata"]["name"] != _name("migrate"):
            rule = next(r for r in policy["spec"]["ingress"] if r["ports"][0]["port"] == "metrics")
            assert rule["from"] == [{"namespaceSelector": {"matchLabels": {
                "kubernetes.io/metadata.name": "monitoring"}}}]


# --- forwarding ----------------------------------------------------------------------------------

def _settings(docs: list[Doc], **env: str) -> Settings:
    return Settings.from_env(_config(docs) | {
        "ARCHIVE_S3_ACCESS_KEY": "a", "ARCHIVE_S3_SECRET_KEY": "s", "ARCHIVE_QUEUE": "amqp://u:p@mq/",
        "ARCHIVE_CATALOG": "postgresql://u:p@db/archive", "ARCHIVE_SEARCH": "https://search:9200"} | env)


def _volume_mounted(docs: list[Doc], role: str, volume: str) -> tuple[Doc, Doc] | None:
    """(volume, its mount) in a role's pod, or None."""
    mounts, volumes = _mounts(docs, role)
    if volume not in volumes:
        assert volume not in mounts, role
        return None
    assert mounts[volume]["readOnly"] is True, role
    return volumes[volume], mounts[volume]


def test_forwarder_reads_the_rules_from_a_configmap(default_docs: list[Doc], full_docs: list[Doc],
                                                    tmp_path: Path) -> None:
    from archive.core.routing import parse
    from archive.runtime import destinations

    path = _config(full_docs)["ARCHIVE_ROUTING_RULES"]
    for role in ("indexer", "forwarder", "query"):  # evaluate, consume, check manual sends
        found = _volume_mounted(full_docs, role, "routing")
        assert found is not None, role
        volume, mount = found
        assert volume["configMap"]["name"] == _name("routing")
        assert "subPath" not in mount  # a subPath mount would never see the file change
        assert path == f"{mount['mountPath']}/rules.yaml"
        annotations = _one(full_docs, "Deployment", _name(role))["spec"]["template"]["metadata"]["annotations"]
        assert annotations["checksum/routing"]
    assert _volume_mounted(full_docs, "scp", "routing") is None
    # The file is the values' rules and the archive accepts it, its destinations checked against
    # the peers the pods configure (settings.peers and the AE configuration), as at start.
    aes = tmp_path / "aes.yaml"
    aes.write_text(_ae_config_text(full_docs, tmp_path))
    settings = _settings(full_docs, ARCHIVE_AE_CONFIG=str(aes))
    rules = parse(_one(full_docs, "ConfigMap", _name("routing"))["data"]["rules.yaml"], path, destinations(settings))
    assert [(r.name, r.trigger, r.destinations) for r in rules.rules] == [
        ("ct-to-pacs", "instance", ("PACS", "CLOUD")),
        ("mr-when-stable", "stable", ("RESEARCH", "https://viewer.example/dicom-web"))]
    # Without rules: no file, no setting, no volume.
    assert "ARCHIVE_ROUTING_RULES" not in _config(default_docs)
    assert not [d for d in default_docs if d["metadata"]["name"] == _name("routing")]
    for role in ROLES:
        assert _volume_mounted(default_docs, role, "routing") is None


def test_every_pod_that_loads_the_ae_config_mounts_it_and_the_credentials(full_docs: list[Doc],
                                                                          default_docs: list[Doc]) -> None:
    """The archive checks the files AE entries name wherever it loads the configuration: every such
    pod has the configuration and the credentials Secret at the paths the entries name."""
    text = _one(full_docs, "ConfigMap", _name("ae-config"))["data"]["aes.yaml"]
    named = re.findall(r"(?:token_file|password_file): (\S+)", text)
    assert len(named) == 2
    for role in ROLES:
        config = _volume_mounted(full_docs, role, "ae-config")
        credentials = _volume_mounted(full_docs, role, "forward-credentials")
        assert config is not None and credentials is not None, role
        assert config[0]["configMap"]["name"] == _name("ae-config")
        assert credentials[0]["secret"]["secretName"] == "archive-forward-credentials"
        assert all(p.startswith(credentials[1]["mountPath"] + "/") for p in named), role
    job = _one(full_docs, "Job", _name("migrate"))["spec"]["template"]["spec"]
    assert not {"ae-config", "forward-credentials", "routing"} & {v["name"] for v in job["volumes"]}
    for role in ROLES:  # nothing of it by default
        assert _volume_mounted(default_docs, role, "forward-credentials") is None


def test_standalone_serve_gets_the_rules_and_the_credentials(helm: str) -> None:
    docs = _render(helm, "-f", str(CHART / "ci" / "standalone-values.yaml"),
                   "--set", "settings.peers={PACS@pacs.example:104}",
                   "--set", "routing.rules[0].name=all", "--set", "routing.rules[0].destinations={PACS}",
                   "--set", "routing.credentialsSecret=forward-creds")
    pod = _one(docs, "Deployment", f"{RELEASE}-dicom-archive")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["name"]: m for m in pod["containers"][0]["volumeMounts"]}
    assert volumes["routing"]["configMap"]["name"] == _name("routing")
    assert volumes["forward-credentials"]["secret"]["secretName"] == "forward-creds"
    assert mounts["forward-credentials"]["mountPath"] == CREDENTIALS_DIR and mounts["forward-credentials"]["readOnly"]
    config = _one(docs, "ConfigMap", f"{RELEASE}-dicom-archive-config")["data"]
    assert config["ARCHIVE_ROUTING_RULES"] == mounts["routing"]["mountPath"] + "/rules.yaml"
    assert not _kinds(docs, "ScaledObject")  # serve runs its forwarder as a child


def test_notes_name_the_forward_queues_and_the_ledger(helm: str, tmp_path: Path) -> None:
    from tests.unit.test_helm_standalone import _notes

    notes = _notes(helm, tmp_path / "full", "-f", str(FULL_VALUES))
    assert "Forwarding: 2 rule(s)" in notes and "archive.index.forward.PACS, " in notes
    assert f"exec deploy/{_name('forwarder')} -- dicom-archive forwards" in notes
    assert "Forwarding" not in _notes(helm, tmp_path / "default")
