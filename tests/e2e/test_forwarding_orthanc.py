"""Forwarding to Orthanc, the Debian package: by C-STORE to one Orthanc (an AE title of
ARCHIVE_AE_CONFIG) and by STOW-RS to another's DICOMweb plugin (a base URL named in the rules),
with an attribute changed on the way."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom import dcmread

from tests.e2e.dicomweb_peers import orthanc_dicomweb
from tests.e2e.dimse_peers import OrthancPeer, rest
from tests.e2e.harness import http_json, serve, wait_until
from tests.e2e.senders import storescu
from tests.e2e.test_forwarding import _cli, _series
from tests.conftest import free_port

pytestmark = pytest.mark.dcmtk


def _orthanc_instances(peer: OrthancPeer) -> list[str]:
    status, body = rest(f"{peer.url}/instances?expand", timeout=10)
    assert status == 200
    return sorted(i["MainDicomTags"]["SOPInstanceUID"] for i in body)


def test_forward_to_orthanc_by_cstore_and_by_stow_rs(tmp_path: Path) -> None:
    archive_port = free_port()
    dimse = OrthancPeer(tmp_path / "orthanc-dimse", archive_port).start()
    web = orthanc_dicomweb(tmp_path / "orthanc-web", archive_port).start()
    try:
        ae_config = tmp_path / "aes.yaml"
        ae_config.write_text(f"aes:\n  MODALITY:\n    permissions: [store]\n"
                             f"  ORTHANC:\n    host: 127.0.0.1\n    port: {dimse.dicom_port}\n")
        web_url = f"{web.url}/dicom-web"
        rules = tmp_path / "rules.yaml"
        rules.write_text(f"""
rules:
  - name: to-orthanc
    destinations: [ORTHANC]
  - name: to-web
    match: {{Modality: CT}}
    destinations: ["{web_url}"]
    prefix: {{AccessionNumber: "WEB-"}}
""")
        archive = serve(tmp_path, ARCHIVE_ROUTING_RULES=str(rules), ARCHIVE_AE_CONFIG=str(ae_config))
        archive.dicom_port = archive_port
        archive.start()
        try:
            assert _cli(archive, "rules", "check", str(rules)).returncode == 0
            ct, ct_uids = _series(tmp_path, "CT", 6)
            mr, mr_uids = _series(tmp_path, "MR", 2)
            assert storescu(archive.dicom_port, ct + mr, calling_aet="MODALITY").returncode == 0
            wait_until(lambda: _orthanc_instances(dimse) == sorted(ct_uids + mr_uids), timeout=90)
            wait_until(lambda: _orthanc_instances(web) == sorted(ct_uids), timeout=90)
            status, body = rest(f"{web.url}/studies?expand", timeout=10)
            assert [s["MainDicomTags"].get("AccessionNumber") for s in body] == ["WEB-ACC-1"]
            status, body = rest(f"{dimse.url}/studies?expand", timeout=10)
            assert sorted(s["MainDicomTags"].get("AccessionNumber") for s in body) == ["ACC-1", "ACC-1"]
            study = str(dcmread(ct[0]).StudyInstanceUID)

            def ledger() -> list[tuple[str, str]]:
                rows = http_json(f"{archive.http}/api/forwarding?study={study}&limit=100")[1]["forwards"]
                return sorted((r["destination"], r["outcome"]) for r in rows)

            # A peer holds an instance a moment before the forwarder records it as sent: wait for the ledger.
            expected = sorted([("ORTHANC", "sent")] * 6 + [(web_url, "sent")] * 6)
            wait_until(lambda: ledger() == expected, timeout=30)
            assert ledger() == expected
        finally:
            archive.stop()
    finally:
        dimse.stop()
        web.stop()
