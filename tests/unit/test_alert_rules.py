"""The alert rules (deploy/helm/dicom-archive/alerts/) pass `promtool check rules` as the chart
renders them, and their unit tests (tests-promtool/) pass `promtool test rules`: each alert fires
where it should and stays quiet where it should not. Needs promtool (Debian package prometheus,
scripts/system-deps.sh); skips without it on a laptop, fails with CI=true.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import missing
from tests.unit.test_helm_chart import CHART, RELEASE, Doc, _one, full_docs, helm  # noqa: F401 - fixtures

RULES = CHART / "alerts" / "dicom-archive.rules.yaml"
UNIT_TESTS = sorted((CHART / "tests-promtool").glob("*.yaml"))


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        missing("promtool is not installed (Debian package prometheus); run scripts/system-deps.sh")
    assert path is not None
    return path


def _run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=120, cwd=cwd)


def test_rendered_prometheus_rule_passes_promtool_check(promtool: str, full_docs: list[Doc], tmp_path: Path) -> None:
    rule = _one(full_docs, "PrometheusRule", f"{RELEASE}-dicom-archive")
    rendered = tmp_path / "rendered.rules.yaml"
    rendered.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    result = _run(promtool, "check", "rules", str(rendered), str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    count = sum(len(g["rules"]) for g in rule["spec"]["groups"])
    assert f"SUCCESS: {count} rules found" in result.stdout


def test_promtool_unit_tests_pass(promtool: str) -> None:
    assert UNIT_TESTS
    result = _run(promtool, "test", "rules", *(p.name for p in UNIT_TESTS), cwd=UNIT_TESTS[0].parent)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_is_tested_firing_and_quiet() -> None:
    alerts = {r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]}
    fired: set[str] = set()
    quiet: set[str] = set()
    for path in UNIT_TESTS:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                (fired if check.get("exp_alerts") else quiet).add(check["alertname"])
    assert alerts - fired == set(), "never seen firing"
    assert alerts - quiet == set(), "never seen quiet"


def test_a_broken_rule_fails_the_unit_tests(promtool: str, tmp_path: Path) -> None:
    """The unit tests can fail: with the dead-letter threshold moved they do."""
    rules = tmp_path / "alerts"
    rules.mkdir()
    (rules / RULES.name).write_text(RULES.read_text().replace("(archive_queue_dead_messages) > 0",
                                                              "(archive_queue_dead_messages) > 5"))
    tests = tmp_path / "tests-promtool"
    tests.mkdir()
    for path in UNIT_TESTS:
        (tests / path.name).write_text(path.read_text())
    result = _run(promtool, "test", "rules", *(p.name for p in UNIT_TESTS), cwd=tests)
    assert result.returncode != 0 and "DicomArchiveDeadLetters" in result.stdout + result.stderr
