"""Run the project's image (``make image``) with the docker CLI, as a deployer would.

``scripts/image.sh`` writes ``.image.env``: the daemon's socket (``DOCKER_HOST``) and the image
(``ARCHIVE_IMAGE``). Every container here runs on the host network (the daemon has no bridge:
``--bridge=none``), with a read-only root filesystem, a tmpfs (or a volume) for the data
directory and /tmp, no capabilities and no privilege escalation, as the image's own user.
Without docker or the image the tests skip with the reason, and fail with ``CI=true``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.error
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tests.conftest import ROOT, missing
from tests.e2e.harness import http_json

IMAGE_ENV = ROOT / ".image.env"
IMAGE_CMD = "/opt/dicom-archive/cmd"
DATA_DIR = "/var/lib/dicom-archive"
UID = 10001
STOP_GRACE = 45  # the chart's terminationGracePeriodSeconds: 30 s drain + margin


def _image_env() -> dict[str, str]:
    values: dict[str, str] = {}
    if IMAGE_ENV.exists():
        for line in IMAGE_ENV.read_text().splitlines():
            key, sep, value = line.strip().partition("=")
            if sep and not key.startswith("#"):
                values[key] = value
    return values


@dataclass(frozen=True)
class Docker:
    """The docker CLI pointed at the daemon of ``make image``, and the image it built."""

    cli: str
    env: dict[str, str]
    image: str

    def run(self, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([self.cli, *args], env=self.env, capture_output=True, text=True,
                                timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)} failed ({result.returncode}): {result.stderr}")
        return result

    def inspect(self, what: str) -> Any:
        return json.loads(self.run("inspect", what).stdout)[0]


def find_docker() -> Docker:
    settings = _image_env()
    cli = shutil.which("docker")
    host = os.environ.get("DOCKER_HOST") or settings.get("DOCKER_HOST")
    image = os.environ.get("ARCHIVE_IMAGE") or settings.get("ARCHIVE_IMAGE")
    if cli is None or not host or not image:
        missing("no container image: run `make image` (docker, a base image and the image, .image.env)")
    assert cli is not None and host is not None and image is not None
    docker = Docker(cli, {**os.environ, "DOCKER_HOST": host}, image)
    answer = docker.run("image", "inspect", "--format", "{{.Id}}", image, check=False, timeout=30)
    if answer.returncode != 0:
        missing(f"docker at {host} has no image {image} ({answer.stderr.strip()}): run `make image`")
    return docker


@dataclass
class Container:
    """One detached container of the image on the host network."""

    docker: Docker
    name: str
    command: Sequence[str]
    env: dict[str, str]
    http_port: int
    dicom_port: int = 0  # set as ARCHIVE_DICOM_PORT when not 0
    volumes: Sequence[str] = ()  # the data directory's mount arguments; default: a tmpfs
    started: bool = False
    exit_code: int | None = None
    stop_seconds: float | None = None

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self, wait_ready: bool = True, timeout: float = 90) -> "Container":
        env = {"ARCHIVE_BIND": "127.0.0.1", "ARCHIVE_HTTP_PORT": str(self.http_port), **self.env}
        if self.dicom_port:
            env["ARCHIVE_DICOM_PORT"] = str(self.dicom_port)
        data = self.volumes or ("--tmpfs", f"{DATA_DIR}:uid={UID},gid={UID},mode=0750,size=512m")
        args = ["run", "--detach", "--name", self.name, "--network", "host", "--read-only",
                *data, "--tmpfs", "/tmp:size=256m", "--cap-drop", "ALL",
                "--security-opt", "no-new-privileges"]
        for key, value in env.items():
            args += ["--env", f"{key}={value}"]
        self.docker.run(*args, self.docker.image, *self.command)
        self.started = True
        if wait_ready:
            self.wait_ready(timeout)
        return self

    def running(self) -> bool:
        return bool(self.docker.inspect(self.name)["State"]["Running"])

    def logs(self, lines: int = 60) -> str:
        result = self.docker.run("logs", "--tail", str(lines), self.name, check=False)
        return result.stdout + result.stderr

    def wait_ready(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running():
                raise AssertionError(f"{self.name} exited:\n{self.logs()}")
            try:
                if http_json(f"{self.http}/readyz", timeout=2)[0] == 200:
                    return
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            time.sleep(0.2)
        raise AssertionError(f"{self.name} not ready after {timeout} s:\n{self.logs()}")

    def exec(self, *command: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return self.docker.run("exec", self.name, *command, check=False, timeout=timeout)

    def stop(self, grace: int = STOP_GRACE) -> int:
        """``docker stop`` (SIGTERM, then SIGKILL after ``grace`` s); the exit code."""
        t0 = time.monotonic()
        self.docker.run("stop", "--time", str(grace), self.name, timeout=grace + 30)
        self.stop_seconds = time.monotonic() - t0
        self.exit_code = int(self.docker.inspect(self.name)["State"]["ExitCode"])
        return self.exit_code

    def remove(self) -> None:
        if self.started:
            self.docker.run("rm", "--force", "--volumes", self.name, check=False)


def container_name(label: str) -> str:
    return f"archive-test-{label}-{uuid.uuid4().hex[:8]}"


class Containers:
    """Containers and volumes of one test; removed after it, each container's log shown on failure."""

    def __init__(self, docker: Docker) -> None:
        self.docker = docker
        self.made: list[Container] = []
        self.volumes: list[str] = []

    def __call__(self, label: str, command: Sequence[str], env: dict[str, str], *, http_port: int,
                 dicom_port: int = 0, volumes: Sequence[str] = ()) -> Container:
        container = Container(self.docker, container_name(label), command, env, http_port, dicom_port, volumes)
        self.made.append(container)
        return container

    def volume(self, label: str) -> str:
        """A new docker volume: mounted on the data directory, it takes the image's owner (10001)."""
        name = container_name(label)
        self.docker.run("volume", "create", name)
        self.volumes.append(name)
        return name

    def remove(self) -> None:
        for container in self.made:
            if container.started:
                print(f"---- {container.name} ----\n{container.logs(40)}")  # pytest shows it on failure
            container.remove()
        for volume in self.volumes:
            self.docker.run("volume", "rm", "--force", volume, check=False)


def run_once(docker: Docker, command: Sequence[str], env: dict[str, str], *, volumes: Sequence[str] = (),
             timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """A one-shot container (migrate, a CLI command): ``docker run --rm``, read-only, host network."""
    data = volumes or ("--tmpfs", f"{DATA_DIR}:uid={UID},gid={UID},mode=0750")
    args = ["run", "--rm", "--network", "host", "--read-only", *data, "--tmpfs", "/tmp",
            "--cap-drop", "ALL", "--security-opt", "no-new-privileges"]
    for key, value in env.items():
        args += ["--env", f"{key}={value}"]
    return docker.run(*args, docker.image, *command, check=False, timeout=timeout)
