"""``helm upgrade`` with a changed setting rolls every pod while a sender keeps sending: no
C-STORE fails and every acknowledged instance is found afterwards (issue 11).

The sender opens an association through the scp NodePort, sends a few instances, releases and
starts again, so that new associations go to whichever scp pods are Ready while old ones drain
(preStop sleep, then SIGTERM: the scp finishes its associations before it exits).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
from pynetdicom import AE

from tests.cluster.conftest import Cluster
from tests.e2e.harness import wait_until
from tests.factories import make_ct, new_uid

PER_ASSOCIATION = 5


class Sender(threading.Thread):
    """C-STOREs in a loop; records what was acknowledged and every failure."""

    def __init__(self, cluster: Cluster, study: str) -> None:
        super().__init__(daemon=True)
        self.cluster, self.study, self.series = cluster, study, new_uid()
        self.acked: list[str] = []
        self.failures: list[str] = []
        self.associations = 0
        self.done = threading.Event()

    def _dataset(self, number: int) -> Dataset:
        ds = make_ct(study_uid=self.study, series_uid=self.series, instance_number=number, seed=number,
                     patient_id="CLUSTER-ROLL")
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        return ds

    def run(self) -> None:
        ae = AE(ae_title="ROLLSCU")
        ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
        number = 0
        while not self.done.is_set():
            assoc = ae.associate(self.cluster.dicom_host, self.cluster.dicom_port, ae_title=self.cluster.aet)
            if not assoc.is_established:
                self.failures.append(f"association {self.associations + 1} not established")
                self.done.wait(0.2)
                continue
            self.associations += 1
            try:
                for _ in range(PER_ASSOCIATION):
                    ds = self._dataset(number)
                    number += 1
                    status = assoc.send_c_store(ds)
                    code = int(status.Status) if "Status" in status else None
                    if code == 0x0000:
                        self.acked.append(str(ds.SOPInstanceUID))
                    else:
                        self.failures.append(f"C-STORE {ds.SOPInstanceUID}: status {code}")
                        break
            finally:
                if assoc.is_established:
                    assoc.release()


def _pod_uids(cluster: Cluster) -> dict[str, set[str]]:
    pods = cluster.kubectl_json("get", "pods", "-l", f"app.kubernetes.io/instance={cluster.release}")["items"]
    found: dict[str, set[str]] = {}
    for pod in pods:
        component = pod["metadata"]["labels"].get("app.kubernetes.io/component", "")
        if pod["metadata"].get("deletionTimestamp") is None and component in ("scp", "indexer", "query"):
            found.setdefault(component, set()).add(pod["metadata"]["uid"])
    return found


def test_helm_upgrade_rolls_pods_without_failed_stores(cluster: Cluster, tmp_path: Path) -> None:
    current = cluster.helm_status()
    values = cluster.helm("get", "values", cluster.release, "-a", "-o", "json").stdout
    # A real setting, alternating so that every run changes it (the pods' config checksum rolls them).
    max_associations = 63 if '"maxAssociations":64' in values.replace(" ", "") else 64
    before = _pod_uids(cluster)

    sender = Sender(cluster, new_uid())
    sender.start()
    wait_until(lambda: len(sender.acked) >= 20 or sender.failures, timeout=120, interval=0.1)
    started = time.monotonic()
    upgrade = cluster.helm("upgrade", cluster.release, cluster.chart, "-f", cluster.values,
                           "--set", f"settings.maxAssociations={max_associations}", "--wait", "--timeout", "10m",
                           check=False)
    rolled_seconds = time.monotonic() - started
    # Keep sending briefly on the new pods, then stop.
    acked_at_end = len(sender.acked)
    wait_until(lambda: len(sender.acked) >= acked_at_end + 20 or sender.failures, timeout=120, interval=0.1)
    sender.done.set()
    sender.join(timeout=120)
    assert upgrade.returncode == 0, upgrade.stdout + upgrade.stderr

    after = _pod_uids(cluster)
    status = cluster.helm_status()
    assert status["version"] == current["version"] + 1
    for component in ("scp", "indexer", "query"):
        assert after.get(component) and not after[component] & before.get(component, set()), (
            f"{component} pods were not replaced: before {before}, after {after}")
    print(f"rolling upgrade: {rolled_seconds:.0f} s, {len(sender.acked)} C-STOREs acknowledged over "
          f"{sender.associations} associations, {len(sender.failures)} failures")
    if sender.failures:  # what the cluster saw meanwhile, to tell a pod's fault from the network's
        events = cluster.kubectl("get", "events", "--sort-by=.lastTimestamp", check=False).stdout
        raise AssertionError(f"{sender.failures}\n{events[-6000:]}")
    assert len(sender.acked) >= 40

    # Every acknowledged instance is found (Success means durable and queued for indexing).
    acked = sorted(sender.acked)
    wait_until(lambda: sorted(set(cluster.qido_instance_uids(sender.study))) == acked, timeout=300, interval=1.0)
