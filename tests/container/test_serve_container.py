"""`serve` in the image, as a deployer runs it: C-ECHO, C-STORE (DCMTK) and QIDO-RS from the host.

The container has a read-only root filesystem, a tmpfs (or a volume) for its data directory,
no capabilities, and runs as the image's user. It shares the host's network (the test daemon
has no bridge), so the host's requests come from loopback, which the archive lets through
without sign-in; the test still does what a deployer does for clients elsewhere: it creates an
API key with the CLI in the container and sends it, and a wrong key is refused.
"""

from __future__ import annotations

import re
import threading
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.container.docker import DATA_DIR, IMAGE_CMD, STOP_GRACE, UID, Container, Containers, Docker
from tests.e2e.auth_client import call
from tests.e2e.distributed import StreamSender, qido_instance_uids
from tests.e2e.harness import wait_until
from tests.e2e.senders import echoscu, storescu
from tests.factories import make_ct, new_uid, write_part10

pytestmark = [pytest.mark.dcmtk]



def _serve(containers: Containers, label: str, volumes: list[str] | None = None) -> Container:
    return containers(label, [f"{IMAGE_CMD}/serve"], {}, http_port=free_port(), dicom_port=free_port(),
                      volumes=volumes or ())


def _instances(url: str, study: str, token: str) -> list[str]:
    status, _, body = call(f"{url}/dicom-web/studies/{study}/instances", token)
    assert status == 200, body
    return sorted(row["00080018"]["Value"][0] for row in body or [])


def test_serve_answers_echo_store_and_qido_read_only_as_uid_10001(docker: Docker, containers: Containers,
                                                                  tmp_path: Path) -> None:
    serve = _serve(containers, "serve").start()
    port = serve.dicom_port

    # Locked down: the image's numeric user, nothing writable outside the data dir and /tmp.
    assert docker.inspect(serve.name)["Config"]["User"] == f"{UID}:{UID}"
    assert serve.exec("id", "-u").stdout.strip() == str(UID)
    wrote = serve.exec("python3", "-c", f"open('{IMAGE_CMD}/x', 'w')")
    assert wrote.returncode != 0 and "Read-only file system" in wrote.stderr, wrote

    # The image's own HEALTHCHECK command, run now rather than after its 30 s interval.
    check = docker.inspect(docker.image)["Config"]["Healthcheck"]["Test"]
    assert check[0] == "CMD"
    assert serve.exec(*check[1:]).returncode == 0

    # The web UI, built in the Dockerfile's ui stage: the page and the script it loads.
    with urllib.request.urlopen(f"{serve.http}/ui/", timeout=10) as page:
        html = page.read().decode()
        assert page.status == 200 and page.headers["Content-Type"].startswith("text/html"), page.headers
    script = re.search(r'<script[^>]+src="(/ui/assets/[^"]+\.js)"', html)
    assert script, html
    with urllib.request.urlopen(f"{serve.http}{script.group(1)}", timeout=10) as asset:
        assert asset.status == 200 and len(asset.read()) > 1000

    assert echoscu(port).returncode == 0
    study = new_uid()
    datasets = [make_ct(study_uid=study, instance_number=i, seed=i, patient_id="CONTAINER-1") for i in range(5)]
    files = [write_part10(ds, tmp_path / f"ct{i}.dcm") for i, ds in enumerate(datasets)]
    sent = storescu(port, files)
    assert sent.returncode == 0, sent.stderr

    created = serve.exec("dicom-archive", "api-key", "create", "ci-reader", "--role", "reader")
    assert created.returncode == 0, created.stderr
    key = created.stdout.splitlines()[0].strip()
    assert key.startswith("dka_"), created.stdout
    expected = sorted(str(ds.SOPInstanceUID) for ds in datasets)
    wait_until(lambda: _instances(serve.http, study, key) == expected, timeout=30)
    status, headers, _ = call(f"{serve.http}/dicom-web/studies?StudyInstanceUID={study}", "dka_not-a-key")
    assert status == 401 and "invalid_token" in headers.get("WWW-Authenticate", "")

    assert serve.stop() == 0
    assert serve.stop_seconds is not None and serve.stop_seconds < STOP_GRACE


def test_docker_stop_drains_and_loses_nothing_acknowledged(docker: Docker, containers: Containers) -> None:
    """SIGTERM while a sender streams: exit 0 before the grace period, every Success kept."""
    mount = ["--volume", f"{containers.volume('data')}:{DATA_DIR}"]
    first = _serve(containers, "drain", volumes=mount).start()
    sender = StreamSender(first.dicom_port, count=100_000)
    sender.start()
    try:
        wait_until(lambda: len(sender.successes()) >= 30, timeout=60)
        stopping = threading.Thread(target=first.stop)
        stopping.start()
        stopping.join(STOP_GRACE + 30)
    finally:
        sender.stop()
        sender.join(60)
    assert first.exit_code == 0, first.logs()  # drained; 137 would be SIGKILL after the grace period
    assert first.stop_seconds is not None and first.stop_seconds < STOP_GRACE
    acknowledged = sender.successes()
    assert len(acknowledged) >= 30

    # A new container on the same volume indexes what the first one queued: nothing is lost.
    second = _serve(containers, "after", volumes=mount).start()
    wait_until(lambda: set(acknowledged) <= set(qido_instance_uids(second.http, sender.study_uid)), timeout=60)
    assert second.stop() == 0
