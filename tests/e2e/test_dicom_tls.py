"""DICOM over TLS (PS3.15 Annex B) and per-AE permissions (ARCHIVE_AE_CONFIG) against `serve`.

Clients: DCMTK storescu/findscu/echoscu with +tls (Debian's movescu and getscu have no TLS
options) and pynetdicom with ``tls_args``; the C-MOVE destination is DCMTK storescp +tls, which
requires our client certificate. The PKI is made here, in a tmp dir (:mod:`tests.e2e.pki`).
"""

from __future__ import annotations

import socket
import ssl
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    StorageCommitmentPushModel,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from tests.conftest import free_port, require_tool
from tests.e2e.harness import ArchiveProcess, http_json, listening, serve, wait_until
from tests.e2e.pki import CA, Identity
from tests.e2e.senders import rejection_of
from tests.factories import make_ct, new_uid, write_part10

pytestmark = pytest.mark.dcmtk
NOT_AUTHORIZED = 0x0124


@dataclass(frozen=True)
class PKI:
    ca: CA
    archive: Identity
    modality: Identity  # CN=MODALITY: may only store
    workstation: Identity  # CN=WORKSTATION: may query, retrieve, commit
    dest: Identity  # the C-MOVE destination's server certificate
    expired: Identity  # CN=MODALITY, expired yesterday
    rogue: Identity  # CN=MODALITY from another CA


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    directory = tmp_path_factory.mktemp("pki")
    ca = CA(directory)
    rogue = CA(directory / "rogue", "Rogue CA").issue("MODALITY", stem="rogue-modality")
    return PKI(ca, ca.issue("archive", hosts=("localhost", "127.0.0.1")), ca.issue("MODALITY"),
               ca.issue("WORKSTATION"), ca.issue("DEST", hosts=("127.0.0.1",)),
               ca.issue("MODALITY", stem="expired-modality", expired=True), rogue)


def tls_flags(identity: Identity | None, ca: CA) -> list[str]:
    """DCMTK's TLS options: our certificate (or anonymous TLS) and the CA the server is checked against."""
    own = ["+tls", str(identity.key), str(identity.cert)] if identity else ["+tla"]
    return [*own, "+cf", str(ca.pem)]


@dataclass
class TLSStoreSCP:
    """DCMTK storescp over TLS, requiring a client certificate of our CA (the archive's)."""

    directory: Path
    pki: PKI
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> "TLSStoreSCP":
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.proc = subprocess.Popen(
            [require_tool("storescp"), *tls_flags(self.pki.dest, self.pki.ca), "-aet", "DEST", "-od",
             str(self.directory), str(self.port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        proc = self.proc
        wait_until(lambda: listening(self.port) or proc.poll() is not None, timeout=10)
        assert proc.poll() is None, f"storescp exited with {proc.returncode}"
        return self

    def received(self) -> list[Path]:
        return [p for p in self.directory.iterdir() if p.is_file()]

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


@pytest.fixture(scope="module")
def dest(pki: PKI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TLSStoreSCP]:
    peer = TLSStoreSCP(tmp_path_factory.mktemp("dest"), pki).start()
    yield peer
    peer.stop()


@pytest.fixture(scope="module")
def archive(pki: PKI, dest: TLSStoreSCP, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ArchiveProcess]:
    """`serve` (asyncio engine on the plain port) with mutual TLS and per-AE permissions."""
    workdir = tmp_path_factory.mktemp("archive")
    config = workdir / "aes.yaml"
    config.write_text(f"""aes:
  MODALITY: {{permissions: [store]}}
  WORKSTATION: {{permissions: [query, retrieve, commit]}}
  DEST: {{host: 127.0.0.1, port: {dest.port}, tls: true}}
""")
    proc = serve(workdir, ARCHIVE_TLS_CERT=str(pki.archive.cert), ARCHIVE_TLS_KEY=str(pki.archive.key),
                 ARCHIVE_TLS_CLIENT_CA=str(pki.ca.pem), ARCHIVE_DICOM_TLS_PORT=str(free_port()),
                 ARCHIVE_AE_CONFIG=str(config), ARCHIVE_ACSE_TIMEOUT="5").start()
    yield proc
    proc.stop()


def tls_port(archive: ArchiveProcess) -> int:
    return int(archive.env["ARCHIVE_DICOM_TLS_PORT"])


def client_context(pki: PKI, identity: Identity | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki.ca.pem))
    if identity is not None:
        context.load_cert_chain(str(identity.cert), str(identity.key))
    return context


def associate(port: int, calling_aet: str, contexts: Sequence[Any], *, tls: ssl.SSLContext | None = None) -> Any:
    ae = AE(ae_title=calling_aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    for context in contexts:
        ae.add_requested_context(context, [ExplicitVRLittleEndian])
    return ae.associate("127.0.0.1", port, ae_title="ARCHIVE", tls_args=(tls, "127.0.0.1") if tls else None)


def study_file(directory: Path, study_uid: str | None = None) -> tuple[Path, Dataset]:
    ds = make_ct(study_uid=study_uid or new_uid(), size=16)
    return write_part10(ds, directory / f"{ds.SOPInstanceUID}.dcm"), ds


def storescu(port: int, files: Sequence[Path], calling_aet: str, flags: Sequence[str] = ()) -> subprocess.CompletedProcess[str]:
    return subprocess.run([require_tool("storescu"), *flags, "-aet", calling_aet, "-aec", "ARCHIVE", "127.0.0.1",
                           str(port), *map(str, files)], capture_output=True, text=True, timeout=60)


def indexed(archive: ArchiveProcess, study_uid: str) -> bool:
    status, body = http_json(f"{archive.http}/dicom-web/studies?StudyInstanceUID={study_uid}")
    return status == 200 and bool(body)


def find_identifier(study_uid: str) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = study_uid
    return ds


# --- store, find, move over TLS ----------------------------------------------------------------

def test_store_find_and_move_over_mutual_tls(archive: ArchiveProcess, pki: PKI, dest: TLSStoreSCP,
                                             tmp_path: Path) -> None:
    path, ds = study_file(tmp_path)
    sent = storescu(tls_port(archive), [path], "MODALITY", tls_flags(pki.modality, pki.ca))
    assert sent.returncode == 0 and "E:" not in sent.stderr, sent.stderr
    wait_until(lambda: indexed(archive, ds.StudyInstanceUID), timeout=30)

    out = tmp_path / "found"
    out.mkdir()
    found = subprocess.run(
        [require_tool("findscu"), *tls_flags(pki.workstation, pki.ca), "-S", "-aet", "WORKSTATION", "-aec", "ARCHIVE",
         "-X", "-od", str(out), "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={ds.StudyInstanceUID}",
         "127.0.0.1", str(tls_port(archive))], capture_output=True, text=True, timeout=60)
    assert found.returncode == 0, found.stderr
    assert len(list(out.glob("rsp*.dcm"))) == 1

    # C-MOVE to a destination reached over TLS (our client certificate, its server certificate checked)
    assoc = associate(tls_port(archive), "WORKSTATION", [StudyRootQueryRetrieveInformationModelMove],
                      tls=client_context(pki, pki.workstation))
    assert assoc.is_established
    try:
        statuses = [int(s.Status) for s, _ in assoc.send_c_move(
            find_identifier(ds.StudyInstanceUID), "DEST", StudyRootQueryRetrieveInformationModelMove)]
    finally:
        assoc.release()
    assert statuses[-1] == 0x0000, [hex(s) for s in statuses]
    assert ds.SOPInstanceUID in {p.stem for p in dest.received()} or any(
        ds.SOPInstanceUID in p.name for p in dest.received())


# --- what never gets through -----------------------------------------------------------------

@pytest.mark.parametrize("who", ["rogue", "expired", "anonymous"])
def test_a_certificate_not_signed_by_the_ca_an_expired_one_or_none_fails_the_handshake(
        archive: ArchiveProcess, pki: PKI, tmp_path: Path, who: str) -> None:
    identity = {"rogue": pki.rogue, "expired": pki.expired, "anonymous": None}[who]
    path, ds = study_file(tmp_path)
    sent = storescu(tls_port(archive), [path], "MODALITY", tls_flags(identity, pki.ca))
    assert sent.returncode != 0, sent.stderr
    wait_until(lambda: "TLS handshake failed" in archive.log_tail(200), timeout=10)
    assert not indexed(archive, ds.StudyInstanceUID)
    wait_until(lambda: "tls refused: TLS: " in audit_log(archive), timeout=10)  # a Security Alert


def test_plain_tcp_to_the_tls_port_and_tls_to_the_plain_port_fail(archive: ArchiveProcess, pki: PKI) -> None:
    echo = require_tool("echoscu")
    plain_to_tls = subprocess.run([echo, "-aet", "MODALITY", "-aec", "ARCHIVE", "127.0.0.1", str(tls_port(archive))],
                                  capture_output=True, text=True, timeout=60)
    assert plain_to_tls.returncode != 0
    tls_to_plain = subprocess.run([echo, *tls_flags(pki.modality, pki.ca), "-aet", "MODALITY", "-aec", "ARCHIVE",
                                   "127.0.0.1", str(archive.dicom_port)], capture_output=True, text=True, timeout=60)
    assert tls_to_plain.returncode != 0
    # both ports still serve
    ok = subprocess.run([echo, *tls_flags(pki.modality, pki.ca), "-aet", "MODALITY", "-aec", "ARCHIVE", "127.0.0.1",
                         str(tls_port(archive))], capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert subprocess.run([echo, "-aet", "MODALITY", "-aec", "ARCHIVE", "127.0.0.1", str(archive.dicom_port)],
                          capture_output=True, timeout=60).returncode == 0


def test_a_silent_client_does_not_hold_up_the_tls_port(archive: ArchiveProcess, pki: PKI) -> None:
    """The handshake runs in the association's thread: a connection that sends nothing waits alone."""
    with socket.create_connection(("127.0.0.1", tls_port(archive))):
        ok = subprocess.run([require_tool("echoscu"), *tls_flags(pki.modality, pki.ca), "-aet", "MODALITY", "-aec",
                             "ARCHIVE", "127.0.0.1", str(tls_port(archive))], capture_output=True, text=True,
                            timeout=20)
    assert ok.returncode == 0, ok.stderr


def test_connections_stuck_in_their_handshake_are_capped(pki: PKI, tmp_path: Path) -> None:
    """At most ARCHIVE_MAX_ASSOCIATIONS connections wait in their handshake (a thread each); more are
    closed at once, and the port serves again when they are gone."""
    port = free_port()
    proc = serve(tmp_path, ARCHIVE_MAX_ASSOCIATIONS="2", ARCHIVE_TLS_CERT=str(pki.archive.cert),
                 ARCHIVE_TLS_KEY=str(pki.archive.key), ARCHIVE_DICOM_TLS_PORT=str(port)).start()
    echo = [require_tool("echoscu"), *tls_flags(None, pki.ca), "-aet", "ANY", "-aec", "ARCHIVE", "127.0.0.1", str(port)]
    try:
        silent = [socket.create_connection(("127.0.0.1", port)) for _ in range(2)]
        try:
            refused = subprocess.run(echo, capture_output=True, text=True, timeout=30)
            assert refused.returncode != 0
            wait_until(lambda: "too many handshakes in progress" in proc.log_tail(50), timeout=10)
        finally:
            for sock in silent:
                sock.close()
        wait_until(lambda: subprocess.run(echo, capture_output=True, timeout=30).returncode == 0, timeout=20)
    finally:
        proc.stop()


def test_the_certificate_binds_the_calling_ae_title(archive: ArchiveProcess, pki: PKI) -> None:
    as_itself = associate(tls_port(archive), "MODALITY", [Verification], tls=client_context(pki, pki.modality))
    assert as_itself.is_established
    as_itself.release()
    impostor = associate(tls_port(archive), "WORKSTATION", [Verification], tls=client_context(pki, pki.modality))
    rejection = rejection_of(impostor)
    assert rejection is not None and (rejection.result, rejection.diagnostic) == (0x01, 0x03)


def test_an_unknown_calling_ae_is_rejected_on_both_ports(archive: ArchiveProcess, pki: PKI) -> None:
    plain = associate(archive.dicom_port, "STRANGER", [Verification])
    rejection = rejection_of(plain)
    assert rejection is not None and (rejection.result, rejection.diagnostic) == (0x01, 0x03)
    stranger = pki.ca.issue("STRANGER")
    over_tls = associate(tls_port(archive), "STRANGER", [Verification], tls=client_context(pki, stranger))
    rejection = rejection_of(over_tls)
    assert rejection is not None and (rejection.result, rejection.diagnostic) == (0x01, 0x03)


# --- per-AE permissions -----------------------------------------------------------------------

def _store_status(port: int, calling_aet: str, path: Path, tls: ssl.SSLContext | None = None) -> int:
    assoc = associate(port, calling_aet, [CTImageStorage], tls=tls)
    assert assoc.is_established
    try:
        return int(assoc.send_c_store(path).Status)
    finally:
        assoc.release()


def test_a_workstation_may_not_store_on_either_engine(archive: ArchiveProcess, pki: PKI, tmp_path: Path) -> None:
    path, _ = study_file(tmp_path)
    # the plain port: the asyncio engine; the TLS port: pynetdicom
    assert _store_status(archive.dicom_port, "WORKSTATION", path) == NOT_AUTHORIZED
    assert _store_status(tls_port(archive), "WORKSTATION", path, client_context(pki, pki.workstation)) == NOT_AUTHORIZED
    assert _store_status(archive.dicom_port, "MODALITY", path) == 0x0000
    assert "operation refused" in archive.log_tail(200)


def test_a_modality_may_not_query_retrieve_or_request_commitment(archive: ArchiveProcess, pki: PKI,
                                                                 dest: TLSStoreSCP) -> None:
    before = len(dest.received())
    models = [StudyRootQueryRetrieveInformationModelFind, StudyRootQueryRetrieveInformationModelMove,
              StudyRootQueryRetrieveInformationModelGet, StorageCommitmentPushModel]
    assoc = associate(tls_port(archive), "MODALITY", models, tls=client_context(pki, pki.modality))
    assert assoc.is_established
    try:
        identifier = find_identifier("1.2.3.4")
        find = [int(s.Status) for s, _ in assoc.send_c_find(identifier, StudyRootQueryRetrieveInformationModelFind)]
        move = [int(s.Status) for s, _ in assoc.send_c_move(identifier, "DEST",
                                                            StudyRootQueryRetrieveInformationModelMove)]
        get = [int(s.Status) for s, _ in assoc.send_c_get(identifier, StudyRootQueryRetrieveInformationModelGet)]
        info = Dataset()
        info.TransactionUID = new_uid()
        ref = Dataset()
        ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = CTImageStorage, new_uid()
        info.ReferencedSOPSequence = [ref]
        status, _ = assoc.send_n_action(info, 1, StorageCommitmentPushModel, "1.2.840.10008.1.20.1.1")
    finally:
        assoc.release()
    assert find == [NOT_AUTHORIZED] and move == [NOT_AUTHORIZED] and get == [NOT_AUTHORIZED]
    assert int(status.Status) == NOT_AUTHORIZED
    assert len(dest.received()) == before  # no destination contacted
    # each refusal is a Security Alert (Use of Restricted Function) in the audit trail's local file
    wait_until(lambda: all(f"{what} refused: no {what} permission (0x0124)" in audit_log(archive)
                           for what in ("query", "retrieve", "commit")), timeout=10)
    assert "110132" in audit_log(archive) and "MODALITY" in audit_log(archive)


def audit_log(archive: ArchiveProcess) -> str:
    """The records of the archive's local audit file (the default, under its data directory)."""
    path = Path(archive.env["ARCHIVE_DATA_DIR"]) / "audit" / "audit.log"
    return path.read_text(errors="replace") if path.exists() else ""


# --- the pynetdicom engine, TLS only ------------------------------------------------------------

def test_pynetdicom_engine_with_the_plain_port_off(pki: PKI, tmp_path: Path) -> None:
    """ARCHIVE_DICOM_PLAIN=false: nothing listens on the plain port; TLS without client certificates
    (anonymous clients, the server's certificate checked); no ARCHIVE_AE_CONFIG: any AE title."""
    port = free_port()
    proc = serve(tmp_path, ARCHIVE_SCP_ENGINE="pynetdicom", ARCHIVE_DICOM_PLAIN="false",
                 ARCHIVE_TLS_CERT=str(pki.archive.cert), ARCHIVE_TLS_KEY=str(pki.archive.key),
                 ARCHIVE_DICOM_TLS_PORT=str(port)).start()
    try:
        assert listening(port) and not listening(proc.dicom_port)
        path, ds = study_file(tmp_path)
        sent = storescu(port, [path], "ANYONE", tls_flags(None, pki.ca))
        assert sent.returncode == 0 and "E:" not in sent.stderr, sent.stderr
        wait_until(lambda: indexed(proc, ds.StudyInstanceUID), timeout=30)
    finally:
        proc.stop()


def test_the_query_role_answers_on_its_own_tls_port(pki: PKI, tmp_path: Path) -> None:
    """`query` (embedded backends suffice): ARCHIVE_QUERY_DICOM_TLS_PORT, mutual TLS, plain port off."""
    tls, plain = free_port(), free_port()
    config = tmp_path / "aes.yaml"
    config.write_text("aes:\n  WORKSTATION: {permissions: [query]}\n")
    proc = ArchiveProcess("query", {
        "ARCHIVE_DATA_DIR": str(tmp_path / "data"), "ARCHIVE_TLS_CERT": str(pki.archive.cert),
        "ARCHIVE_TLS_KEY": str(pki.archive.key), "ARCHIVE_TLS_CLIENT_CA": str(pki.ca.pem),
        "ARCHIVE_QUERY_DICOM_TLS_PORT": str(tls), "ARCHIVE_QUERY_DICOM_PORT": str(plain),
        "ARCHIVE_DICOM_PLAIN": "false", "ARCHIVE_AE_CONFIG": str(config)}, tmp_path / "query.log",
        http_port=free_port()).start()
    try:
        assert listening(tls) and not listening(plain)
        assoc = associate(tls, "WORKSTATION", [StudyRootQueryRetrieveInformationModelFind],
                          tls=client_context(pki, pki.workstation))
        assert assoc.is_established
        try:
            statuses = [int(s.Status) for s, _ in assoc.send_c_find(
                find_identifier(new_uid()), StudyRootQueryRetrieveInformationModelFind)]
        finally:
            assoc.release()
        assert statuses == [0x0000]  # no match, answered
        impostor = associate(tls, "MODALITY", [Verification], tls=client_context(pki, pki.workstation))
        assert not impostor.is_established
    finally:
        proc.stop()
