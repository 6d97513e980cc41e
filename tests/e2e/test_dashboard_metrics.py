"""Every panel of the Grafana dashboard shows data from a running archive.

A real Prometheus (Debian's `prometheus`, on a loopback port, its configuration written here)
scrapes a real archive on its metrics ports (ARCHIVE_METRICS_PORT): `dicom-archive serve`, and the
scp, indexer, query and forwarder roles on the real services (RabbitMQ, PostgreSQL, OpenSearch, S3);
the archive receives instances over C-STORE, answers QIDO-RS and C-FIND, and forwards them by its
rules (ARCHIVE_ROUTING_RULES) to a DCMTK storescp (PACS) and to a peer nobody listens for (DOWN);
then each PromQL expression of deploy/helm/dicom-archive/dashboards/dicom-archive.json, with
Grafana's variables replaced by concrete values, is evaluated by Prometheus' HTTP API and must
return series, and the panels that describe what just happened must show it (an ingest rate above
zero, a latency, qido and cfind, instances sent to PACS, DOWN unreachable, a stable study).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, free_port, missing
from tests.e2e.dimse_peers import findscu
from tests.e2e.harness import http_json, listening, serve, wait_until
from tests.e2e.senders import pynetdicom_store
from tests.e2e.test_forwarding import Destination
from tests.factories import make_ct, new_uid

pytestmark = pytest.mark.dcmtk  # the forwarding destination is DCMTK's storescp

DASHBOARD = ROOT / "deploy" / "helm" / "dicom-archive" / "dashboards" / "dicom-archive.json"
# Grafana's variables, as Grafana would fill them in: all namespaces, a window that spans the test.
VARIABLES = {"$__rate_interval": "5m", "$namespace": ".*", "${datasource}": ""}


@dataclass
class Prometheus:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    def query(self, expr: str) -> list[dict[str, Any]]:
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        with urllib.request.urlopen(url, timeout=10) as response:
            body = json.load(response)
        assert body["status"] == "success", body
        return list(body["data"]["result"])

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=10) as response:
                return response.status == 200
        except urllib.error.HTTPError:
            return False

    def targets(self) -> list[dict[str, Any]]:
        with urllib.request.urlopen(f"{self.url}/api/v1/targets", timeout=10) as response:
            return list(json.load(response)["data"]["activeTargets"])


@dataclass
class Archive:
    """Where to send, query and scrape: `serve`, or the four roles on the real services."""

    store_port: int  # C-STORE
    find_port: int  # C-FIND
    http: str  # QIDO-RS
    metrics: list[str]  # host:port of every process's ARCHIVE_METRICS_PORT
    pacs: Destination  # where the rules forward CT instances (with DOWN, where nobody listens)


DESTINATIONS = ("PACS", "DOWN")


@pytest.fixture
def pacs(tmp_path: Path) -> Iterator[Destination]:
    destination = Destination(tmp_path / "pacs").start()
    yield destination
    destination.stop()


def _forwarding(tmp_path: Path, pacs: Destination) -> dict[str, str]:
    """Settings that forward every CT instance to PACS and to DOWN (a port nobody listens on), and
    call a study stable after a second: data for every panel of the Forwarding row."""
    rules = tmp_path / "rules.yaml"
    rules.write_text(f"rules:\n  - name: ct\n    match: {{Modality: CT}}\n    destinations: [{', '.join(DESTINATIONS)}]\n")
    return {"ARCHIVE_ROUTING_RULES": str(rules), "ARCHIVE_STUDY_STABLE_SECONDS": "1",
            "ARCHIVE_PEERS": f"PACS@127.0.0.1:{pacs.port},DOWN@127.0.0.1:{free_port()}"}


@pytest.fixture(params=["serve", "distributed"])
def archive(request: pytest.FixtureRequest, tmp_path: Path, pacs: Destination) -> Iterator[Archive]:
    forwarding = _forwarding(tmp_path, pacs)
    if request.param == "serve":  # the forwarder is one of its children
        proc = serve(tmp_path, ARCHIVE_METRICS_PORT=str(free_port()), **forwarding).start()
        yield Archive(proc.dicom_port, proc.dicom_port, proc.http, [f"127.0.0.1:{proc.env['ARCHIVE_METRICS_PORT']}"],
                      pacs)
        assert proc.stop() == 0, proc.log_tail()
        return
    from tests.e2e.distributed import ROLES, distributed

    roles_run = (*ROLES, "forwarder")
    with distributed(tmp_path, f"dash{new_uid()[-8:]}", start=False) as roles:
        roles.env.update(forwarding)
        roles.forward_destinations = DESTINATIONS  # their queues go at teardown
        for role in roles_run:
            roles.procs[role] = roles.process(role)
            roles.procs[role].env["ARCHIVE_METRICS_PORT"] = str(free_port())
            roles.procs[role].start(wait_ready=False)
        for role in roles_run:
            roles.procs[role].wait_ready(60)
        yield Archive(roles.scp.dicom_port, roles.query.dicom_port, roles.query.http,
                      [f"127.0.0.1:{roles.procs[r].env['ARCHIVE_METRICS_PORT']}" for r in roles_run], pacs)


@pytest.fixture
def prometheus(archive: Archive, tmp_path: Path) -> Iterator[Prometheus]:
    binary = shutil.which("prometheus")
    if binary is None:
        missing("prometheus is not installed (Debian package prometheus); run scripts/system-deps.sh")
    assert binary is not None
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(json.dumps({  # JSON is YAML
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{"job_name": "dicom-archive", "metrics_path": "/metrics",
                            "static_configs": [{"targets": archive.metrics}]}],
    }))
    log = tmp_path / "prometheus.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                                 f"--web.listen-address=127.0.0.1:{port}"], stdout=out, stderr=subprocess.STDOUT)
    server = Prometheus(f"http://127.0.0.1:{port}", proc, log)
    try:
        wait_until(lambda: proc.poll() is not None or listening(port), timeout=60)
        assert proc.poll() is None, log.read_text()[-3000:]
        wait_until(server.ready, timeout=60)  # its storage open: it answers 503 until then
        # Every scrape target (one per archive process) was scraped.
        wait_until(lambda: sorted(t["health"] for t in server.targets()) == ["up"] * len(archive.metrics), timeout=60)
        yield server
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _panel_queries() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    queries = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):  # a row has none
            expr = target["expr"]
            for variable, value in VARIABLES.items():
                expr = expr.replace(variable, value)
            assert "$" not in expr, f"a Grafana variable this test does not fill in: {expr}"
            queries.append((f"{panel['title']} [{target['refId']}]", expr))
    return queries


def _value(series: dict[str, Any]) -> float:
    return float(series["value"][1])


def _forwarded(archive: Archive, prometheus: Prometheus, count: int) -> None:
    """PACS holds ``count`` instances, and Prometheus scraped as many jobs queued for each destination
    and sent to PACS."""
    wait_until(lambda: len(archive.pacs.received()) == count, timeout=60)
    for expr in [f'sum(archive_forwarded_instances_total{{destination="PACS",outcome="sent"}}) >= {count}',
                 *(f'sum(archive_forward_jobs_queued_total{{destination="{d}"}}) >= {count}' for d in DESTINATIONS)]:
        wait_until(lambda expr=expr: prometheus.query(expr), timeout=60)


def test_every_dashboard_panel_shows_data(archive: Archive, prometheus: Prometheus, tmp_path: Path) -> None:
    # Traffic: C-STORE, QIDO-RS, C-FIND.
    study = new_uid()
    datasets = [make_ct(study_uid=study, instance_number=i, seed=i, patient_id="DASH-1") for i in range(5)]
    assert pynetdicom_store(archive.store_port, datasets) == [0x0000] * 5

    def indexed() -> bool:
        status, body = http_json(f"{archive.http}/dicom-web/studies/{study}/instances")
        return status == 200 and len(body or []) == 5

    wait_until(indexed, timeout=30)
    code, found, stderr = findscu(archive.find_port, "study", ["QueryRetrieveLevel=STUDY", f"StudyInstanceUID={study}"],
                                  tmp_path / "find")
    assert code == 0 and len(found) == 1, stderr

    # Prometheus has seen it: the counters it scraped say so (scrapes every second).
    wait_until(lambda: any(_value(s) >= 5 for s in prometheus.query('sum(archive_cstore_total{result="success"})')),
               timeout=30)
    wait_until(lambda: prometheus.query('archive_queries_total{interface="cfind"} > 0'), timeout=30)
    # The indexer's scrape after it indexed the five (the HTTP check above does not wait for a scrape).
    wait_until(lambda: any(_value(s) >= 5 for s in prometheus.query('sum(archive_time_to_searchable_seconds_count)')),
               timeout=30)
    # Forwarding, in two rounds: a destination's series are born with its first jobs, and Prometheus
    # sees a series born at 5 as no increase, so only what follows shows as a rate. First round: PACS
    # received the five and the forwarder's scrape says so; DOWN was found unreachable.
    _forwarded(archive, prometheus, 5)
    wait_until(lambda: prometheus.query('archive_forward_unreachable_total{destination="DOWN"} >= 1'), timeout=60)
    # Second round: two more instances of the study, queued for both, sent to PACS; then the study
    # becomes stable (a second without a new instance).
    more = [make_ct(study_uid=study, instance_number=i, seed=i, patient_id="DASH-1") for i in range(5, 7)]
    assert pynetdicom_store(archive.store_port, more) == [0x0000] * 2
    _forwarded(archive, prometheus, 7)
    wait_until(lambda: prometheus.query('sum(archive_studies_stable_total) >= 1'), timeout=60)

    results: dict[str, list[dict[str, Any]]] = {}
    empty = []
    for name, expr in _panel_queries():
        try:
            results[name] = wait_until(lambda expr=expr: prometheus.query(expr), timeout=15)
        except TimeoutError:
            empty.append(f"{name}: {expr}")
    assert not empty, "panels without data:\n" + "\n".join(empty)

    # What happened shows as such, not as zeros or NaN.
    assert _value(results["Ingest rate [A]"][0]) > 0
    assert _value(results["Ingest bytes [A]"][0]) > 0
    for quantile in "ABC":
        assert 0 < _value(results[f"C-STORE latency [{quantile}]"][0]) < 30
        assert 0 < _value(results[f"Time to searchable [{quantile}]"][0]) < 300
    assert _value(results["Indexer throughput and errors [A]"][0]) > 0
    latency = {s["metric"]["interface"]: _value(s) for s in results["Query latency by interface [A]"]}
    assert latency["qido"] > 0 and latency["cfind"] > 0, latency
    # every process has its data directory; the receivers (and serve) a spool
    assert {s["metric"]["volume"] for s in results["Free space [A]"] if _value(s) > 0} == {"data", "spool"}
    from archive import __version__
    assert [(s["metric"]["version"], _value(s)) for s in results["Versions running [A]"]] == [
        (__version__, len(archive.metrics))]
    assert _value(results["Scrape targets up [A]"][0]) == len(archive.metrics)
    assert _value(results["Scrape targets up [B]"][0]) == 0
    assert {s["metric"]["reason"] for s in results["Audit records dropped [A]"]} >= {"buffer_full", "collector_down"}
    assert [_value(s) for s in results["Index queue depth [B]"]] == [0]  # no dead letters
    # Forwarding: a job per instance and destination, the five sent to PACS, DOWN unreachable.
    queued = {s["metric"]["destination"]: _value(s) for s in results["Forward jobs queued [A]"]}
    assert set(queued) == set(DESTINATIONS) and all(v > 0 for v in queued.values()), queued
    forwarded = {(s["metric"]["destination"], s["metric"]["outcome"]): _value(s)
                 for s in results["Instances forwarded [A]"]}
    assert forwarded[("PACS", "sent")] > 0 and forwarded.get(("DOWN", "sent"), 0) == 0, forwarded
    assert {s["metric"]["destination"] for s in results["Destinations unreachable [A]"] if _value(s) > 0} == {"DOWN"}
    for ref in "AB":  # waiting and dead letters, per destination the forwarder consumes
        assert {s["metric"]["destination"] for s in results[f"Forward queue depth [{ref}]"]} == set(DESTINATIONS)
    assert all(_value(s) == 0 for s in results["Forward queue depth [B]"])
    ages = {s["metric"]["destination"]: _value(s) for s in results["Oldest forward job age [A]"]}
    assert set(ages) == set(DESTINATIONS) and all(0 <= a < 300 for a in ages.values()), ages
    latency = {s["metric"]["destination"]: _value(s) for s in results["Forward batch latency [A]"]}
    assert 0 < latency["PACS"] < 30, latency
    assert _value(results["Studies stable [A]"][0]) > 0
