"""ARCHIVE_AE_CONFIG: the parser (every error names the file, the AE title and the key), how the
shorthands combine with it, and what the access policy decides from it."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from archive.ae_config import ALL_PERMISSIONS, AEConfigError, Permission, PeerTLS, Subject, load, parse
from archive.scp.access import NOT_AUTHORIZED, AccessPolicy, Refusal
from archive.settings import Settings

GOOD = """
aes:
  CT_ROOM_1:
    networks: [10.1.2.0/24]
    permissions: [store]
  WORKSTATION:
    host: ws7.example
    port: 11112
    tls: true
    subject: ws7.example
    permissions: [query, retrieve, commit]
  PACS:
    host: "::1"
    port: 104
    subject: "CN=pacs, O=Radiology"
    permissions: [Store, QUERY]
  ECHO_ONLY:
"""


def test_a_good_file_parses() -> None:
    entries = parse(GOOD, "aes.yaml")
    assert set(entries) == {"CT_ROOM_1", "WORKSTATION", "PACS", "ECHO_ONLY"}
    ct = entries["CT_ROOM_1"]
    assert ct.permissions == {Permission.STORE} and ct.networks == (ipaddress.ip_network("10.1.2.0/24"),)
    ws = entries["WORKSTATION"]
    assert (ws.host, ws.port, ws.tls, ws.subject) == ("ws7.example", 11112, PeerTLS(), "ws7.example")
    assert ws.permissions == {Permission.QUERY, Permission.RETRIEVE, Permission.COMMIT}
    assert entries["PACS"].address == "[::1]:104" and entries["PACS"].permissions == {Permission.STORE,
                                                                                      Permission.QUERY}
    assert entries["ECHO_ONLY"].permissions == frozenset()


def test_tls_with_files(tmp_path: Path) -> None:
    for name in ("ca.pem", "me.pem", "me.key"):
        (tmp_path / name).write_text("x")
    entries = parse(f"""aes:
  PEER:
    host: peer.example
    port: 2762
    tls: {{ca: {tmp_path}/ca.pem, cert: {tmp_path}/me.pem, key: {tmp_path}/me.key, server_name: other.example}}
""", "f.yaml")
    assert entries["PEER"].tls == PeerTLS(f"{tmp_path}/ca.pem", f"{tmp_path}/me.pem", f"{tmp_path}/me.key",
                                          "other.example")


@pytest.mark.parametrize("text, message", [
    ("aes: [1, 2]", "aes.yaml: aes: must map AE titles"),
    ("- a\n- b", "aes.yaml: must be a mapping with the key 'aes'"),
    ("peers: {}", "aes.yaml: unknown top-level key 'peers'"),
    ("aes: {A: [1]}", "aes.yaml: A: must be a mapping"),
    ("aes: {SEVENTEEN_CHARS_XX: {}}", "aes.yaml: aes: 'SEVENTEEN_CHARS_XX' is not an AE title"),
    ("aes: {'BACK\\\\SLASH': {}}", "is not an AE title"),
    ("aes: {A: {permisions: [store]}}", "aes.yaml: A: unknown key 'permisions'"),
    ("aes: {A: {permissions: [store, delete]}}", "aes.yaml: A: permissions: 'delete' is not one of"),
    ("aes: {A: {permissions: store}}", "aes.yaml: A: permissions: must be a list"),
    ("aes: {A: {host: h, port: 70000}}", "aes.yaml: A: port: must be a TCP port"),
    ("aes: {A: {host: h, port: '104'}}", "aes.yaml: A: port: must be a TCP port"),
    ("aes: {A: {host: h}}", "aes.yaml: A: host and port go together"),
    ("aes: {A: {host: '', port: 104}}", "aes.yaml: A: host: must be a non-empty string"),
    ("aes: {A: {networks: [10.0.0.0/33]}}", "aes.yaml: A: networks: '10.0.0.0/33' is not a CIDR network"),
    ("aes: {A: {tls: yes please}}", "aes.yaml: A: tls: must be true, false or a mapping"),
    ("aes: {A: {host: h, port: 1, tls: {ca: /nonexistent.pem}}}", "aes.yaml: A: tls: ca: CA file '/nonexistent.pem'"),
    ("aes: {A: {host: h, port: 1, tls: {cipher: x}}}", "aes.yaml: A: tls: unknown key 'cipher'"),
    ("aes: {A: {tls: true}}", "aes.yaml: A: tls: needs host and port"),
    ("aes: {A: {subject: 5}}", "aes.yaml: A: subject: must be a non-empty string"),
    ("aes: {A: {permissions: [store]}, ' A': {}}", "aes.yaml: A: listed twice"),
    ("aes: {A: {permissions: [store]\n", "aes.yaml: not valid YAML"),
])
def test_every_error_names_the_file_the_ae_and_the_key(text: str, message: str) -> None:
    with pytest.raises(AEConfigError, match=message.replace("[", r"\[").replace("(", r"\(")):
        parse(text, "aes.yaml")


def test_an_unreadable_file_names_the_variable(tmp_path: Path) -> None:
    with pytest.raises(AEConfigError, match="ARCHIVE_AE_CONFIG: cannot read"):
        load(Settings(ae_config=str(tmp_path / "missing.yaml")))


def _file(tmp_path: Path, text: str = GOOD) -> str:
    path = tmp_path / "aes.yaml"
    path.write_text(text)
    return str(path)


def test_without_file_or_allow_list_every_ae_may_do_everything() -> None:
    config = load(Settings(peers=()))
    assert not config.restricted
    assert config.caller("ANYONE") is not None and config.caller("ANYONE").permissions == ALL_PERMISSIONS  # type: ignore[union-attr]


def test_the_shorthands_combine_with_the_file(tmp_path: Path) -> None:
    settings = Settings.from_env({
        "ARCHIVE_AE_CONFIG": _file(tmp_path),
        "ARCHIVE_ALLOWED_AETS": "LEGACY,CT_ROOM_1",  # LEGACY: every permission; CT_ROOM_1: the file's entry
        "ARCHIVE_PEERS": "VIEWER@10.0.0.9:104,CT_ROOM_1@10.1.2.3:104",
        "ARCHIVE_ALLOWED_NETWORKS": "10.0.0.0/8",
    })
    config = load(settings)
    assert config.restricted and config.source == settings.ae_config
    assert config.caller("LEGACY").permissions == ALL_PERMISSIONS  # type: ignore[union-attr]
    assert config.caller("CT_ROOM_1").permissions == {Permission.STORE}  # type: ignore[union-attr]
    assert config.peer("CT_ROOM_1").address == "10.1.2.3:104"  # type: ignore[union-attr]  # address added
    assert config.peer("VIEWER") is not None and config.caller("VIEWER") is None  # a destination, not a caller
    assert config.caller("STRANGER") is None


def test_an_address_given_twice_must_agree(tmp_path: Path) -> None:
    settings = Settings(ae_config=_file(tmp_path), peers=Settings.from_env(
        {"ARCHIVE_PEERS": "WORKSTATION@10.9.9.9:104"}).peers)
    with pytest.raises(AEConfigError, match="WORKSTATION: host/port ws7.example:11112 differ from ARCHIVE_PEERS"):
        load(settings)


def test_the_allow_list_alone_restricts() -> None:
    config = load(Settings(allowed_aets=("CT1",)))
    assert config.restricted and config.caller("CT1") is not None and config.caller("CT2") is None


# --- the access policy ----------------------------------------------------------------------

def _policy(tmp_path: Path, **settings: object) -> tuple[AccessPolicy, list[Refusal]]:
    refusals: list[Refusal] = []
    policy = AccessPolicy.from_settings(Settings(ae_config=_file(tmp_path), **settings),  # type: ignore[arg-type]
                                        on_refusal=refusals.append)
    return policy, refusals


def test_unknown_calling_ae_is_rejected_and_reported(tmp_path: Path) -> None:
    policy, refusals = _policy(tmp_path)
    rejection = policy.admit("STRANGER", "10.1.2.3")
    assert rejection is not None and rejection.reason == 0x03  # calling AE title not recognised (PS3.8 9.3.4)
    assert refusals == [Refusal("association", "STRANGER", "10.1.2.3", "calling AE title not allowed")]


def test_an_entry_networks_narrow_its_ae(tmp_path: Path) -> None:
    policy, _ = _policy(tmp_path)
    assert policy.check("CT_ROOM_1", "10.1.2.3") is None
    assert policy.check("CT_ROOM_1", "::ffff:10.1.2.3") is None  # an IPv4 peer on an IPv6 socket
    assert policy.check("CT_ROOM_1", "10.1.3.1") is not None
    assert policy.check("ECHO_ONLY", "192.0.2.1") is None  # no networks of its own


def test_permissions(tmp_path: Path) -> None:
    policy, refusals = _policy(tmp_path)
    assert policy.authorize("CT_ROOM_1", "10.1.2.3", Permission.STORE)
    assert not policy.authorize("CT_ROOM_1", "10.1.2.3", Permission.QUERY)
    assert not policy.authorize("WORKSTATION", "10.0.0.7", Permission.STORE)
    assert policy.authorize("WORKSTATION", "10.0.0.7", Permission.RETRIEVE)
    assert [(r.what, r.calling_aet, r.status) for r in refusals] == [
        ("query", "CT_ROOM_1", NOT_AUTHORIZED), ("store", "WORKSTATION", NOT_AUTHORIZED)]


def _subject(*rdns: tuple[str, str]) -> Subject:
    """As getpeercert() gives it: RDNs from the root down."""
    return Subject.from_peercert({"subject": tuple(((k, v),) for k, v in rdns)})


def test_a_certificate_subject_maps_to_ae_titles(tmp_path: Path) -> None:
    policy, _ = _policy(tmp_path)
    ws = _subject(("organizationName", "Radiology"), ("commonName", "ws7.example"))
    assert str(ws) == "CN=ws7.example,O=Radiology" and ws.cn == "ws7.example"
    assert policy.check("WORKSTATION", "10.0.0.7", ws) is None
    wrong = policy.check("CT_ROOM_1", "10.1.2.3", ws)  # the workstation's certificate, the CT's title
    assert wrong is not None and wrong.why == "calling AE title is not the client certificate's"
    # the configured DN: every attribute, in any order
    pacs = _subject(("organizationName", "Radiology"), ("commonName", "pacs"))
    assert policy.check("PACS", "::1", pacs) is None
    assert policy.check("PACS", "::1", _subject(("commonName", "pacs"))) is not None
    # an entry with a subject needs the certificate: not over plain TCP
    missing = policy.check("WORKSTATION", "10.0.0.7")
    assert missing is not None and missing.why == "calling AE title needs its client certificate"


def test_without_a_configured_subject_the_cn_is_the_ae_title(tmp_path: Path) -> None:
    policy = AccessPolicy()  # open: any AE, but a certificate still binds the title
    assert policy.check("MODALITY", "192.0.2.1", _subject(("commonName", "MODALITY"))) is None
    assert policy.check("OTHER", "192.0.2.1", _subject(("commonName", "MODALITY"))) is not None
    assert policy.check("CT_ROOM_1", "10.1.2.3", _subject(("commonName", "CT_ROOM_1"))) is None
