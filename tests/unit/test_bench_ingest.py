"""The ingest benchmark's CPU split by process: each process named by its role, the tables'
CPU column split when more than one of ours ran."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT
from tests.e2e.harness import wait_until

sys.path.insert(0, str(ROOT / "bench"))

from _report import _services  # noqa: E402
from _util import TreeSampler, process_name  # noqa: E402


def test_a_process_is_named_by_its_archive_cli_subcommand_else_its_program() -> None:
    wait = "import sys; sys.stdin.read()"
    role = subprocess.Popen([sys.executable, "-c", wait, "archive.cli", "indexer", "--worker-child"],
                            stdin=subprocess.PIPE)
    plain = subprocess.Popen([sys.executable, "-c", wait], stdin=subprocess.PIPE)
    try:
        # Popen returns once exec has begun; the arguments can be read a moment later
        assert wait_until(lambda: process_name(role.pid), timeout=10, interval=0.01) == "indexer"
        assert wait_until(lambda: process_name(plain.pid), timeout=10, interval=0.01) == Path(sys.executable).name
    finally:
        for proc in (role, plain):
            proc.communicate(b"")


def test_the_sampler_splits_a_tree_s_cpu_by_process() -> None:
    """`serve` and its indexer child, as the bench sees them: the child's CPU under its own name."""
    burn = ("import sys, hashlib\nsys.stdin.readline()\nfor _ in range(100): hashlib.sha256(b'x' * 1000000)"
            "\nprint('done', flush=True)\nsys.stdin.read()")
    spawn = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {burn!r}, 'archive.cli', 'indexer'])"
    parent = subprocess.Popen([sys.executable, "-c", spawn + "; sys.stdin.read()", "archive.cli", "serve"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert parent.stdin is not None and parent.stdout is not None
    try:
        sampler = TreeSampler({"serve": parent.pid}, interval=0.02)
        sampler.start()
        parent.stdin.write(b"go\n")
        parent.stdin.flush()
        assert parent.stdout.readline() == b"done\n"  # the child has burnt its CPU and waits
        usage = sampler.stop()["serve"]
    finally:
        parent.communicate(b"")
    split = usage["by_process"]
    assert set(split) <= {"serve", "indexer"}
    assert split["indexer"] > split.get("serve", 0.0)
    assert abs(sum(split.values()) - usage["cpu_s"]) < 1e-9


def test_the_cpu_column_shows_the_split_only_for_several_processes() -> None:
    assert _services({"cpu_ms_by_process": {"indexer": 1.25, "serve": 2.5}}) == " (indexer 1.2, serve 2.5)"
    assert _services({"cpu_ms_by_process": {"Orthanc": 3.0}}) == ""
    assert _services({"cpu_ms_by_process": {"scp": 1.0, "query": 0.1}, "services_cpu_ms_per_instance": 9.0}) \
        == " (scp 1.0, query 0.1) (+9.0 services)"
