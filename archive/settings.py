"""Settings: one frozen, typed object per process, read from the environment once.

Every variable is ``ARCHIVE_*``; backends are chosen by URL. Missing backend
URLs default to the embedded backends under ``ARCHIVE_DATA_DIR``.

Each setting is declared once, as a field of `Settings`: its variable, default, help text
and kind (how its text parses, how a value prints back, what a valid value is). The rest
follows from that declaration: `Settings.from_env`, the checks every `Settings` passes
(`ConfigError` naming the variable), `Settings.to_env` (the environment that gives a child
process the same settings), and `SETTINGS` (the ``--help`` epilog, the README's table).
"""

from __future__ import annotations

import ipaddress
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from enum import Enum
from pathlib import Path
from typing import Any, Generic, TypeVar
from urllib.parse import urlsplit

from archive.core.errors import ConfigError

T = TypeVar("T")
Item = TypeVar("Item")
E = TypeVar("E", bound=Enum)
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class DuplicatePolicy(str, Enum):
    KEEP_FIRST = "keep-first"  # keep the archived instance, answer a warning
    REPLACE = "replace"  # overwrite with the new content, re-index
    REJECT = "reject"  # answer a failure


# --- kinds: how a setting's text parses, prints and is checked --------------------------------
# parse() and check() raise ValueError with what is wrong; Setting prefixes the variable.

class Kind(Generic[T]):
    """The type of a setting: its text -> a value of ``T`` -> the same text."""

    def parse(self, text: str) -> T:
        raise NotImplementedError

    def format(self, value: T) -> str:
        """The text that parses back to ``value``."""
        return str(value)

    def check(self, value: T) -> None:
        """Raise ValueError if ``value`` is not valid (values may come from Python, not text)."""


@dataclass(frozen=True)
class Text(Kind[str]):
    choices: tuple[str, ...] = ()

    def parse(self, text: str) -> str:
        return text

    def check(self, value: str) -> None:
        if self.choices and value not in self.choices:
            raise ValueError(f"{value!r} is not one of {', '.join(f'`{c}`' for c in self.choices)}")


class LogLevel(Text):
    def check(self, value: str) -> None:
        if value.upper() not in logging.getLevelNamesMapping():
            raise ValueError(f"{value!r} is not a log level (DEBUG, INFO, WARNING, ERROR)")


def _ae_title_problem(aet: str) -> str | None:
    if not 1 <= len(aet) <= 16 or not aet.isascii() or "\\" in aet:
        return f"{aet!r} is not a valid AE title (1-16 ASCII characters, no backslash)"
    return None


class AETitle(Text):
    def check(self, value: str) -> None:
        if problem := _ae_title_problem(value):
            raise ValueError(problem)


@dataclass(frozen=True)
class Url(Text):
    """A URL with one of ``schemes``; ``optional``: may be empty; ``needs_host``: has a host part."""

    schemes: tuple[str, ...] = ()
    optional: bool = False
    needs_host: bool = False

    def check(self, value: str) -> None:
        if self.optional and not value:
            return
        scheme = value.split("://", 1)[0] if "://" in value else ""
        if scheme not in self.schemes:
            raise ValueError(f"{value!r} must start with one of {', '.join(s + '://' for s in self.schemes)}")
        if scheme == "s3" and not urlsplit(value).path.strip("/"):
            raise ValueError("an S3 URL needs a bucket: s3://host:port/bucket")
        if self.needs_host and not urlsplit(value).netloc:
            raise ValueError(f"{value!r} has no host")


class Directory(Kind[Path]):
    def parse(self, text: str) -> Path:
        return Path(text)

    def format(self, value: Path) -> str:
        return str(value) if value.is_absolute() else f"./{value}"


def _number(convert: Callable[[str], T], text: str, what: str) -> T:
    try:
        return convert(text)
    except ValueError:
        raise ValueError(f"{text!r} is not {what}") from None


@dataclass(frozen=True)
class Int(Kind[int]):
    low: int | None = None
    high: int | None = None

    def parse(self, text: str) -> int:
        return _number(int, text, "a whole number")

    def check(self, value: int) -> None:
        if self.low is not None and value < self.low:
            raise ValueError(f"must be at least {self.low}, got {value}")
        if self.high is not None and value > self.high:
            raise ValueError(f"must be at most {self.high}, got {value}")


class Port(Int):
    def check(self, value: int) -> None:
        if not 0 <= value <= 65535:
            raise ValueError(f"{value} is not a TCP port")


class Seconds(Kind[float]):
    def parse(self, text: str) -> float:
        return _number(float, text, "a number")

    def format(self, value: float) -> str:
        text = repr(float(value))  # repr: the shortest text that reads back exactly
        return text.removesuffix(".0")


class Pause(Seconds):
    """A wait of 0 (none) up to 10 seconds."""

    def check(self, value: float) -> None:
        if not 0 <= value <= 10:
            raise ValueError(f"must be from 0 to 10 seconds, got {value}")


class Minutes(Seconds):
    def check(self, value: float) -> None:
        if not value > 0:
            raise ValueError(f"must be more than 0 minutes, got {value}")


class Flag(Kind[bool]):
    TRUE, FALSE = ("true", "1", "yes"), ("false", "0", "no")

    def parse(self, text: str) -> bool:
        if text.lower() not in self.TRUE + self.FALSE:
            raise ValueError(f"{text!r} is not true or false")
        return text.lower() in self.TRUE

    def format(self, value: bool) -> str:
        return "true" if value else "false"


@dataclass(frozen=True)
class Choice(Kind[E]):
    enum: type[E]

    def parse(self, text: str) -> E:
        try:
            return self.enum(text)
        except ValueError:
            raise ValueError(f"{text!r} is not one of {', '.join(str(m.value) for m in self.enum)}") from None

    def format(self, value: E) -> str:
        return str(value.value)


@dataclass(frozen=True)
class Items(Kind[tuple[Item, ...]]):
    """A comma-separated list (not JSON: ``a,b,c``); blank items are skipped."""

    item: Callable[[str], Item]
    show: Callable[[Item], str] = str

    def parse(self, text: str) -> tuple[Item, ...]:
        return tuple(self.item(part.strip()) for part in text.split(",") if part.strip())

    def format(self, value: tuple[Item, ...]) -> str:
        # "," is the empty list: "" would read back as the default, which may not be empty
        return ",".join(self.show(v) for v in value) or ","


class IssuerUrl(Url):
    """An OpenID Connect issuer: ``https://``, or ``http://`` on a loopback host only (tests)."""

    def check(self, value: str) -> None:
        super().check(value)
        if value.startswith("http://") and not loopback_host(urlsplit(value).hostname or ""):
            raise ValueError(f"{value!r}: an http:// issuer is accepted only on a loopback address "
                             "(127.0.0.1, ::1, localhost); use https://")


def loopback_host(host: str | None) -> bool:
    """``localhost`` or a loopback address (an IPv4-mapped IPv6 one too, with or without a zone)."""
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped.is_loopback
    return ip.is_loopback


class OptionalPort(Kind[int | None]):
    """A TCP port (1-65535), or unset."""

    def parse(self, text: str) -> int | None:
        return _number(int, text, "a TCP port")

    def format(self, value: int | None) -> str:
        return "" if value is None else str(value)

    def check(self, value: int | None) -> None:
        if value is not None and not 0 < value <= 65535:
            raise ValueError(f"{value} is not a TCP port (1-65535)")


class ClaimPath(Text):
    """A dotted path into a JSON object (``realm_access.roles``)."""

    def check(self, value: str) -> None:
        if not value or any(not part for part in value.split(".")):
            raise ValueError(f"{value!r} is not a dotted claim path such as realm_access.roles")


def _origin(text: str) -> str:
    return text.rstrip("/")


def _webhook(text: str) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.username or parts.password:
        raise ValueError(f"{text!r} is not an http(s) URL without credentials")
    return text


_EVENT_TYPES = ("instance.stored", "study.stable", "study.deleted", "forward.succeeded", "forward.failed")


def _event_type(text: str) -> str:
    if text not in _EVENT_TYPES:
        raise ValueError(f"{text!r} is not one of {', '.join(_EVENT_TYPES)}")
    return text


def _network(text: str) -> Network:
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ValueError(f"{text!r} is not a CIDR network") from None


# --- the declaration ------------------------------------------------------------------------

@dataclass(frozen=True)
class Setting:
    """One setting as declared: its variable, help text, kind, and the `Settings` field it fills."""

    env: str
    help: str
    kind: Kind[Any]
    derive: Callable[[Path], str] | None = None  # a default computed from the data directory
    name: str = ""  # the field; filled in for SETTINGS
    default: Any = None

    @property
    def default_text(self) -> str:
        """The default as documented ("" when unset)."""
        if self.derive is not None:
            return self.derive(Path("<data dir>"))
        return "" if self.default in ("", (), None) else self.kind.format(self.default)

    def parse(self, text: str) -> Any:
        try:
            return self.kind.parse(text)
        except ValueError as exc:
            raise ConfigError(f"{self.env}: {exc}") from None

    def check(self, value: Any) -> None:
        try:
            self.kind.check(value)
        except ValueError as exc:
            raise ConfigError(f"{self.env}: {exc}") from None


def setting(env: str, default: T, help: str, kind: Kind[T], *, derive: Callable[[Path], str] | None = None,
            secret: bool = False) -> T:
    """Declare a field of `Settings`. A ``secret`` is handed to children but left out of ``repr``."""
    return field(default=default, repr=not secret, metadata={"setting": Setting(env, help, kind, derive)})


@dataclass(frozen=True)
class Peer:
    """A DICOM peer we open associations to (C-MOVE destination, commitment reports)."""

    aet: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> "Peer":
        """``AET@host:port`` (an IPv6 host in brackets); ValueError when it is not."""
        aet, sep, address = text.strip().partition("@")
        host, _, port = address.rpartition(":")
        if not sep or not aet or not host or not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
            raise ValueError(f"{text.strip()!r} is not AET@host:port")
        if problem := _ae_title_problem(aet):
            raise ValueError(problem)
        return cls(aet, host.strip("[]"), int(port))

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.aet}@{host}:{self.port}"


def _url_under(scheme: str, name: str) -> Callable[[Path], str]:
    return lambda data: f"{scheme}://{data / name}"


@dataclass(frozen=True)
class Settings:
    """Every setting of the archive; the table in README.md lists them in this order."""

    data_dir: Path = setting(
        "ARCHIVE_DATA_DIR", Path("./archive-data"), "Where the embedded backends keep their files", Directory())
    object_store: str = setting(
        "ARCHIVE_OBJECT_STORE", "", "`file:///path` or `s3://host:port/bucket[?secure=true&region=r]`",
        Url(schemes=("file", "s3")), derive=_url_under("file", "objects"))
    s3_access_key: str = setting("ARCHIVE_S3_ACCESS_KEY", "", "S3 access key", Text())
    s3_secret_key: str = setting("ARCHIVE_S3_SECRET_KEY", "", "S3 secret key", Text(), secret=True)
    queue: str = setting(
        "ARCHIVE_QUEUE", "", "`sqlite:///path` or `amqp://user:pass@host:port/vhost`",
        Url(schemes=("sqlite", "amqp", "amqps")), derive=_url_under("sqlite", "queue.db"))
    catalog: str = setting(
        "ARCHIVE_CATALOG", "", "`sqlite:///path` or `postgresql://user:pass@host:port/db`",
        Url(schemes=("sqlite", "postgresql", "postgres")), derive=_url_under("sqlite", "catalog.db"))
    search: str = setting(
        "ARCHIVE_SEARCH", "", "`sqlite:///path` (FTS5) or `http(s)://host:port` (OpenSearch)",
        Url(schemes=("sqlite", "http", "https")), derive=_url_under("sqlite", "search.db"))
    search_index: str = setting("ARCHIVE_SEARCH_INDEX", "archive-instances", "OpenSearch index name", Text())
    queue_name: str = setting(
        "ARCHIVE_QUEUE_NAME", "archive.index", "RabbitMQ index queue name (its dead-letter queue is `<name>.dead`; forward queues are `<name>.forward.<AET>`)", Text())
    aet: str = setting("ARCHIVE_AET", "ARCHIVE", "Our AE title", AETitle())
    bind: str = setting("ARCHIVE_BIND", "0.0.0.0", "Address the DICOM and HTTP listeners bind to", Text())
    dicom_port: int = setting("ARCHIVE_DICOM_PORT", 11112, "DICOM (DIMSE) port", Port())
    http_port: int = setting("ARCHIVE_HTTP_PORT", 8080, "HTTP port (DICOMweb, health, metrics)", Port())
    public_url: str = setting(
        "ARCHIVE_PUBLIC_URL", "",
        "External URL of the query service (e.g. `https://archive.example.com`) for RetrieveURL and "
        "BulkDataURI; default: from each request's Host header",
        Url(schemes=("http", "https"), optional=True, needs_host=True))
    object_cache_bytes: int = setting(
        "ARCHIVE_OBJECT_CACHE_BYTES", 512 * 1024**2,
        "Disk the query service keeps recently read objects in (frames, rendering, bulk data), under "
        "`ARCHIVE_DATA_DIR`", Int(low=0))
    cors_origins: tuple[str, ...] = setting(
        "ARCHIVE_CORS_ORIGINS", ("*",),
        "Browser origins allowed to call the HTTP API (CORS): `*` or `https://a.example,https://b.example`",
        Items(_origin))
    oidc_issuer: str = setting(
        "ARCHIVE_OIDC_ISSUER", "",
        "OpenID Connect issuer whose access tokens (JWT) the HTTP API accepts, e.g. "
        "`https://sso.example.com/realms/archive` (keys from `<issuer>/.well-known/openid-configuration`); "
        "`http://` only on a loopback address. Unset: no sign-in (see `ARCHIVE_HTTP_INSECURE_OPEN`)",
        IssuerUrl(schemes=("http", "https"), optional=True, needs_host=True))
    oidc_audience: str = setting(
        "ARCHIVE_OIDC_AUDIENCE", "",
        "The audience (`aud`) an access token must name to be accepted, e.g. `dicom-archive`; required with "
        "`ARCHIVE_OIDC_ISSUER`", Text())
    oidc_roles_claim: str = setting(
        "ARCHIVE_OIDC_ROLES_CLAIM", "realm_access.roles",
        "Dotted path of the access token's claim that lists the roles `reader`, `writer`, `admin` "
        "(Keycloak: `realm_access.roles`; Azure AD: `roles`)", ClaimPath())
    http_insecure_open: bool = setting(
        "ARCHIVE_HTTP_INSECURE_OPEN", False,
        "Without an issuer: `true` gives every HTTP client every role, from any address (a trial, a container "
        "on a private host). Default: only loopback clients, the others get 403", Flag())
    metrics_port: int | None = setting(
        "ARCHIVE_METRICS_PORT", None,
        "Serve `/metrics` on this port without a token (for Prometheus), and not on the HTTP port; unset: "
        "`/metrics` on the HTTP port, for the admin role", OptionalPort())
    http_tls_cert: str = setting(
        "ARCHIVE_HTTP_TLS_CERT", "",
        "PEM certificate (chain) of the HTTP port: with `ARCHIVE_HTTP_TLS_KEY` the port speaks HTTPS only "
        "(TLS 1.2 or newer)", Text())
    http_tls_key: str = setting(
        "ARCHIVE_HTTP_TLS_KEY", "", "PEM private key of `ARCHIVE_HTTP_TLS_CERT`", Text())
    ui_oidc_client_id: str = setting(
        "ARCHIVE_UI_OIDC_CLIENT_ID", "",
        "Client id of the web UI at `ARCHIVE_OIDC_ISSUER` (a public client), handed to the page in "
        "`/ui/config.json`: the page signs in there (authorization code with PKCE)", Text())
    ui_viewer_url: str = setting(
        "ARCHIVE_UI_VIEWER_URL", "",
        "A DICOMweb viewer (OHIF) the web UI links each study to, `{StudyInstanceUID}` replaced, e.g. "
        "`https://ohif.example.com/viewer?StudyInstanceUIDs={StudyInstanceUID}`; unset: no link",
        Url(schemes=("http", "https"), optional=True, needs_host=True))
    ui_idle_minutes: float = setting(
        "ARCHIVE_UI_IDLE_MINUTES", 30.0,
        "With sign-in on, the web UI signs out (here and at the issuer) after this many minutes without "
        "a key press, click, touch or wheel in the page; fractions allowed", Minutes())
    query_dicom_port: int = setting(
        "ARCHIVE_QUERY_DICOM_PORT", 11113,
        "DICOM port of the `query` role (C-ECHO, C-FIND, C-MOVE, C-GET, Storage Commitment); `serve` "
        "answers every service on `ARCHIVE_DICOM_PORT`", Port())
    peers: tuple[Peer, ...] = setting(
        "ARCHIVE_PEERS", (), "C-MOVE destinations and commitment peers: `AET@host:port,AET2@host:port`",
        Items(Peer.parse))
    find_max_matches: int = setting(
        "ARCHIVE_FIND_MAX_MATCHES", 10000,
        "Most matches one C-FIND returns; more end the response with 0xA700 and a comment", Int(low=1))
    allowed_aets: tuple[str, ...] = setting(
        "ARCHIVE_ALLOWED_AETS", (), "Comma-separated calling AE titles allowed to associate (empty: any)",
        Items(str))
    allowed_networks: tuple[Network, ...] = setting(
        "ARCHIVE_ALLOWED_NETWORKS", (), "Comma-separated CIDRs allowed to associate (empty: any)",
        Items(_network))
    dicom_tls_port: int = setting(
        "ARCHIVE_DICOM_TLS_PORT", 2762,
        "DICOM over TLS port (PS3.15 Annex B), on when `ARCHIVE_TLS_CERT` and `ARCHIVE_TLS_KEY` are set; "
        "every service of the plain port", Port())
    query_dicom_tls_port: int = setting(
        "ARCHIVE_QUERY_DICOM_TLS_PORT", 2763,
        "DICOM over TLS port of the `query` role (as `ARCHIVE_QUERY_DICOM_PORT` is for plain DICOM)", Port())
    dicom_plain: bool = setting(
        "ARCHIVE_DICOM_PLAIN", True,
        "`false`: no plain DICOM port (`ARCHIVE_DICOM_PORT`, `ARCHIVE_QUERY_DICOM_PORT`), TLS only", Flag())
    tls_cert: str = setting(
        "ARCHIVE_TLS_CERT", "", "Our certificate (PEM, chain after it) for the DICOM TLS port and as the client "
        "certificate we present to TLS peers", Text())
    tls_key: str = setting("ARCHIVE_TLS_KEY", "", "The private key of `ARCHIVE_TLS_CERT` (PEM, unencrypted)", Text())
    tls_client_ca: str = setting(
        "ARCHIVE_TLS_CLIENT_CA", "",
        "CA certificates (PEM); when set, a client certificate signed by one of them is required (mutual TLS) and "
        "its subject must map to the calling AE title; also the CAs TLS peers' certificates are checked against",
        Text())
    ae_config: str = setting(
        "ARCHIVE_AE_CONFIG", "",
        "Per-AE configuration (YAML): address, TLS, networks, certificate subject and permissions (store, query, "
        "retrieve, commit) of each AE title; see docs/security.md", Text())
    scp_engine: str = setting(
        "ARCHIVE_SCP_ENGINE", "asyncio",
        "DICOM engine of `serve`, `scp` and `query`: `asyncio` (C-ECHO, C-STORE and C-FIND on asyncio, "
        "about twice the store throughput; associations for other services go to pynetdicom on the same port) or "
        "`pynetdicom` (every service in pynetdicom)", Text(choices=("asyncio", "pynetdicom")))
    event_loop: str = setting(
        "ARCHIVE_EVENT_LOOP", "uvloop",
        "Event loop of the long-running roles: `uvloop` (libuv: 13-15 % less CPU an instance in the distributed "
        "roles, see docs/benchmarks.md) or `asyncio` (the standard library's)", Text(choices=("asyncio", "uvloop")))
    max_associations: int = setting(
        "ARCHIVE_MAX_ASSOCIATIONS", 64, "Concurrent associations per SCP process", Int(low=1))
    max_pdu: int = setting("ARCHIVE_MAX_PDU", 1048576, "Largest PDU we accept (bytes; 0 = unlimited)", Int(low=0))
    network_timeout: float = setting(
        "ARCHIVE_NETWORK_TIMEOUT", 60.0, "Seconds without network activity before an association is closed",
        Seconds())
    acse_timeout: float = setting("ARCHIVE_ACSE_TIMEOUT", 30.0, "Seconds to wait for association messages", Seconds())
    dimse_timeout: float = setting("ARCHIVE_DIMSE_TIMEOUT", 60.0, "Seconds to wait for DIMSE messages", Seconds())
    store_timeout: float = setting(
        "ARCHIVE_STORE_TIMEOUT", 120.0,
        "Seconds a C-STORE may spend storing and queueing before failing with 0xA700", Seconds())
    query_timeout: float = setting(
        "ARCHIVE_QUERY_TIMEOUT", 120.0,
        "Seconds a C-FIND page, a C-MOVE/C-GET lookup or object read, or a Storage Commitment check may "
        "wait on the backends before failing (C-FIND: 0xA700)", Seconds())
    duplicate_policy: DuplicatePolicy = setting(
        "ARCHIVE_DUPLICATE_POLICY", DuplicatePolicy.KEEP_FIRST,
        "Same SOP Instance UID, different content: `keep-first`, `replace` or `reject`", Choice(DuplicatePolicy))
    fsync: bool = setting("ARCHIVE_FSYNC", True, "fsync filesystem objects before answering Success", Flag())
    delivery_limit: int = setting(
        "ARCHIVE_DELIVERY_LIMIT", 5, "Deliveries of an index message before it is dead-lettered", Int(low=1))
    indexer_batch: int = setting(
        "ARCHIVE_INDEXER_BATCH", 200, "Most index messages written in one catalog transaction", Int(low=1))
    indexer_linger: float = setting(
        "ARCHIVE_INDEXER_LINGER", 0.1,
        "While messages keep coming, how long the indexer waits for more when it finds fewer than a batch "
        "(seconds; 0: never): fewer, larger transactions, each instance searchable up to that much later",
        Pause())
    indexer_prefetch: int = setting(
        "ARCHIVE_INDEXER_PREFETCH", 400, "Unacknowledged messages an indexer holds (RabbitMQ prefetch)", Int(low=1))
    study_stable_seconds: float = setting(
        "ARCHIVE_STUDY_STABLE_SECONDS", 60.0,
        "A study that received no new instance for this long is stable: a `stable` entry in the change feed "
        "(rules have their own `stable_seconds`)", Seconds())
    routing_rules: str = setting(
        "ARCHIVE_ROUTING_RULES", "",
        "Forwarding rules (YAML or JSON): which instances go to which peers, checked by `dicom-archive rules "
        "check FILE` and reloaded when the file changes; see docs/routing.md", Text())
    forward_attempts: int = setting(
        "ARCHIVE_FORWARD_ATTEMPTS", 10,
        "Deliveries of a forward job refused by its destination (a failure status) before it goes to the "
        "destination's dead-letter queue; an outage of the destination costs a job at most one attempt", Int(low=1))
    forward_batch: int = setting(
        "ARCHIVE_FORWARD_BATCH", 50, "Most instances a forwarder sends on one association", Int(low=1))
    webhooks: tuple[str, ...] = setting(
        "ARCHIVE_WEBHOOKS", (),
        "URLs that receive the archive's events as signed JSON POSTs (`https://a.example/hook,...`), each with "
        "its own durable queue, retries and dead letters; see docs/routing.md", Items(_webhook))
    webhook_secret: str = setting(
        "ARCHIVE_WEBHOOK_SECRET", "",
        "Key of the HMAC-SHA256 signature of each webhook body, sent as `X-Archive-Signature: sha256=<hex>`",
        Text(), secret=True)
    webhook_events: tuple[str, ...] = setting(
        "ARCHIVE_WEBHOOK_EVENTS", _EVENT_TYPES,
        "Event types the webhooks get: `instance.stored`, `study.stable`, `study.deleted`, `forward.succeeded`, "
        "`forward.failed`", Items(_event_type))
    workers: int = setting(
        "ARCHIVE_WORKERS", 1, "SCP processes sharing the DICOM port (SO_REUSEPORT) in `serve`/`scp`", Int(low=1))
    query_limit: int = setting("ARCHIVE_QUERY_LIMIT", 1000, "Most results one query returns", Int(low=1))
    stow_max_bytes: int = setting(
        "ARCHIVE_STOW_MAX_BYTES", 4 * 1024**3, "Largest STOW-RS request body (bytes; more is answered 413)",
        Int(low=1))
    log_level: str = setting("ARCHIVE_LOG_LEVEL", "INFO", "DEBUG, INFO, WARNING, ERROR", LogLevel())
    log_format: str = setting("ARCHIVE_LOG_FORMAT", "json", "`json` or `text`", Text(choices=("json", "text")))
    # --- audit trail (PS3.15 A.5 messages; archive.audit) ---
    audit_syslog: str = setting(
        "ARCHIVE_AUDIT_SYSLOG", "",
        "Syslog collector (ATNA audit repository) for audit records: `udp://host:port` (RFC 5426), "
        "`tcp://host:port` (RFC 6587, octet counting) or `tls://host:port` (RFC 5425); unset: local file only",
        Url(schemes=("udp", "tcp", "tls"), optional=True, needs_host=True))
    audit_file: str = setting(
        "ARCHIVE_AUDIT_FILE", "", "Local append-only audit file (every record, one XML message per line)", Text(),
        derive=lambda data: str(data / "audit" / "audit.log"))
    audit_file_max_bytes: int = setting(
        "ARCHIVE_AUDIT_FILE_MAX_BYTES", 100 * 1024**2,
        "Size at which the audit file is rotated (`audit.log` -> `audit.log.1` ...)", Int(low=4096))
    audit_file_keep: int = setting(
        "ARCHIVE_AUDIT_FILE_KEEP", 10, "Rotated audit files kept besides the current one", Int(low=1))
    audit_tls_ca: str = setting(
        "ARCHIVE_AUDIT_TLS_CA", "",
        "PEM CA certificates that sign a `tls://` collector's certificate (unset: the system's)", Text())
    audit_tls_cert: str = setting(
        "ARCHIVE_AUDIT_TLS_CERT", "", "PEM client certificate for a `tls://` collector that requires one", Text())
    audit_tls_key: str = setting(
        "ARCHIVE_AUDIT_TLS_KEY", "", "PEM private key of `ARCHIVE_AUDIT_TLS_CERT`", Text(), secret=True)
    audit_source_id: str = setting(
        "ARCHIVE_AUDIT_SOURCE_ID", "",
        "AuditSourceID of the records (which archive reported them); default `<ARCHIVE_AET>@<host name>`", Text())
    audit_buffer: int = setting(
        "ARCHIVE_AUDIT_BUFFER", 10000,
        "Audit records buffered for the collector; when full, records go to the local file only", Int(low=1))

    def __post_init__(self) -> None:
        data = Path(self.data_dir).resolve()
        object.__setattr__(self, "data_dir", data)
        for s in SETTINGS:
            if s.derive is not None and not getattr(self, s.name):
                object.__setattr__(self, s.name, s.derive(data))
            s.check(getattr(self, s.name))
        # Rules over two settings
        if self.object_store.startswith("s3://") and not (self.s3_access_key and self.s3_secret_key):
            raise ConfigError("ARCHIVE_S3_ACCESS_KEY and ARCHIVE_S3_SECRET_KEY are required with an s3:// object store")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ConfigError("ARCHIVE_TLS_CERT and ARCHIVE_TLS_KEY go together: set both or neither")
        if self.tls_client_ca and not self.tls_cert:
            raise ConfigError("ARCHIVE_TLS_CLIENT_CA needs the DICOM TLS port: set ARCHIVE_TLS_CERT and ARCHIVE_TLS_KEY")
        if not self.dicom_plain and not self.tls_cert:
            raise ConfigError("ARCHIVE_DICOM_PLAIN=false leaves no DICOM port: set ARCHIVE_TLS_CERT and ARCHIVE_TLS_KEY")
        if bool(self.audit_tls_cert) != bool(self.audit_tls_key):
            raise ConfigError("ARCHIVE_AUDIT_TLS_CERT and ARCHIVE_AUDIT_TLS_KEY go together")
        if self.oidc_issuer and not self.oidc_audience:
            raise ConfigError("ARCHIVE_OIDC_AUDIENCE: required with ARCHIVE_OIDC_ISSUER (the audience the "
                              "archive's access tokens name, e.g. dicom-archive)")
        if bool(self.http_tls_cert) != bool(self.http_tls_key):
            given, other = (("ARCHIVE_HTTP_TLS_CERT", "ARCHIVE_HTTP_TLS_KEY") if self.http_tls_cert
                            else ("ARCHIVE_HTTP_TLS_KEY", "ARCHIVE_HTTP_TLS_CERT"))
            raise ConfigError(f"{given}: needs {other} too (HTTPS needs the certificate and its key)")
        if self.metrics_port is not None and self.metrics_port == self.http_port:
            raise ConfigError("ARCHIVE_METRICS_PORT: must differ from ARCHIVE_HTTP_PORT")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: object) -> "Settings":
        """Read ``ARCHIVE_*`` variables (unset or blank: the default); ``overrides`` (CLI flags) win."""
        env = os.environ if env is None else env
        values: dict[str, object] = {}
        for s in SETTINGS:
            text = env.get(s.env, "").strip()
            if text:
                values[s.name] = s.parse(text)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)  # type: ignore[arg-type]

    def to_env(self) -> dict[str, str]:
        """Every ``ARCHIVE_*`` variable, secrets included: ``from_env`` of it gives these settings."""
        return {s.env: s.kind.format(getattr(self, s.name)) for s in SETTINGS}

    @property
    def dicom_tls(self) -> bool:
        """Whether the DICOM TLS port is on (certificate and key set)."""
        return bool(self.tls_cert and self.tls_key)


# The declared settings, in declaration order: the --help epilog and the README table follow it.
SETTINGS: tuple[Setting, ...] = tuple(
    replace(f.metadata["setting"], name=f.name, default=f.default) for f in fields(Settings)
)
