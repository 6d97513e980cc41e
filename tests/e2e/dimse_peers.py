"""DCMTK query/retrieve tools and peers (storescp, Orthanc) for the DIMSE tests."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset

from tests.conftest import free_port, require_tool
from tests.e2e.harness import http_json, listening, wait_until

MODEL_FLAG = {"patient": "-P", "study": "-S"}


def findscu(port: int, model: str, keys: Sequence[str], out: Path, *, extra: Sequence[str] = ()) -> tuple[int, list[Dataset], str]:
    """Run DCMTK findscu; the response identifiers it extracted, in order."""
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("rsp*.dcm"):
        old.unlink()
    args = [require_tool("findscu"), MODEL_FLAG[model], "-aet", "FINDSCU", "-aec", "ARCHIVE", "-X", "-od", str(out),
            *extra]
    for key in keys:
        args += ["-k", key]
    result = subprocess.run([*args, "127.0.0.1", str(port)], capture_output=True, text=True, errors="replace",
                            timeout=60)
    return result.returncode, [dcmread(p) for p in sorted(out.glob("rsp*.dcm"))], result.stderr


def movescu(port: int, destination: str, keys: Sequence[str], model: str = "study") -> subprocess.CompletedProcess[str]:
    args = [require_tool("movescu"), MODEL_FLAG[model], "-aet", "MOVESCU", "-aec", "ARCHIVE", "-aem", destination]
    for key in keys:
        args += ["-k", key]
    return subprocess.run([*args, "127.0.0.1", str(port)], capture_output=True, text=True, errors="replace",
                          timeout=120)


def getscu(port: int, keys: Sequence[str], out: Path, *, model: str = "study",
           extra: Sequence[str] = ()) -> subprocess.CompletedProcess[str]:
    out.mkdir(parents=True, exist_ok=True)
    args = [require_tool("getscu"), MODEL_FLAG[model], "-aet", "GETSCU", "-aec", "ARCHIVE", "-od", str(out), *extra]
    for key in keys:
        args += ["-k", key]
    return subprocess.run([*args, "127.0.0.1", str(port)], capture_output=True, text=True, errors="replace",
                          timeout=120)


@dataclass
class StoreSCPPeer:
    """DCMTK storescp writing what it receives into a directory."""

    directory: Path
    aet: str = "STORESCP"
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> "StoreSCPPeer":
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.proc = subprocess.Popen(
            [require_tool("storescp"), "-aet", self.aet, "-od", str(self.directory), str(self.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        proc = self.proc
        wait_until(lambda: listening(self.port) or proc.poll() is not None, timeout=10)
        if proc.poll() is not None:
            raise RuntimeError(f"storescp exited with {proc.returncode}")
        return self

    def received(self) -> dict[str, Dataset]:
        return {str(ds.SOPInstanceUID): ds for ds in (dcmread(p) for p in self.directory.iterdir() if p.is_file())}

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


def rest(url: str, payload: Any = None, timeout: float = 60.0) -> tuple[int, Any]:
    return http_json(url, timeout, payload=payload)


@dataclass
class OrthancPeer:
    """Orthanc (Debian package) with our archive configured as a DICOM modality."""

    workdir: Path
    archive_port: int
    aet: str = "ORTHANC"
    dicom_port: int = 0
    http_port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    extra_config: dict[str, Any] = field(default_factory=dict)  # merged into orthanc.json (plugins...)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self) -> "OrthancPeer":
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.dicom_port, self.http_port = free_port(), free_port()
        config = {
            "Name": "peer", "StorageDirectory": str(self.workdir / "storage"),
            "IndexDirectory": str(self.workdir / "index"), "DicomAet": self.aet, "DicomPort": self.dicom_port,
            "HttpPort": self.http_port, "DicomCheckCalledAet": False, "AuthenticationEnabled": False,
            "RemoteAccessAllowed": True, "SaveJobs": False, "Plugins": [],
            "DicomModalities": {"archive": ["ARCHIVE", "127.0.0.1", self.archive_port]},
            **self.extra_config,
        }
        path = self.workdir / "orthanc.json"
        path.write_text(json.dumps(config))
        log = open(self.workdir / "orthanc.log", "ab")
        self.proc = subprocess.Popen([require_tool("Orthanc"), str(path)], stdout=log, stderr=subprocess.STDOUT,
                                     env={**os.environ, "TCP_NODELAY": "1"})
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if rest(f"{self.url}/system", timeout=2)[0] == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.2)
        raise TimeoutError("Orthanc did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=20)
