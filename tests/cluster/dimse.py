"""DCMTK and pynetdicom against the cluster's NodePorts (host, port and AE title from .cluster/env)."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset

from tests.cluster.conftest import Cluster
from tests.conftest import require_tool


def storescu(cluster: Cluster, files: Sequence[Path]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_tool("storescu"), "-aet", "STORESCU", "-aec", cluster.aet, cluster.dicom_host,
         str(cluster.dicom_port), *map(str, files)],
        capture_output=True, text=True, timeout=300,
    )


def findscu_study(cluster: Cluster, keys: Sequence[str], out: Path) -> tuple[int, list[Dataset], str]:
    """Study Root C-FIND through the query Service; the response identifiers."""
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("rsp*.dcm"):
        old.unlink()
    args = [require_tool("findscu"), "-S", "-aet", "FINDSCU", "-aec", cluster.aet, "-X", "-od", str(out)]
    for key in keys:
        args += ["-k", key]
    result = subprocess.run([*args, cluster.dicom_host, str(cluster.query_dicom_port)], capture_output=True,
                            text=True, errors="replace", timeout=60)
    return result.returncode, [dcmread(p) for p in sorted(out.glob("rsp*.dcm"))], result.stderr
