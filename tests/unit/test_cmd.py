"""cmd/: one entry script per role, run by the container image and the Helm chart."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.conftest import ROOT

CMD = ROOT / "cmd"
ROLES = ("serve", "scp", "indexer", "query", "migrate")
IMAGE_CMD = "/opt/dicom-archive/cmd"


@pytest.mark.parametrize("role", ROLES)
def test_each_role_has_an_executable_entry_script_that_runs_its_command(role: str) -> None:
    script = CMD / role
    assert os.access(script, os.X_OK), f"cmd/{role} is not executable"
    result = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True,
                            timeout=60, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: dicom-archive {role}")


def test_cmd_is_not_an_importable_package() -> None:
    # a package named cmd would shadow the standard library's cmd module (pdb imports it)
    assert not (CMD / "__init__.py").exists()
    assert not list(CMD.glob("*.py"))
    result = subprocess.run([sys.executable, "-c", "import cmd; print(cmd.__file__)"], capture_output=True,
                            text=True, cwd=ROOT, timeout=30)
    assert result.returncode == 0 and str(CMD) not in result.stdout


def test_the_image_carries_the_scripts_and_runs_serve_by_default() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(rf"^COPY cmd {IMAGE_CMD}$", dockerfile, re.M)
    assert f'CMD ["{IMAGE_CMD}/serve"]' in dockerfile
    assert "!cmd/" in (ROOT / ".dockerignore").read_text().splitlines()
