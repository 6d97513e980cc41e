"""Forwarding rules end to end: `dicom-archive serve` with ARCHIVE_ROUTING_RULES, DCMTK storescp as
the destination (every file it receives kept under a unique name, so a duplicate would show).

What each test expects is computed from the data it sends, never read back from our catalog.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless

from tests.conftest import free_port, require_tool
from tests.e2e.harness import ArchiveProcess, http_json, listening, metric, process_tree, serve, wait_until
from tests.e2e.senders import storescu
from tests.factories import make_ct, new_uid, write_part10

pytestmark = pytest.mark.dcmtk


@dataclass
class Destination:
    """storescp keeping every file it receives (``-uf``: a name of its own per file)."""

    directory: Path
    port: int = field(default_factory=free_port)
    aet: str = "PACS"
    extra: tuple[str, ...] = ()
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> "Destination":
        self.directory.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen([require_tool("storescp"), "-aet", self.aet, "-uf", *self.extra,
                                      "-od", str(self.directory), str(self.port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        proc = self.proc
        wait_until(lambda: listening(self.port) or proc.poll() is not None, timeout=10)
        assert proc.poll() is None, f"storescp exited with {proc.returncode}"
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)

    def files(self) -> list[Path]:
        return [p for p in self.directory.iterdir() if p.is_file()] if self.directory.exists() else []

    def received(self) -> Counter[str]:
        """SOP Instance UID -> how many times it arrived (only complete files count)."""
        out: Counter[str] = Counter()
        for path in self.files():
            try:
                out[str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)] += 1
            except Exception:
                pass  # still being written
        return out


def _rules(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "rules.yaml"
    path.write_text(text)
    return path


def _archive(tmp_path: Path, rules: Path, dest: Destination, **env: str) -> ArchiveProcess:
    return serve(tmp_path, ARCHIVE_ROUTING_RULES=str(rules), ARCHIVE_PEERS=f"{dest.aet}@127.0.0.1:{dest.port}",
                 **env).start()


def _series(tmp_path: Path, modality: str, count: int, **kw: str) -> tuple[list[Path], list[str]]:
    study, series = new_uid(), new_uid()
    files, uids = [], []
    out = tmp_path / "send" / f"{modality}-{series[-8:]}"
    out.mkdir(parents=True, exist_ok=True)
    for n in range(count):
        ds = make_ct(study_uid=study, series_uid=series, modality=modality, instance_number=n + 1, size=16, seed=n,
                     **kw)
        files.append(write_part10(ds, out / f"{n}.dcm"))
        uids.append(str(ds.SOPInstanceUID))
    return files, uids


def _cli(archive: ArchiveProcess, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **archive.env}
    return subprocess.run([sys.executable, "-m", "archive.cli", *args], env=env, capture_output=True, text=True,
                          timeout=60)


def _ledger(archive: ArchiveProcess, study: str) -> list[dict[str, object]]:
    result = _cli(archive, "forwards", "--study", study, "--json", "--limit", "1000")
    assert result.returncode == 0, result.stderr
    rows: list[dict[str, object]] = json.loads(result.stdout)
    return rows


def test_rules_forward_matching_instances_with_changes_on_the_way(tmp_path: Path) -> None:
    dest = Destination(tmp_path / "pacs").start()
    rules = _rules(tmp_path, """
rules:
  - name: ct-to-pacs
    match: {Modality: CT, StudyDate: 20240101-20241231}
    trigger: instance
    destinations: [PACS]
    set: {InstitutionName: Forwarded Hospital}
    prefix: {AccessionNumber: "EXT-"}
  - name: only-from-ct2
    match: {Modality: MR}
    calling_aet: [CT2]
    destinations: [PACS]
""")
    archive = _archive(tmp_path, rules, dest)
    try:
        ct_files, ct_uids = _series(tmp_path, "CT", 5)
        mr_files, mr_uids = _series(tmp_path, "MR", 2)
        old_files, _ = _series(tmp_path, "CT", 2, study_date="20230101")  # outside the date range
        assert storescu(archive.dicom_port, ct_files + mr_files + old_files, calling_aet="CT1").returncode == 0
        wait_until(lambda: set(dest.received()) >= set(ct_uids), timeout=60)
        study = str(dcmread(ct_files[0]).StudyInstanceUID)
        rows = wait_until(lambda: [r for r in _ledger(archive, study) if r["outcome"] == "sent"], timeout=30)
        assert {r["sop_instance_uid"] for r in rows} == set(ct_uids)
        assert {r["rule"] for r in rows} == {"ct-to-pacs"} and {r["destination"] for r in rows} == {"PACS"}
        # the MR of another calling AE and the CT outside the range are not forwarded
        mr_from_ct2, mr_uids2 = _series(tmp_path, "MR", 1)
        assert storescu(archive.dicom_port, mr_from_ct2, calling_aet="CT2").returncode == 0
        wait_until(lambda: mr_uids2[0] in dest.received(), timeout=60)
        received = dest.received()
        assert set(received) == set(ct_uids) | set(mr_uids2), "only what the rules match"
        assert all(n == 1 for n in received.values()), f"duplicates: {received}"
        for path in dest.files():
            ds = dcmread(path)
            if ds.Modality == "CT":
                assert ds.InstitutionName == "Forwarded Hospital" and ds.AccessionNumber == "EXT-ACC-1"
                assert ds.PixelData == make_ct(size=16, seed=int(ds.InstanceNumber) - 1).PixelData
            else:
                assert ds.InstitutionName == "General Hospital" and ds.AccessionNumber == "ACC-1"
        # the stored copy is unchanged
        status, meta = http_json(f"{archive.http}/dicom-web/studies/{study}/metadata")
        assert status == 200
        assert {m["00080080"]["Value"][0] for m in meta} == {"General Hospital"}
        assert {m["00080050"]["Value"][0] for m in meta} == {"ACC-1"}
        wait_until(lambda: metric(archive, "archive_forwarded_instances_total", destination="PACS",
                                   outcome="sent") == 6, timeout=30)  # counted once the ledger has it
        # the audit trail: DICOM Instances Transferred (action R), the archive sending to PACS, per study
        log = Path(archive.env["ARCHIVE_DATA_DIR"]) / "audit" / "audit.log"
        sent = wait_until(lambda: [ET.fromstring(line) for line in log.read_text().splitlines()
                                   if study in line and 'EventActionCode="R"' in line and '"110104"' in line],
                          timeout=10)
        participants = {p.get("UserID") for p in sent[0].findall("ActiveParticipant")}
        assert {"ARCHIVE", "PACS"} <= participants, participants
        assert sum(int(c.get("NumberOfInstances", "0")) for m in sent
                   for c in m.findall("ParticipantObjectIdentification/ParticipantObjectDescription/SOPClass")) == 5
        assert [o.get("ParticipantObjectID") for o in sent[0].findall("ParticipantObjectIdentification")][1] == "PAT-1"
        assert not set(mr_uids) & set(received)
    finally:
        archive.stop()
        dest.stop()


def test_destination_down_then_back_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    dest = Destination(tmp_path / "pacs")  # not started: the port is closed
    rules = _rules(tmp_path, "rules:\n  - name: all\n    destinations: [PACS]\n")
    archive = _archive(tmp_path, rules, dest)
    try:
        files, uids = _series(tmp_path, "CT", 12)
        assert storescu(archive.dicom_port, files).returncode == 0
        wait_until(lambda: metric(archive, "archive_forward_unreachable_total", destination="PACS") >= 1, timeout=60)
        # ingest and queries go on while the destination is down
        more, more_uids = _series(tmp_path, "CT", 3)
        assert storescu(archive.dicom_port, more).returncode == 0
        study = str(dcmread(more[0]).StudyInstanceUID)
        wait_until(lambda: len(http_json(f"{archive.http}/dicom-web/studies/{study}/instances")[1] or []) == 3)
        dest.start()
        wait_until(lambda: set(dest.received()) == set(uids + more_uids), timeout=120)
        received = dest.received()
        assert all(n == 1 for n in received.values()), f"duplicates: {received}"
        assert len(dest.files()) == 15
    finally:
        archive.stop()
        dest.stop()


def _rle_instance(path: Path) -> tuple[Path, bytes]:
    ds = make_ct(size=32, seed=7)
    pixels = np.frombuffer(ds.PixelData, dtype=np.uint16).reshape(32, 32)
    ds.compress(RLELossless, pixels, generate_instance_uid=False)
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(path, enforce_file_format=True)
    return path, pixels.tobytes()


def test_a_peer_without_the_stored_syntax_gets_it_transcoded(tmp_path: Path) -> None:
    dest = Destination(tmp_path / "pacs", extra=("+xi",)).start()  # storescp: uncompressed only, implicit first
    rules = _rules(tmp_path, "rules:\n  - name: all\n    destinations: [PACS]\n")
    archive = _archive(tmp_path, rules, dest)
    try:
        path, pixels = _rle_instance(tmp_path / "rle.dcm")
        assert storescu(archive.dicom_port, [path], extra=["-xr"]).returncode == 0  # propose RLE: stored as RLE
        uid = str(dcmread(path).SOPInstanceUID)
        wait_until(lambda: uid in dest.received(), timeout=60)
        got = dcmread(dest.files()[0])
        assert got.file_meta.TransferSyntaxUID in (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
        assert got.PixelData == pixels
        stored = _cli(archive, "forwards", "--json")
        assert json.loads(stored.stdout)[0]["outcome"] == "sent"
    finally:
        archive.stop()
        dest.stop()


def test_forwarder_killed_mid_batch_loses_nothing(tmp_path: Path) -> None:
    dest = Destination(tmp_path / "pacs").start()
    rules = _rules(tmp_path, "rules:\n  - name: all\n    destinations: [PACS]\n")
    archive = _archive(tmp_path, rules, dest, ARCHIVE_FORWARD_BATCH="5")
    try:
        files, uids = _series(tmp_path, "CT", 60)
        assert archive.proc is not None
        assert storescu(archive.dicom_port, files).returncode == 0

        def forwarder() -> int | None:
            for pid in process_tree(archive.proc.pid):  # type: ignore[union-attr]
                try:
                    if b"forwarder" in Path(f"/proc/{pid}/cmdline").read_bytes():
                        return pid
                except OSError:
                    pass
            return None

        wait_until(lambda: len(dest.received()) >= 5, timeout=60)
        pid = wait_until(forwarder, timeout=10)
        os.kill(pid, signal.SIGKILL)  # serve restarts it
        wait_until(lambda: (forwarder() or pid) != pid, timeout=30)
        wait_until(lambda: set(dest.received()) == set(uids), timeout=120)
        received = dest.received()
        extra = sum(received.values()) - len(uids)
        assert extra <= 5, f"more re-sent than one batch: {extra}"  # the window the ledger leaves open
    finally:
        archive.stop()
        dest.stop()


def test_manual_send_and_rules_check(tmp_path: Path) -> None:
    dest = Destination(tmp_path / "pacs").start()
    rules = _rules(tmp_path, "rules: []\n")
    archive = _archive(tmp_path, rules, dest)
    try:
        files, uids = _series(tmp_path, "MR", 4)
        study = str(dcmread(files[0]).StudyInstanceUID)
        series = str(dcmread(files[0]).SeriesInstanceUID)
        assert storescu(archive.dicom_port, files).returncode == 0
        wait_until(lambda: len(http_json(f"{archive.http}/dicom-web/studies/{study}/instances")[1] or []) == 4)
        assert dest.received() == Counter()  # no rule sent anything
        # the forwarder starts with a destination named by the rules: name PACS now (reloaded)
        rules.write_text("rules:\n  - name: none\n    match: {Modality: XX}\n    destinations: [PACS]\n")
        result = _cli(archive, "send", study, "PACS", "--series", series)
        assert result.returncode == 0, result.stderr
        wait_until(lambda: set(dest.received()) == set(uids), timeout=60)
        assert {r["rule"] for r in _ledger(archive, study)} == {"manual"}
        # over HTTP: the same study again; the ledger knows it was sent, nothing goes twice
        status, body = http_json(f"{archive.http}/api/studies/{study}/send", payload={"destination": "PACS"})
        assert (status, body) == (202, {"destination": "PACS", "queued": 4})
        wait_until(lambda: metric(archive, "archive_forwarded_instances_total", destination="PACS",
                                   outcome="already_sent") == 4, timeout=30)
        assert sum(dest.received().values()) == 4
        status, body = http_json(f"{archive.http}/api/forwarding?study={study}")
        assert status == 200 and body["destinations"] == [{"destination": "PACS", "ready": 0, "dead": 0}]
        assert sorted(f["instance"] for f in body["forwards"]) == sorted(uids)
        assert {(f["outcome"], f["detail"]) for f in body["forwards"]} == {("sent", "0x0000")}
        for payload, code in (({"destination": "NOWHERE"}, 400), ({"destination": "PACS", "series": "x/../y"}, 400),
                              ({"destination": "PACS", "extra": 1}, 400), ({"destination": "PACS", "series": new_uid()}, 404)):
            assert http_json(f"{archive.http}/api/studies/{study}/send", payload=payload)[0] == code, payload
        unknown = _cli(archive, "send", study, "NOWHERE")
        assert unknown.returncode == 2 and "not a configured peer" in unknown.stderr
        nothing = _cli(archive, "send", new_uid(), "PACS")
        assert nothing.returncode == 1
        # rules check: valid, an unknown destination, an unknown keyword
        assert _cli(archive, "rules", "check", str(rules)).returncode == 0
        bad = tmp_path / "bad.yaml"
        bad.write_text("rules:\n  - name: x\n    destinations: [ELSEWHERE]\n")
        result = _cli(archive, "rules", "check", str(bad))
        assert result.returncode == 1 and "ELSEWHERE" in result.stderr and "not a configured peer" in result.stderr
        bad.write_text("rules:\n  - name: x\n    match: {NotAKeyword: 1}\n    destinations: [PACS]\n")
        result = _cli(archive, "rules", "check", str(bad))
        assert result.returncode == 1 and "NotAKeyword" in result.stderr
    finally:
        archive.stop()
        dest.stop()


def test_a_stable_rule_sends_the_study_once_it_is_quiet_and_again_after_more(tmp_path: Path) -> None:
    dest = Destination(tmp_path / "pacs").start()
    rules = _rules(tmp_path, """
rules:
  - name: stable-ct
    match: {Modality: CT}
    trigger: stable
    stable_seconds: 2
    destinations: [PACS]
""")
    archive = _archive(tmp_path, rules, dest, ARCHIVE_STUDY_STABLE_SECONDS="2")
    try:
        files, uids = _series(tmp_path, "CT", 5)
        study = str(dcmread(files[0]).StudyInstanceUID)
        assert storescu(archive.dicom_port, files[:3]).returncode == 0
        wait_until(lambda: len(http_json(f"{archive.http}/dicom-web/studies/{study}/instances")[1] or []) == 3)
        assert storescu(archive.dicom_port, files[3:]).returncode == 0  # within the quiet time
        wait_until(lambda: set(dest.received()) == set(uids), timeout=60)

        def stable_entries() -> list[dict[str, object]]:
            feed = http_json(f"{archive.http}/api/changes?limit=1000")[1]["changes"]
            return [c for c in feed if c["action"] == "stable"]

        (entry,) = wait_until(stable_entries, timeout=30)
        assert (entry["study"], entry["series"], entry["instance"]) == (study, None, None)
        # more instances of the study later: stable again, and only the new ones go (the ledger)
        more = []
        for n in (5, 6):
            ds = dcmread(files[0])
            ds.SOPInstanceUID, ds.InstanceNumber = new_uid(), n + 1
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            ds.save_as(tmp_path / f"more{n}.dcm")
            more.append(tmp_path / f"more{n}.dcm")
        assert storescu(archive.dicom_port, more).returncode == 0
        wait_until(lambda: len(stable_entries()) == 2, timeout=60)
        wait_until(lambda: len(dest.received()) == 7, timeout=60)
        received = dest.received()
        assert all(n == 1 for n in received.values()), f"duplicates: {received}"
        wait_until(lambda: metric(archive, "archive_forwarded_instances_total", destination="PACS",
                                   outcome="already_sent") == 5, timeout=30)
    finally:
        archive.stop()
        dest.stop()


def test_stow_rs_to_another_archive_with_an_api_key_failures_and_dead_letters(tmp_path: Path) -> None:
    (tmp_path / "other").mkdir()
    other = serve(tmp_path / "other", ARCHIVE_DUPLICATE_POLICY="reject").start()
    try:
        created = _cli(other, "api-key", "create", "forwarder", "--role", "writer")
        assert created.returncode == 0, created.stderr
        (tmp_path / "key").write_text(created.stdout.strip() + "\n")
        (tmp_path / "bad-key").write_text("dka_" + "0" * 43 + "\n")
        aes = tmp_path / "aes.yaml"
        aes.write_text(f"""aes:
  STORESCU: {{permissions: [store]}}
  OTHER: {{url: "{other.http}/dicom-web", token_file: "{tmp_path / 'key'}"}}
  LOCKED: {{url: "{other.http}/dicom-web", token_file: "{tmp_path / 'bad-key'}"}}
""")
        rules = _rules(tmp_path, "rules:\n  - name: all\n    destinations: [OTHER, LOCKED]\n")
        archive = serve(tmp_path, ARCHIVE_ROUTING_RULES=str(rules), ARCHIVE_AE_CONFIG=str(aes),
                        ARCHIVE_FORWARD_ATTEMPTS="2").start()
        try:
            files, uids = _series(tmp_path, "CT", 4)
            # the other archive holds a different object under the last UID: it refuses that one (reject policy)
            clash = dcmread(files[-1])
            clash.PatientName = "Other^Content"
            write_part10(clash, tmp_path / "clash.dcm")
            assert storescu(other.dicom_port, [tmp_path / "clash.dcm"]).returncode == 0
            assert storescu(archive.dicom_port, files).returncode == 0
            study = str(dcmread(files[0]).StudyInstanceUID)

            def outcomes() -> dict[str, str]:
                rows = http_json(f"{archive.http}/api/forwarding?study={study}")[1]["forwards"]
                return {r["instance"]: r["outcome"] for r in rows if r["destination"] == "OTHER"}

            wait_until(lambda: sorted(outcomes().values()) == ["failed", "sent", "sent", "sent"], timeout=60)
            assert outcomes()[uids[-1]] == "failed"
            def found() -> list[str]:  # "sent": stored and queued there; indexed a moment later
                rows = http_json(f"{other.http}/dicom-web/studies/{study}/instances")[1] or []
                return sorted(i["00080018"]["Value"][0] for i in rows)

            wait_until(lambda: found() == sorted(uids), timeout=30)
            assert found() == sorted(uids)  # the clash is the other's
            # refused twice (ARCHIVE_FORWARD_ATTEMPTS=2): in OTHER's dead-letter queue, listed and replayable
            def dead() -> dict[str, object]:
                result = _cli(archive, "dead-letters", "--destination", "OTHER", "--json")
                return json.loads(result.stdout) if result.returncode == 0 else {}

            letters = wait_until(lambda: (d := dead()) and d["dead"] == 1 and d, timeout=60)
            assert letters["messages"][0]["sop_instance_uid"] == uids[-1]  # type: ignore[index]
            # the wrong key: 401, the destination counts as unreachable and its jobs wait
            wait_until(lambda: metric(archive, "archive_forward_unreachable_total", destination="LOCKED") >= 1)
            queues = {q["destination"]: q for q in http_json(f"{archive.http}/api/forwarding")[1]["destinations"]}
            assert queues["LOCKED"]["ready"] == 4 and queues["LOCKED"]["dead"] == 0
            assert queues["OTHER"]["dead"] == 1
        finally:
            archive.stop()
    finally:
        other.stop()
