"""The chart's observability and autoscaling objects: the Grafana dashboard ConfigMap, the
PrometheusRule, KEDA's ScaledObject and TriggerAuthentication.

The custom resources are validated against the real CRDs of the versions we support (KEDA v2.18.3,
prometheus-operator v0.85.0), which ``scripts/install-kube-tools.sh`` takes from their Go modules
into ~/.cache/dicom-archive/crds; strictly: a field the CRD does not declare is an error (the API
server would prune it silently). Skips without helm or the CRDs on a laptop; fails with CI=true.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from archive import metrics
from tests.conftest import missing
from tests.unit.test_helm_chart import (  # noqa: F401 - fixtures
    CHART,
    FULL_VALUES,
    RELEASE,
    SECRET_KEYS,
    Doc,
    _config,
    _kinds,
    _name,
    _ae_config_text,
    _one,
    _render,
    _settings,
    default_docs,
    full_docs,
    helm,
)

CACHE = Path(os.environ.get("ARCHIVE_CACHE", Path.home() / ".cache" / "dicom-archive"))
CRD_DIRS = (CACHE / "crds" / "keda-v2.18.3", CACHE / "crds" / "prometheus-operator-v0.85.0")
DASHBOARD = CHART / "dashboards" / "dicom-archive.json"
RULES = CHART / "alerts" / "dicom-archive.rules.yaml"


class _CrdLoader(yaml.SafeLoader):
    """PyYAML reads a bare ``=`` (an enum value in the CRDs) as YAML 1.1's value tag: a string here."""


_CrdLoader.add_constructor("tag:yaml.org,2002:value", lambda loader, node: loader.construct_scalar(node))


def _crd_schemas() -> dict[tuple[str, str], Doc]:
    """(apiVersion, kind) -> openAPIV3Schema of every served version of the cached CRDs."""
    schemas: dict[tuple[str, str], Doc] = {}
    for directory in CRD_DIRS:
        files = sorted(directory.glob("*.yaml"))
        if not files:
            missing(f"no CRDs in {directory}; run scripts/install-kube-tools.sh")
        for path in files:
            for crd in yaml.load_all(path.read_text(), Loader=_CrdLoader):  # noqa: S506 - a safe loader
                if not crd or crd.get("kind") != "CustomResourceDefinition":
                    continue
                group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
                for version in crd["spec"]["versions"]:
                    if version.get("served", True):
                        schemas[(f"{group}/{version['name']}", kind)] = version["schema"]["openAPIV3Schema"]
    return schemas


def _strict(schema: Any) -> Any:
    """The schema with additionalProperties false wherever it lists properties and does not
    preserve unknown fields: as the API server's pruning, but loud."""
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _strict(v) for k, v in schema.items()}
    if "properties" in out and "additionalProperties" not in out and not out.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


@pytest.fixture(scope="module")
def crds() -> dict[tuple[str, str], Doc]:
    return _crd_schemas()


def _validate(doc: Doc, crds: dict[tuple[str, str], Doc]) -> list[str]:
    import jsonschema

    key = (doc["apiVersion"], doc["kind"])
    assert key in crds, f"no CRD serves {key}"
    validator = jsonschema.Draft7Validator(_strict(crds[key]))
    body = {k: v for k, v in doc.items() if k != "metadata"}  # metadata is ObjectMeta, not in the CRD
    return [f"{doc['kind']}/{doc['metadata']['name']} at {'/'.join(map(str, e.path))}: {e.message}"
            for e in validator.iter_errors(body)]


def test_custom_resources_match_their_crds(full_docs: list[Doc], crds: dict[tuple[str, str], Doc]) -> None:
    custom = [d for d in full_docs if d["apiVersion"].startswith(("keda.sh/", "monitoring.coreos.com/"))]
    assert {d["kind"] for d in custom} == {"ScaledObject", "TriggerAuthentication", "PrometheusRule", "ServiceMonitor"}
    errors = [e for doc in custom for e in _validate(doc, crds)]
    assert not errors, "\n".join(errors)


def test_the_crd_check_catches_a_wrong_field(full_docs: list[Doc], crds: dict[tuple[str, str], Doc]) -> None:
    scaled = json.loads(json.dumps(_one(full_docs, "ScaledObject", _name("indexer"))))
    scaled["spec"]["triggers"][0]["authRef"] = scaled["spec"]["triggers"][0].pop("authenticationRef")
    scaled["spec"]["minReplicaCount"] = "one"
    errors = _validate(scaled, crds)
    assert any("authRef" in e for e in errors) and any("minReplicaCount" in e for e in errors), errors


# --- KEDA --------------------------------------------------------------------------------------

def test_keda_scales_the_indexer_on_the_index_queue(full_docs: list[Doc]) -> None:
    scaled = _one(full_docs, "ScaledObject", _name("indexer"))
    assert scaled["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": _name("indexer")}
    assert "replicas" not in _one(full_docs, "Deployment", _name("indexer"))["spec"]
    assert not [h for h in _kinds(full_docs, "HorizontalPodAutoscaler")
                if h["spec"]["scaleTargetRef"]["name"] == _name("indexer")]  # never both
    assert (scaled["spec"]["minReplicaCount"], scaled["spec"]["maxReplicaCount"]) == (1, 8)
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "rabbitmq"
    assert trigger["metadata"] == {"protocol": "amqp", "queueName": _config(full_docs)["ARCHIVE_QUEUE_NAME"],
                                   "mode": "QueueLength", "value": "1000"}
    auth = _one(full_docs, "TriggerAuthentication", trigger["authenticationRef"]["name"])
    (ref,) = auth["spec"]["secretTargetRef"]
    # The URL with credentials comes from the pods' own Secret (here existingSecret), never from values.
    deployment = _one(full_docs, "Deployment", _name("indexer"))
    secrets = [s["secretRef"]["name"] for s in deployment["spec"]["template"]["spec"]["containers"][0]["envFrom"]
               if "secretRef" in s]
    assert ref == {"parameter": "host", "name": secrets[0], "key": "ARCHIVE_QUEUE"} and ref["key"] in SECRET_KEYS


def test_hpa_by_default_and_no_keda_objects(default_docs: list[Doc]) -> None:
    assert not _kinds(default_docs, "ScaledObject") and not _kinds(default_docs, "TriggerAuthentication")
    assert _name("indexer") in {h["spec"]["scaleTargetRef"]["name"] for h in _kinds(default_docs, "HorizontalPodAutoscaler")}
    # one forwarder, not autoscaled, by default
    assert _one(default_docs, "Deployment", _name("forwarder"))["spec"]["replicas"] == 1
    assert _name("forwarder") not in {h["spec"]["scaleTargetRef"]["name"] for h in _kinds(default_docs, "HorizontalPodAutoscaler")}


def test_keda_scales_the_forwarder_on_each_destination_queue(full_docs: list[Doc], tmp_path: Path) -> None:
    """One trigger per queue the forwarder consumes, named as the archive names it: every configured
    destination and every URL a rule names (archive.compose.forward_queue)."""
    from archive.compose import forward_queue
    from archive.core.routing import parse
    from archive.runtime import destinations

    scaled = _one(full_docs, "ScaledObject", _name("forwarder"))
    assert scaled["spec"]["scaleTargetRef"]["name"] == _name("forwarder")
    assert "replicas" not in _one(full_docs, "Deployment", _name("forwarder"))["spec"]
    assert not [h for h in _kinds(full_docs, "HorizontalPodAutoscaler")
                if h["spec"]["scaleTargetRef"]["name"] == _name("forwarder")]  # never both
    assert (scaled["spec"]["minReplicaCount"], scaled["spec"]["maxReplicaCount"]) == (1, 3)
    aes = tmp_path / "aes.yaml"
    aes.write_text(_ae_config_text(full_docs, tmp_path))
    settings = _settings(full_docs, ARCHIVE_AE_CONFIG=str(aes))
    configured = destinations(settings)
    rules = parse(_one(full_docs, "ConfigMap", _name("routing"))["data"]["rules.yaml"], "rules.yaml", configured)
    names = dict.fromkeys(configured + list(rules.destinations))  # what the forwarder consumes (archive.runtime)
    expected = {forward_queue(settings, name).queue for name in names}  # type: ignore[attr-defined]
    assert len(expected) == 5 and any(".forward.web-" in q for q in expected)
    triggers = scaled["spec"]["triggers"]
    assert sorted(t["metadata"]["queueName"] for t in triggers) == sorted(expected)
    indexer_auth = _one(full_docs, "ScaledObject", _name("indexer"))["spec"]["triggers"][0]["authenticationRef"]
    for trigger in triggers:
        assert trigger["type"] == "rabbitmq" and trigger["authenticationRef"] == indexer_auth
        assert {k: v for k, v in trigger["metadata"].items() if k != "queueName"} == {
            "protocol": "amqp", "mode": "QueueLength", "value": "100"}
    assert len(_kinds(full_docs, "TriggerAuthentication")) == 1


def test_the_forwarder_alone_on_keda_has_its_trigger_authentication(helm: str) -> None:
    docs = _render(helm, "--set", "settings.peers={PACS@pacs.example:104}", "--set", "forwarder.autoscaling.enabled=true",
                   "--set", "forwarder.autoscaling.kind=keda")
    (scaled,) = _kinds(docs, "ScaledObject")
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["metadata"]["queueName"] == "archive.index.forward.PACS"
    auth = _one(docs, "TriggerAuthentication", trigger["authenticationRef"]["name"])
    assert auth["spec"]["secretTargetRef"][0]["key"] == "ARCHIVE_QUEUE"
    assert _name("indexer") in {h["spec"]["scaleTargetRef"]["name"] for h in _kinds(docs, "HorizontalPodAutoscaler")}


# --- dashboard and alert rules -----------------------------------------------------------------

def test_dashboard_configmap_carries_the_file_for_the_sidecar(full_docs: list[Doc], default_docs: list[Doc]) -> None:
    assert not [c for c in _kinds(default_docs, "ConfigMap") if c["metadata"]["name"] == _name("dashboard")]
    configmap = _one(full_docs, "ConfigMap", _name("dashboard"))
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert configmap["metadata"]["annotations"] == {"grafana_folder": "DICOM"}
    assert json.loads(configmap["data"]["dicom-archive.json"]) == json.loads(DASHBOARD.read_text())


def test_prometheus_rule_is_the_plain_rule_file(full_docs: list[Doc], default_docs: list[Doc]) -> None:
    assert not _kinds(default_docs, "PrometheusRule")
    rule = _one(full_docs, "PrometheusRule", f"{RELEASE}-dicom-archive")
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert rule["spec"] == {"groups": yaml.safe_load(RULES.read_text())["groups"]}


def _dashboard_exprs() -> list[str]:
    return [t["expr"] for p in json.loads(DASHBOARD.read_text())["panels"] for t in p.get("targets", [])]  # rows: none


def _rule_exprs() -> list[str]:
    return [r["expr"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


def test_dashboard_and_alerts_use_only_metrics_the_archive_exports() -> None:
    """A renamed metric breaks its panel and its alert silently: every archive_* name they use must
    be one this code exports (tests/e2e/test_dashboard_metrics.py checks they carry data too)."""
    exported: set[str] = set()
    for collector in metrics.__dict__.values():
        describe = getattr(collector, "describe", None)
        if callable(describe) and hasattr(collector, "_name"):
            for family in describe():
                exported.add(family.name)
                for sample_suffix in ("_total", "_bucket", "_sum", "_count"):
                    exported.add(family.name + sample_suffix)
    used = {m for e in _dashboard_exprs() + _rule_exprs() for m in re.findall(r"\barchive_[a-z_]+", e)}
    assert used and not used - exported, sorted(used - exported)
    panels = {p["title"] for p in json.loads(DASHBOARD.read_text())["panels"]}
    for wanted in ("Ingest rate", "C-STORE latency", "Index queue depth", "Time to searchable",
                   "Indexer throughput and errors", "Query latency by interface", "Free space",
                   "Versions running", "Audit records dropped", "Forwarding", "Forward jobs queued",
                   "Instances forwarded", "Forward queue depth", "Destinations unreachable", "Oldest forward job age",
                   "Forward batch latency", "Studies stable"):
        assert wanted in panels


def test_dashboard_panels_do_not_overlap() -> None:
    """Grafana lays out by gridPos: two panels on the same cells hide one another."""
    cells: dict[tuple[int, int], str] = {}
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]
    ids = [p["id"] for p in json.loads(DASHBOARD.read_text())["panels"]]
    assert len(ids) == len(set(ids))


def test_every_query_interface_has_its_latency_series_from_the_start() -> None:
    """A series born at its first query hides that query from rate(): each interface the code
    labels is in metrics.QUERY_INTERFACES, which exist at 0 from import."""
    from tests.conftest import ROOT

    code = "\n".join(p.read_text() for p in (ROOT / "archive").rglob("*.py"))
    labelled = set(re.findall(r'QUERY_SECONDS\.labels\("([^"]+)"\)', code))
    labelled |= set(re.findall(r'interface = "([^"]+)" if \w+ else "([^"]+)"', code)[0])
    assert labelled >= {"qido", "cfind", "wado-rendered"} and labelled <= set(metrics.QUERY_INTERFACES), labelled
    samples = {s.labels["interface"] for m in metrics.QUERY_SECONDS.collect() for s in m.samples}
    assert set(metrics.QUERY_INTERFACES) <= samples
