"""Per-AE configuration: one entry per AE title, from ``ARCHIVE_AE_CONFIG`` (YAML) and the shorthands.

The file::

    aes:
      CT_ROOM_1:                       # an AE title (PS3.5 6.2: 1-16 characters, no backslash)
        networks: [10.1.2.0/24]        # it may call only from there (besides ARCHIVE_ALLOWED_NETWORKS)
        permissions: [store]           # store, query, retrieve, commit (none listed: C-ECHO only)
      WORKSTATION_7:
        host: ws7.radiology.example    # where we reach it (C-MOVE destination, commitment reports)
        port: 11112
        tls: true                      # reach it over TLS (or {ca: ..., cert: ..., key: ..., server_name: ...})
        subject: ws7.radiology.example # its client certificate: a CN, or a DN such as "CN=ws7,O=Radiology"
        permissions: [query, retrieve, commit]

How the shorthands combine with it (:func:`load`):

- ``ARCHIVE_ALLOWED_AETS``: each title not in the file is an entry with every permission (its old
  meaning: it may associate and do anything); a title the file lists keeps the file's entry.
- ``ARCHIVE_PEERS``: gives host and port to the entry of its title, or adds an entry with no
  permissions (a destination we call, not a caller); an address that differs from the file's is
  an error.
- ``ARCHIVE_ALLOWED_NETWORKS``: every association comes from one of them, whatever its entry says;
  an entry's ``networks`` narrow that further for its title.
- With a file or ``ARCHIVE_ALLOWED_AETS``, a calling AE title without an entry of its own (one from
  ``ARCHIVE_PEERS`` alone does not count) is rejected (A-ASSOCIATE-RJ, calling AE title not
  recognised). With neither, any calling AE title may do everything (the open default).

Every error is a :class:`AEConfigError` naming the file, the AE title and the key. Entries are
open for what later issues add (per-destination settings): a key is one line of ``_KEYS``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import Any

from archive.core.errors import ConfigError
from archive.settings import Network, Settings

SHORT_NAMES = {  # getpeercert() attribute names -> RFC 4514 short names (and a few common others)
    "commonName": "CN", "organizationName": "O", "organizationalUnitName": "OU", "countryName": "C",
    "localityName": "L", "stateOrProvinceName": "ST", "streetAddress": "STREET", "domainComponent": "DC",
    "userId": "UID", "emailAddress": "EMAILADDRESS", "serialNumber": "SERIALNUMBER",
}


class AEConfigError(ConfigError):
    """ARCHIVE_AE_CONFIG is unreadable or wrong; the message names the file, the AE title and the key."""


class Permission(str, Enum):
    """What a calling AE may do besides C-ECHO."""

    STORE = "store"  # C-STORE
    QUERY = "query"  # C-FIND
    RETRIEVE = "retrieve"  # C-MOVE, C-GET
    COMMIT = "commit"  # Storage Commitment N-ACTION


ALL_PERMISSIONS = frozenset(Permission)


@dataclass(frozen=True)
class PeerTLS:
    """How we reach a peer over TLS; empty paths fall back to ARCHIVE_TLS_CLIENT_CA (else the system's
    CAs) and ARCHIVE_TLS_CERT/ARCHIVE_TLS_KEY (our client certificate, when set)."""

    ca: str = ""
    cert: str = ""
    key: str = ""
    server_name: str = ""  # the name its certificate must carry; default: its host


@dataclass(frozen=True)
class Subject:
    """A certificate subject as (type, value) pairs, most specific first (RFC 4514 order)."""

    attributes: tuple[tuple[str, str], ...]

    @classmethod
    def from_peercert(cls, cert: Mapping[str, Any]) -> "Subject":
        """From :meth:`ssl.SSLSocket.getpeercert`'s dictionary (RDNs in certificate order)."""
        pairs = [(SHORT_NAMES.get(str(k), str(k)).upper(), str(v)) for rdn in cert.get("subject", ()) for k, v in rdn]
        return cls(tuple(reversed(pairs)))

    @property
    def cn(self) -> str:
        return next((v for k, v in self.attributes if k == "CN"), "")

    def __str__(self) -> str:
        return ",".join(f"{k}={v}" for k, v in self.attributes)

    def matches(self, configured: str) -> bool:
        """``configured`` is a CN (``ws7.example``) or a DN (``CN=ws7,O=Radiology``, any order)."""
        if "=" not in configured:
            return configured.strip() == self.cn
        wanted = sorted((k.strip().upper(), v.strip()) for k, _, v in (p.partition("=") for p in configured.split(",")))
        return wanted == sorted(self.attributes)


@dataclass(frozen=True)
class AEEntry:
    """One AE title's configuration."""

    aet: str
    host: str = ""
    port: int = 0
    tls: PeerTLS | None = None
    networks: tuple[Network, ...] = ()
    subject: str = ""  # the certificate its associations must present ("": any, or none)
    permissions: frozenset[Permission] = frozenset()
    caller: bool = True  # an entry of its own (the file, ARCHIVE_ALLOWED_AETS), not ARCHIVE_PEERS alone
    url: str = ""  # a DICOMweb destination's base URL (forwarding by STOW-RS) instead of host and port
    token_file: str = ""  # DICOMweb: a file holding the bearer token sent as Authorization
    username: str = ""  # DICOMweb: basic authentication, with the password in password_file
    password_file: str = ""

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}" if self.host else ""


OPEN = AEEntry("*", permissions=ALL_PERMISSIONS)  # any calling AE when nothing restricts callers


@dataclass(frozen=True)
class AEConfig:
    """The effective per-AE configuration: the file's entries and the shorthands'."""

    entries: Mapping[str, AEEntry] = field(default_factory=dict)
    restricted: bool = False  # unknown calling AE titles are rejected
    networks: tuple[Network, ...] = ()  # ARCHIVE_ALLOWED_NETWORKS: every association
    source: str = ""  # the file, for messages

    def caller(self, aet: str) -> AEEntry | None:
        """The entry a calling AE title associates under; None: not recognised."""
        entry = self.entries.get(aet.strip())
        if entry is not None and entry.caller:
            return entry
        if self.restricted:
            return None
        return replace(entry, permissions=ALL_PERMISSIONS) if entry is not None else OPEN

    def peer(self, aet: str) -> AEEntry | None:
        """The entry of a peer we open associations to (it has an address), or None."""
        entry = self.entries.get(aet.strip())
        return entry if entry is not None and entry.host else None

    def web(self, name: str) -> AEEntry | None:
        """The entry of a DICOMweb destination (it has a url), by its name or its url."""
        entry = self.entries.get(name.strip())
        if entry is not None and entry.url:
            return entry
        return next((e for e in self.entries.values() if e.url and e.url == name.strip()), None)

    def titles_for(self, subject: Subject) -> frozenset[str]:
        """The AE titles a client certificate may call as: the entries naming its subject, else its CN."""
        named = frozenset(e.aet for e in self.entries.values() if e.subject and subject.matches(e.subject))
        return named or frozenset({subject.cn} if subject.cn else ())


# --- parsing -------------------------------------------------------------------------------------

class _Problem(ValueError):
    """What is wrong with one value; the caller adds the file, AE title and key."""


def _text(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _Problem(f"must be a non-empty string, got {value!r}")
    return value.strip()


def _port(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536:
        raise _Problem(f"must be a TCP port (1-65535), got {value!r}")
    return value


def _networks(value: Any) -> tuple[Network, ...]:
    items = value if isinstance(value, list) else [value]
    out = []
    for item in items:
        try:
            out.append(ipaddress.ip_network(str(item).strip(), strict=False))
        except ValueError:
            raise _Problem(f"{item!r} is not a CIDR network") from None
    return tuple(out)


def _permissions(value: Any) -> frozenset[Permission]:
    if not isinstance(value, list):
        raise _Problem(f"must be a list of {', '.join(p.value for p in Permission)}, got {value!r}")
    try:
        return frozenset(Permission(str(v).strip().lower()) for v in value)
    except ValueError:
        bad = next(v for v in value if str(v).strip().lower() not in {p.value for p in Permission})
        raise _Problem(f"{bad!r} is not one of {', '.join(p.value for p in Permission)}") from None


def _file(what: str) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        path = _text(value)
        if not Path(path).is_file():
            raise _Problem(f"{what} {path!r} is not a readable file")
        return path
    return check


_TLS_KEYS: dict[str, Callable[[Any], str]] = {
    "ca": _file("CA file"), "cert": _file("certificate file"), "key": _file("key file"), "server_name": _text,
}


def _tls(value: Any) -> PeerTLS | None:
    if isinstance(value, bool):
        return PeerTLS() if value else None
    if not isinstance(value, dict):
        raise _Problem(f"must be true, false or a mapping of {', '.join(_TLS_KEYS)}, got {value!r}")
    values = {}
    for key, item in value.items():
        if key not in _TLS_KEYS:
            raise _Problem(f"unknown key {key!r} (known: {', '.join(_TLS_KEYS)})")
        try:
            values[key] = _TLS_KEYS[key](item)
        except _Problem as exc:
            raise _Problem(f"{key}: {exc}") from None
    if bool(values.get("cert")) != bool(values.get("key")):
        raise _Problem("cert and key go together")
    return PeerTLS(**values)


def _web_url(value: Any) -> str:
    from urllib.parse import urlsplit

    url = _text(value).rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.username or parts.password \
            or parts.query or parts.fragment:
        raise _Problem(f"{url!r} is not a DICOMweb base URL (http(s)://host[:port]/path, no credentials or query)")
    return url


# key in the file -> (AEEntry field, parser)
_KEYS: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "host": ("host", _text),
    "port": ("port", _port),
    "tls": ("tls", _tls),
    "networks": ("networks", _networks),
    "subject": ("subject", _text),
    "permissions": ("permissions", _permissions),
    "url": ("url", _web_url),
    "token_file": ("token_file", _file("token file")),
    "username": ("username", _text),
    "password_file": ("password_file", _file("password file")),
}


def _ae_title_problem(aet: Any) -> str | None:
    if not isinstance(aet, str) or not 1 <= len(aet.strip()) <= 16 or not aet.isascii() or "\\" in aet:
        return f"{aet!r} is not an AE title (1-16 ASCII characters, no backslash)"
    return None


def parse(text: str, source: str) -> dict[str, AEEntry]:
    """The entries of an AE configuration document; AEConfigError naming ``source``, AE and key."""
    import yaml  # only when a file is configured

    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise AEConfigError(f"{source}: not valid YAML: {exc}") from None
    if document is None:
        document = {}
    if not isinstance(document, dict):
        raise AEConfigError(f"{source}: must be a mapping with the key 'aes'")
    unknown = set(document) - {"aes"}
    if unknown:
        raise AEConfigError(f"{source}: unknown top-level key {sorted(map(str, unknown))[0]!r} (known: aes)")
    aes = document.get("aes") or {}
    if not isinstance(aes, dict):
        raise AEConfigError(f"{source}: aes: must map AE titles to their settings")
    entries: dict[str, AEEntry] = {}
    for aet, settings in aes.items():
        if problem := _ae_title_problem(aet):
            raise AEConfigError(f"{source}: aes: {problem}")
        aet = aet.strip()
        if aet in entries:
            raise AEConfigError(f"{source}: {aet}: listed twice")
        if settings is None:
            settings = {}
        if not isinstance(settings, dict):
            raise AEConfigError(f"{source}: {aet}: must be a mapping of {', '.join(_KEYS)}")
        values: dict[str, Any] = {}
        for key, value in settings.items():
            if key not in _KEYS:
                raise AEConfigError(f"{source}: {aet}: unknown key {key!r} (known: {', '.join(_KEYS)})")
            name, convert = _KEYS[key]
            try:
                values[name] = convert(value)
            except _Problem as exc:
                raise AEConfigError(f"{source}: {aet}: {key}: {exc}") from None
        if bool(values.get("host")) != bool(values.get("port")):
            raise AEConfigError(f"{source}: {aet}: host and port go together")
        if values.get("tls") is not None and not values.get("host"):
            raise AEConfigError(f"{source}: {aet}: tls: needs host and port (how we reach it)")
        if values.get("url") and values.get("host"):
            raise AEConfigError(f"{source}: {aet}: url (DICOMweb) or host and port (DIMSE), not both")
        if (values.get("token_file") or values.get("username") or values.get("password_file")) and not values.get("url"):
            raise AEConfigError(f"{source}: {aet}: token_file, username and password_file go with url")
        if bool(values.get("username")) != bool(values.get("password_file")):
            raise AEConfigError(f"{source}: {aet}: username and password_file go together")
        if values.get("token_file") and values.get("username"):
            raise AEConfigError(f"{source}: {aet}: token_file or username and password_file, not both")
        entries[aet] = AEEntry(aet, **values)
    return entries


def load(settings: Settings) -> AEConfig:
    """The effective configuration: ARCHIVE_AE_CONFIG (if set) with the shorthands (see the module)."""
    source = settings.ae_config
    entries: dict[str, AEEntry] = {}
    if source:
        try:
            text = Path(source).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise AEConfigError(f"ARCHIVE_AE_CONFIG: cannot read {source}: {exc}") from None
        entries = parse(text, source)
    for aet in settings.allowed_aets:
        entries.setdefault(aet, AEEntry(aet, permissions=ALL_PERMISSIONS))
    for peer in settings.peers:
        entry = entries.get(peer.aet)
        if entry is None:
            entries[peer.aet] = AEEntry(peer.aet, peer.host, peer.port, caller=False)
        elif not entry.host:
            entries[peer.aet] = replace(entry, host=peer.host, port=peer.port)
        elif (entry.host, entry.port) != (peer.host, peer.port):
            raise AEConfigError(f"{source}: {peer.aet}: host/port {entry.address} differ from ARCHIVE_PEERS' "
                                f"{peer}: give its address in one place")
    return AEConfig(entries, restricted=bool(source or settings.allowed_aets),
                    networks=tuple(settings.allowed_networks), source=source)


def from_lists(allowed_aets: Iterable[str] = (), networks: Iterable[Network] = ()) -> AEConfig:
    """ARCHIVE_ALLOWED_AETS and ARCHIVE_ALLOWED_NETWORKS alone (no file, no peers)."""
    aets = tuple(allowed_aets)
    return AEConfig({a: AEEntry(a, permissions=ALL_PERMISSIONS) for a in aets}, restricted=bool(aets),
                    networks=tuple(networks))
