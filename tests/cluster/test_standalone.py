"""The chart's standalone trial mode on a real cluster: install, store, find, lose the pod, find again.

The cluster is the one of ``make cluster``: ``<root>/.cluster/env`` (KUBECONFIG, ...), kubectl
and helm in ``<root>/.cluster/bin`` (else on PATH), the image ``ARCHIVE_IMAGE`` of
``<root>/.image.env``, loaded into the cluster's runtime (pullPolicy Never). Overrides:
``DICOM_ARCHIVE_CLUSTER_DIR=/other/checkout/.cluster`` uses another checkout's cluster (and the
``.image.env`` beside that ``.cluster``), ``ARCHIVE_IMAGE`` names the image,
``STANDALONE_NAMESPACE`` the namespace (``standalone-test``). Without a cluster the test skips
with the reason, and fails with CI=true.

The test cluster has no volume provisioner: the release gets a local PersistentVolume of its own
on a new directory of the node (this machine: the node's address must be one of ours). The
release, its namespace, the volume and the directory are removed afterwards, also when the test
fails; the cluster itself is left alone.
"""

from __future__ import annotations

import json
import os
import selectors
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, missing
from tests.e2e.auth_client import call
from tests.e2e.harness import wait_until
from tests.e2e.senders import echoscu, storescu
from tests.factories import make_ct, new_uid, write_part10
from tests.unit.test_helm_chart import CHART, _find_helm

pytestmark = [pytest.mark.dcmtk]

VALUES = CHART / "ci" / "standalone-values.yaml"
RELEASE = "trial"
FULLNAME = f"{RELEASE}-dicom-archive"
INSTALL_TIMEOUT = "300s"


def _env_file(path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and key and not key.startswith("#"):
            values[key] = value.strip().strip('"').strip("'")
    return values


@dataclass(frozen=True)
class Cluster:
    """kubectl and helm pointed at the test cluster, its node, the image and our namespace."""

    kubectl_path: str
    helm_path: str
    env: dict[str, str]
    node: str
    image: str
    namespace: str

    def run(self, tool: str, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([tool, *args], env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"{Path(tool).name} {' '.join(args)} failed ({result.returncode}):\n"
                                 f"{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
        return result

    def kubectl(self, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run(self.kubectl_path, *args, timeout=timeout, check=check)

    def helm(self, *args: str, timeout: float = 400, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run(self.helm_path, *args, timeout=timeout, check=check)

    def json(self, *args: str) -> Any:
        return json.loads(self.kubectl(*args, "-o", "json").stdout)

    def describe(self) -> str:
        """What the namespace looks like, for a failure message."""
        pods = self.kubectl("-n", self.namespace, "get", "pods,pvc,svc,events", "-o", "wide", check=False)
        logs = self.kubectl("-n", self.namespace, "logs", f"deploy/{FULLNAME}", "--tail=40", check=False)
        return f"{pods.stdout}{pods.stderr}\n{logs.stdout[-3000:]}{logs.stderr}"


def _is_local_address(address: str) -> bool:
    try:
        with socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET) as s:
            s.bind((address, 0))
        return True
    except OSError:
        return False


def _find_cluster() -> Cluster:
    cluster_dir = Path(os.environ.get("DICOM_ARCHIVE_CLUSTER_DIR") or ROOT / ".cluster")
    env_file = cluster_dir / "env"
    if not env_file.exists():
        missing(f"no cluster ({env_file} is missing): run `make cluster`")
    settings = _env_file(env_file)
    kubectl = cluster_dir / "bin" / "kubectl"
    kubectl_path = str(kubectl) if os.access(kubectl, os.X_OK) else shutil.which("kubectl")
    helm = cluster_dir / "bin" / "helm"
    helm_path = str(helm) if os.access(helm, os.X_OK) else _find_helm()
    if kubectl_path is None or helm_path is None:
        missing(f"kubectl or helm not found (in {cluster_dir / 'bin'} or on PATH): run `make cluster`")
    assert kubectl_path is not None and helm_path is not None
    kubeconfig = settings.get("KUBECONFIG") or str(cluster_dir / "kubeconfig")
    env = {**os.environ, "KUBECONFIG": kubeconfig}
    image_env = cluster_dir.parent / ".image.env"
    image = os.environ.get("ARCHIVE_IMAGE") or (_env_file(image_env).get("ARCHIVE_IMAGE") if image_env.exists() else None)
    if not image:
        missing(f"no image: ARCHIVE_IMAGE is neither set nor in {image_env} (`make image`)")
    assert image is not None
    nodes = subprocess.run([kubectl_path, "get", "nodes", "-o", "json"], env=env, capture_output=True, text=True,
                           timeout=60)
    if nodes.returncode != 0:
        missing(f"the cluster of {env_file} does not answer: {nodes.stderr.strip()[:300]}")
    ready = [n for n in json.loads(nodes.stdout)["items"]
             if any(c["type"] == "Ready" and c["status"] == "True" for c in n["status"]["conditions"])]
    if not ready:
        missing(f"the cluster of {env_file} has no Ready node")
    # The local volume's directory is made here: the node must be this machine.
    node = next((n for n in ready if any(_is_local_address(a["address"]) for a in n["status"]["addresses"]
                                         if a["type"] == "InternalIP")), None)
    if node is None:
        missing("no Ready node of the cluster is this machine: the local volume's directory cannot be made")
    assert node is not None
    namespace = os.environ.get("STANDALONE_NAMESPACE", "standalone-test")
    return Cluster(kubectl_path, helm_path, env, node["metadata"]["name"], image, namespace)


def _remove_release(cluster: Cluster, volume: str) -> None:
    ns = cluster.namespace
    if cluster.helm("-n", ns, "status", RELEASE, check=False).returncode == 0:
        cluster.helm("-n", ns, "uninstall", RELEASE, "--wait", "--timeout", "180s", check=False)
    cluster.kubectl("delete", "namespace", ns, "--ignore-not-found", "--wait=true", "--timeout=180s", timeout=200,
                    check=False)
    cluster.kubectl("delete", "persistentvolume", volume, "--ignore-not-found", "--wait=true", "--timeout=60s",
                    check=False)


@dataclass
class Trial:
    cluster: Cluster
    data: Path          # the local volume's directory on the node (this machine)
    notes: str          # what `helm install` printed
    dicom_port: int     # NodePorts on 127.0.0.1
    http: str


@pytest.fixture
def trial() -> Iterator[Trial]:
    cluster = _find_cluster()
    volume = f"{FULLNAME}-{cluster.namespace}-data"
    _remove_release(cluster, volume)  # what an interrupted run left
    data = Path(tempfile.mkdtemp(prefix="dicom-archive-standalone-"))
    try:
        cluster.kubectl("create", "namespace", cluster.namespace)
        # The restricted Pod Security Standard, enforced: the pod must meet it to be admitted.
        cluster.kubectl("label", "namespace", cluster.namespace, "pod-security.kubernetes.io/enforce=restricted")
        repository, _, tag = cluster.image.rpartition(":")
        installed = cluster.helm(
            "install", RELEASE, str(CHART), "-n", cluster.namespace, "-f", str(VALUES),
            "--set", f"image.repository={repository}", "--set", f"image.tag={tag}", "--set", "image.pullPolicy=Never",
            "--set", f"standalone.persistence.localPath={data}", "--set", f"standalone.persistence.localNode={cluster.node}",
            "--set", "standalone.persistence.size=1Gi", "--wait", "--timeout", INSTALL_TIMEOUT, check=False)
        if installed.returncode != 0:
            raise AssertionError(f"helm install failed: {installed.stderr}\n{cluster.describe()}")
        service = cluster.json("-n", cluster.namespace, "get", "service", FULLNAME)
        ports = {p["name"]: p["nodePort"] for p in service["spec"]["ports"]}
        yield Trial(cluster, data, installed.stdout, ports["dicom"], f"http://127.0.0.1:{ports['http']}")
        # Uninstalled, the release leaves no volume behind (the files stay, Retain).
        cluster.helm("-n", cluster.namespace, "uninstall", RELEASE, "--wait", "--timeout", "180s")
        left = cluster.kubectl("get", "persistentvolume", volume, "--ignore-not-found", "-o", "name").stdout
        assert not left.strip(), f"helm uninstall left {left}"
        assert (data / "catalog.db").exists()
    finally:
        _remove_release(cluster, volume)
        shutil.rmtree(data, ignore_errors=True)


def _pod(cluster: Cluster) -> dict[str, Any]:
    pods = cluster.json("-n", cluster.namespace, "get", "pods", "-l",
                        f"app.kubernetes.io/instance={RELEASE},app.kubernetes.io/component=standalone")["items"]
    assert len(pods) == 1, [p["metadata"]["name"] for p in pods]
    return dict(pods[0])


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        return True
    except OSError:
        return False


def _instances(http: str, study: str, key: str | None) -> tuple[int, list[str]]:
    """(status, SOP Instance UIDs); (0, []) while the NodePort refuses (kube-proxy still has the old
    pod's endpoint or none yet, right after the pod is replaced)."""
    try:
        status, _, body = call(f"{http}/dicom-web/studies/{study}/instances", key, timeout=10)
    except OSError:  # urllib's URLError included
        return 0, []
    uids = sorted(row["00080018"]["Value"][0] for row in body or []) if status == 200 else []
    return status, uids


def _through_port_forward(cluster: Cluster, study: str) -> tuple[int, list[str]]:
    """QIDO-RS without a key through `kubectl port-forward` (it connects to the pod's loopback)."""
    forward = subprocess.Popen([cluster.kubectl_path, "-n", cluster.namespace, "port-forward", f"svc/{FULLNAME}",
                                ":8080"], env=cluster.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert forward.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(forward.stdout, selectors.EVENT_READ)
            line, deadline = "", time.monotonic() + 30
            while "Forwarding from 127.0.0.1:" not in line:  # "Forwarding from 127.0.0.1:PORT -> 8080"
                assert selector.select(deadline - time.monotonic()) and forward.poll() is None, line
                line = forward.stdout.readline()
        port = int(line.split("127.0.0.1:")[1].split()[0])
        return _instances(f"http://127.0.0.1:{port}", study, None)
    finally:
        forward.terminate()
        forward.wait(10)


def test_standalone_keeps_what_it_stored_when_its_pod_is_replaced(trial: Trial, tmp_path: Path) -> None:
    cluster, started = trial.cluster, time.monotonic()
    assert "NOT for production" in trial.notes
    assert f"exec deploy/{FULLNAME} -- dicom-archive api-key create" in trial.notes

    pod = _pod(cluster)
    assert pod["spec"]["nodeName"] == cluster.node
    claim = cluster.json("-n", cluster.namespace, "get", "pvc", f"{FULLNAME}-data")
    assert claim["status"]["phase"] == "Bound" and claim["spec"]["volumeName"] == f"{FULLNAME}-{cluster.namespace}-data"

    # DICOM through the NodePort on 127.0.0.1, once kube-proxy has programmed it (it follows the
    # endpoints asynchronously; it never does when kube-proxy is down).
    try:
        wait_until(lambda: _accepts(trial.dicom_port) and _accepts(int(trial.http.rpartition(":")[2])), timeout=60,
                   interval=0.5)
    except TimeoutError:
        raise AssertionError(f"the NodePorts {trial.dicom_port} and {trial.http} refuse connections on 127.0.0.1: "
                             "is kube-proxy running?") from None
    assert echoscu(trial.dicom_port).returncode == 0
    study = new_uid()
    datasets = [make_ct(study_uid=study, instance_number=i, seed=i, patient_id="STANDALONE-1") for i in range(3)]
    sent = storescu(trial.dicom_port, [write_part10(ds, tmp_path / f"ct{i}.dcm") for i, ds in enumerate(datasets)])
    assert sent.returncode == 0, sent.stderr
    expected = sorted(str(ds.SOPInstanceUID) for ds in datasets)
    # Stored on the local volume: the embedded backends' files are in the node's directory.
    assert (trial.data / "catalog.db").exists() and (trial.data / "objects").is_dir()

    # HTTP: through the Service the pod does not see a loopback client, so sign-in is needed.
    assert _instances(trial.http, study, None)[0] == 403
    created = cluster.kubectl("-n", cluster.namespace, "exec", f"deploy/{FULLNAME}", "--",
                              "dicom-archive", "api-key", "create", "standalone-test", "--role", "writer")
    key = created.stdout.strip().splitlines()[-1]
    assert key.startswith("dka_"), created.stdout
    wait_until(lambda: _instances(trial.http, study, key) == (200, expected), timeout=60, interval=0.5)
    # As NOTES and docs/deploy.md say: through a port-forward, no key is needed.
    assert _through_port_forward(cluster, study) == (200, expected)

    # The pod goes; its replacement opens the same files (and the same API key).
    old = pod["metadata"]["uid"]
    cluster.kubectl("-n", cluster.namespace, "delete", "pod", pod["metadata"]["name"], "--wait=true", timeout=120)
    rollout = cluster.kubectl("-n", cluster.namespace, "rollout", "status", f"deployment/{FULLNAME}",
                              "--timeout=180s", timeout=200, check=False)
    assert rollout.returncode == 0, rollout.stderr + cluster.describe()
    new = _pod(cluster)
    assert new["metadata"]["uid"] != old
    # Ready means /readyz answered; the Service's endpoints may still lag the pod by a moment.
    wait_until(lambda: _instances(trial.http, study, key) == (200, expected), timeout=60, interval=0.5)

    # And it still receives: one more instance, found with the others.
    more = make_ct(study_uid=study, instance_number=9, seed=9, patient_id="STANDALONE-1")
    sent = storescu(trial.dicom_port, [write_part10(more, tmp_path / "ct9.dcm")])
    assert sent.returncode == 0, sent.stderr
    wait_until(lambda: _instances(trial.http, study, key) == (200, sorted([*expected, str(more.SOPInstanceUID)])),
               timeout=60, interval=0.5)
    # `helm test`: its pod GETs /readyz through the Service's name (cluster DNS).
    # (No --logs: the pod is deleted once it succeeded, and helm then fails to fetch them.)
    tested = cluster.helm("-n", cluster.namespace, "test", RELEASE, "--timeout", "120s", check=False)
    if tested.returncode != 0:
        logs = cluster.kubectl("-n", cluster.namespace, "logs", f"{FULLNAME}-test-readyz", check=False)
        raise AssertionError(f"helm test failed: {tested.stderr}\n{logs.stdout[-3000:]}{logs.stderr}")
    print(f"standalone: installed, stored, found, replaced and found again in {time.monotonic() - started:.0f} s")
