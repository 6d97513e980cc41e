"""The test cluster of ``make cluster`` (scripts/cluster.sh): its endpoints and tools.

``.cluster/env`` says where the release's Services answer (NodePorts on 127.0.0.1), the API key
the HTTP API wants, and where kubectl, helm and the kubeconfig are. Without it the tests skip with
the reason on a laptop and fail when ``CI=true``.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, missing
from tests.e2e.harness import http_json

CLUSTER_ENV = ROOT / ".cluster" / "env"


@dataclass(frozen=True)
class Cluster:
    dicom_host: str
    dicom_port: int
    query_dicom_port: int
    http: str
    authorization: str
    aet: str
    namespace: str
    release: str
    fullname: str
    chart: str
    values: str
    kubeconfig: str
    bin: Path

    def _env(self) -> dict[str, str]:
        return {**os.environ, "KUBECONFIG": self.kubeconfig}

    def kubectl(self, *args: str, namespace: str | None = None, timeout: float = 120,
                check: bool = True) -> subprocess.CompletedProcess[str]:
        ns = namespace or self.namespace
        result = subprocess.run([str(self.bin / "kubectl"), "-n", ns, *args], capture_output=True, text=True,
                                env=self._env(), timeout=timeout)
        if check:
            assert result.returncode == 0, f"kubectl {' '.join(args)}: {result.stderr}"
        return result

    def kubectl_json(self, *args: str, namespace: str | None = None) -> Any:
        return json.loads(self.kubectl(*args, "-o", "json", namespace=namespace).stdout)

    def helm(self, *args: str, namespace: str | None = None, timeout: float = 900,
             check: bool = True) -> subprocess.CompletedProcess[str]:
        ns = namespace or self.namespace
        result = subprocess.run([str(self.bin / "helm"), "-n", ns, *args], capture_output=True, text=True,
                                env=self._env(), timeout=timeout)
        if check:
            assert result.returncode == 0, f"helm {' '.join(args)}: {result.stdout}\n{result.stderr}"
        return result

    def helm_status(self, release: str | None = None, namespace: str | None = None) -> Any:
        return json.loads(self.helm("status", release or self.release, "-o", "json", namespace=namespace).stdout)

    def http_json(self, path: str, timeout: float = 10) -> tuple[int, Any]:
        return http_json(f"{self.http}{path}", timeout,
                         headers={"Authorization": self.authorization, "Accept": "application/dicom+json"})

    def qido_instance_uids(self, study_uid: str) -> list[str]:
        uids: list[str] = []
        offset, page = 0, 500
        while True:
            status, body = self.http_json(f"/dicom-web/studies/{study_uid}/instances?limit={page}&offset={offset}")
            if status == 204 or (status == 200 and not body):
                return uids
            assert status == 200, body
            uids += [row["00080018"]["Value"][0] for row in body]
            if len(body) < page:
                return uids
            offset += page


def _read_env(path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


@pytest.fixture(scope="session")
def cluster() -> Cluster:
    if not CLUSTER_ENV.exists():
        missing("no test cluster (.cluster/env); run `make cluster`")
    env = _read_env(CLUSTER_ENV)
    host, _, port = env["DICOM_ENDPOINT"].rpartition(":")
    _, _, query_port = env["QUERY_DICOM_ENDPOINT"].rpartition(":")
    found = Cluster(
        dicom_host=host, dicom_port=int(port), query_dicom_port=int(query_port), http=env["HTTP_ENDPOINT"],
        authorization=env.get("HTTP_AUTHORIZATION", ""), aet=env["AET"], namespace=env["NAMESPACE"],
        release=env["RELEASE"], fullname=env["FULLNAME"], chart=env["CHART"], values=env["VALUES"],
        kubeconfig=env["KUBECONFIG"], bin=Path(env["CLUSTER_BIN"]),
    )
    version = found.kubectl("version", "-o", "json", check=False, timeout=20)
    if version.returncode != 0:
        missing(f"the test cluster does not answer (.cluster/env exists): {version.stderr.strip()}")
    return found
