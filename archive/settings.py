"""Settings: one frozen, typed object per process, read from the environment once.

Every variable is ``ARCHIVE_*``; backends are chosen by URL. Missing backend
URLs default to the embedded backends under ``ARCHIVE_DATA_DIR``.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path
from urllib.parse import urlsplit

from archive.core.errors import ConfigError


class DuplicatePolicy(str, Enum):
    KEEP_FIRST = "keep-first"  # keep the archived instance, answer a warning
    REPLACE = "replace"  # overwrite with the new content, re-index
    REJECT = "reject"  # answer a failure


@dataclass(frozen=True)
class Setting:
    env: str
    default: str
    help: str


# The configuration table (the README's table is generated from this list).
SETTINGS: tuple[Setting, ...] = (
    Setting("ARCHIVE_DATA_DIR", "./archive-data", "Where the embedded backends keep their files"),
    Setting("ARCHIVE_OBJECT_STORE", "file://<data dir>/objects", "`file:///path` or `s3://host:port/bucket[?secure=true&region=r]`"),
    Setting("ARCHIVE_S3_ACCESS_KEY", "", "S3 access key"),
    Setting("ARCHIVE_S3_SECRET_KEY", "", "S3 secret key"),
    Setting("ARCHIVE_QUEUE", "sqlite://<data dir>/queue.db", "`sqlite:///path` or `amqp://user:pass@host:port/vhost`"),
    Setting("ARCHIVE_CATALOG", "sqlite://<data dir>/catalog.db", "`sqlite:///path` or `postgresql://user:pass@host:port/db`"),
    Setting("ARCHIVE_SEARCH", "sqlite://<data dir>/search.db", "`sqlite:///path` (FTS5) or `http(s)://host:port` (OpenSearch)"),
    Setting("ARCHIVE_SEARCH_INDEX", "archive-instances", "OpenSearch index name"),
    Setting("ARCHIVE_QUEUE_NAME", "archive.index", "RabbitMQ queue name (its dead-letter queue is `<name>.dead`)"),
    Setting("ARCHIVE_AET", "ARCHIVE", "Our AE title"),
    Setting("ARCHIVE_BIND", "0.0.0.0", "Address the DICOM and HTTP listeners bind to"),
    Setting("ARCHIVE_DICOM_PORT", "11112", "DICOM (DIMSE) port"),
    Setting("ARCHIVE_HTTP_PORT", "8080", "HTTP port (DICOMweb, health, metrics)"),
    Setting("ARCHIVE_PUBLIC_URL", "", "External URL of the query service (e.g. `https://archive.example.com`) for RetrieveURL and BulkDataURI; default: from each request's Host header"),
    Setting("ARCHIVE_OBJECT_CACHE_BYTES", "536870912", "Disk the query service keeps recently read objects in (frames, rendering, bulk data), under `ARCHIVE_DATA_DIR`"),
    Setting("ARCHIVE_CORS_ORIGINS", "*", "Browser origins allowed to call the HTTP API (CORS): `*` or `https://a.example,https://b.example`"),
    Setting("ARCHIVE_QUERY_DICOM_PORT", "11113", "DICOM port of the `query` role (C-ECHO, C-FIND, C-MOVE, C-GET, Storage Commitment); `serve` answers every service on `ARCHIVE_DICOM_PORT`"),
    Setting("ARCHIVE_PEERS", "", "C-MOVE destinations and commitment peers: `AET@host:port,AET2@host:port`"),
    Setting("ARCHIVE_FIND_MAX_MATCHES", "10000", "Most matches one C-FIND returns; more end the response with 0xA700 and a comment"),
    Setting("ARCHIVE_ALLOWED_AETS", "", "Comma-separated calling AE titles allowed to associate (empty: any)"),
    Setting("ARCHIVE_ALLOWED_NETWORKS", "", "Comma-separated CIDRs allowed to associate (empty: any)"),
    Setting("ARCHIVE_SCP_ENGINE", "asyncio", "DICOM receiver: `asyncio` (C-ECHO and C-STORE on asyncio streams, about twice the throughput; associations for other services go to pynetdicom on the same port) or `pynetdicom` (every service in pynetdicom)"),
    Setting("ARCHIVE_MAX_ASSOCIATIONS", "64", "Concurrent associations per SCP process"),
    Setting("ARCHIVE_MAX_PDU", "1048576", "Largest PDU we accept (bytes; 0 = unlimited)"),
    Setting("ARCHIVE_NETWORK_TIMEOUT", "60", "Seconds without network activity before an association is closed"),
    Setting("ARCHIVE_ACSE_TIMEOUT", "30", "Seconds to wait for association messages"),
    Setting("ARCHIVE_DIMSE_TIMEOUT", "60", "Seconds to wait for DIMSE messages"),
    Setting("ARCHIVE_STORE_TIMEOUT", "120", "Seconds a C-STORE may spend storing and queueing before failing with 0xA700"),
    Setting("ARCHIVE_DUPLICATE_POLICY", "keep-first", "Same SOP Instance UID, different content: `keep-first`, `replace` or `reject`"),
    Setting("ARCHIVE_FSYNC", "true", "fsync filesystem objects before answering Success"),
    Setting("ARCHIVE_DELIVERY_LIMIT", "5", "Deliveries of an index message before it is dead-lettered"),
    Setting("ARCHIVE_INDEXER_BATCH", "200", "Most index messages written in one catalog transaction"),
    Setting("ARCHIVE_INDEXER_PREFETCH", "400", "Unacknowledged messages an indexer holds (RabbitMQ prefetch)"),
    Setting("ARCHIVE_WORKERS", "1", "SCP processes sharing the DICOM port (SO_REUSEPORT) in `serve`/`scp`"),
    Setting("ARCHIVE_QUERY_LIMIT", "1000", "Most results one query returns"),
    Setting("ARCHIVE_STOW_MAX_BYTES", "4294967296", "Largest STOW-RS request body (bytes; more is answered 413)"),
    Setting("ARCHIVE_LOG_LEVEL", "INFO", "DEBUG, INFO, WARNING, ERROR"),
    Setting("ARCHIVE_LOG_FORMAT", "json", "`json` or `text`"),
)


@dataclass(frozen=True)
class Peer:
    """A DICOM peer we open associations to (C-MOVE destination, commitment reports)."""

    aet: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> "Peer":
        aet, sep, address = text.strip().partition("@")
        host, _, port = address.rpartition(":")
        if not sep or not aet or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"ARCHIVE_PEERS: {text.strip()!r} is not AET@host:port")
        if len(aet) > 16 or not aet.isascii() or "\\" in aet:
            raise ConfigError(f"ARCHIVE_PEERS: {aet!r} is not a valid AE title (1-16 ASCII characters)")
        return cls(aet, host.strip("[]"), int(port))


@dataclass(frozen=True)
class Settings:
    data_dir: Path = Path("./archive-data")
    object_store: str = ""
    s3_access_key: str = ""
    s3_secret_key: str = field(default="", repr=False)
    queue: str = ""
    catalog: str = ""
    search: str = ""
    search_index: str = "archive-instances"
    queue_name: str = "archive.index"
    aet: str = "ARCHIVE"
    bind: str = "0.0.0.0"
    dicom_port: int = 11112
    http_port: int = 8080
    cors_origins: tuple[str, ...] = ("*",)
    query_dicom_port: int = 11113
    public_url: str = ""
    object_cache_bytes: int = 512 * 1024**2
    peers: tuple[Peer, ...] = ()
    find_max_matches: int = 10000
    allowed_aets: tuple[str, ...] = ()
    allowed_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    scp_engine: str = "asyncio"
    max_associations: int = 64
    max_pdu: int = 1048576
    network_timeout: float = 60.0
    acse_timeout: float = 30.0
    dimse_timeout: float = 60.0
    store_timeout: float = 120.0
    duplicate_policy: DuplicatePolicy = DuplicatePolicy.KEEP_FIRST
    fsync: bool = True
    delivery_limit: int = 5
    indexer_batch: int = 200
    indexer_prefetch: int = 400
    workers: int = 1
    query_limit: int = 1000
    stow_max_bytes: int = 4 * 1024**3
    log_level: str = "INFO"
    log_format: str = "json"

    def __post_init__(self) -> None:
        data = self.data_dir.resolve()
        object.__setattr__(self, "data_dir", data)
        defaults = {
            "object_store": f"file://{data / 'objects'}",
            "queue": f"sqlite://{data / 'queue.db'}",
            "catalog": f"sqlite://{data / 'catalog.db'}",
            "search": f"sqlite://{data / 'search.db'}",
        }
        for name, default in defaults.items():
            if not getattr(self, name):
                object.__setattr__(self, name, default)
        self._validate()

    def _validate(self) -> None:
        _check_url("ARCHIVE_OBJECT_STORE", self.object_store, ("file", "s3"))
        _check_url("ARCHIVE_QUEUE", self.queue, ("sqlite", "amqp", "amqps"))
        _check_url("ARCHIVE_CATALOG", self.catalog, ("sqlite", "postgresql", "postgres"))
        _check_url("ARCHIVE_SEARCH", self.search, ("sqlite", "http", "https"))
        if self.object_store.startswith("s3://"):
            parts = urlsplit(self.object_store)
            if not parts.path.strip("/"):
                raise ConfigError("ARCHIVE_OBJECT_STORE: an S3 URL needs a bucket: s3://host:port/bucket")
            if not self.s3_access_key or not self.s3_secret_key:
                raise ConfigError("ARCHIVE_S3_ACCESS_KEY and ARCHIVE_S3_SECRET_KEY are required with an s3:// object store")
        if not 1 <= len(self.aet) <= 16 or not self.aet.isascii() or "\\" in self.aet:
            raise ConfigError(f"ARCHIVE_AET: {self.aet!r} is not a valid AE title (1-16 ASCII characters, no backslash)")
        for name, port in (("ARCHIVE_DICOM_PORT", self.dicom_port), ("ARCHIVE_HTTP_PORT", self.http_port),
                           ("ARCHIVE_QUERY_DICOM_PORT", self.query_dicom_port)):
            if not 0 <= port <= 65535:
                raise ConfigError(f"{name}: {port} is not a TCP port")
        for name, value, low in (
            ("ARCHIVE_MAX_ASSOCIATIONS", self.max_associations, 1),
            ("ARCHIVE_DELIVERY_LIMIT", self.delivery_limit, 1),
            ("ARCHIVE_INDEXER_BATCH", self.indexer_batch, 1),
            ("ARCHIVE_INDEXER_PREFETCH", self.indexer_prefetch, 1),
            ("ARCHIVE_WORKERS", self.workers, 1),
            ("ARCHIVE_QUERY_LIMIT", self.query_limit, 1),
            ("ARCHIVE_STOW_MAX_BYTES", self.stow_max_bytes, 1),
            ("ARCHIVE_FIND_MAX_MATCHES", self.find_max_matches, 1),
            ("ARCHIVE_OBJECT_CACHE_BYTES", self.object_cache_bytes, 0),
            ("ARCHIVE_MAX_PDU", self.max_pdu, 0),
        ):
            if value < low:
                raise ConfigError(f"{name}: must be at least {low}, got {value}")
        if self.scp_engine not in ("pynetdicom", "asyncio"):
            raise ConfigError(f"ARCHIVE_SCP_ENGINE: {self.scp_engine!r} is not `pynetdicom` or `asyncio`")
        if self.public_url and (urlsplit(self.public_url).scheme not in ("http", "https")
                                or not urlsplit(self.public_url).netloc):
            raise ConfigError(f"ARCHIVE_PUBLIC_URL: {self.public_url!r} is not an http(s):// URL")
        if self.log_format not in ("json", "text"):
            raise ConfigError("ARCHIVE_LOG_FORMAT: `json` or `text`")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: object) -> "Settings":
        """Read ``ARCHIVE_*`` variables; ``overrides`` (from CLI flags) win."""
        env = os.environ if env is None else env

        def get(name: str) -> str | None:
            value = env.get(name)
            return value.strip() if value is not None and value.strip() != "" else None

        values: dict[str, object] = {}
        text = {
            "ARCHIVE_OBJECT_STORE": "object_store",
            "ARCHIVE_S3_ACCESS_KEY": "s3_access_key",
            "ARCHIVE_S3_SECRET_KEY": "s3_secret_key",
            "ARCHIVE_QUEUE": "queue",
            "ARCHIVE_CATALOG": "catalog",
            "ARCHIVE_SEARCH": "search",
            "ARCHIVE_SEARCH_INDEX": "search_index",
            "ARCHIVE_QUEUE_NAME": "queue_name",
            "ARCHIVE_AET": "aet",
            "ARCHIVE_BIND": "bind",
            "ARCHIVE_SCP_ENGINE": "scp_engine",
            "ARCHIVE_PUBLIC_URL": "public_url",
            "ARCHIVE_LOG_LEVEL": "log_level",
            "ARCHIVE_LOG_FORMAT": "log_format",
        }
        for var, attr in text.items():
            if (value := get(var)) is not None:
                values[attr] = value
        numbers: dict[str, tuple[str, type]] = {
            "ARCHIVE_DICOM_PORT": ("dicom_port", int),
            "ARCHIVE_HTTP_PORT": ("http_port", int),
            "ARCHIVE_MAX_ASSOCIATIONS": ("max_associations", int),
            "ARCHIVE_MAX_PDU": ("max_pdu", int),
            "ARCHIVE_NETWORK_TIMEOUT": ("network_timeout", float),
            "ARCHIVE_ACSE_TIMEOUT": ("acse_timeout", float),
            "ARCHIVE_DIMSE_TIMEOUT": ("dimse_timeout", float),
            "ARCHIVE_STORE_TIMEOUT": ("store_timeout", float),
            "ARCHIVE_DELIVERY_LIMIT": ("delivery_limit", int),
            "ARCHIVE_INDEXER_BATCH": ("indexer_batch", int),
            "ARCHIVE_INDEXER_PREFETCH": ("indexer_prefetch", int),
            "ARCHIVE_WORKERS": ("workers", int),
            "ARCHIVE_QUERY_LIMIT": ("query_limit", int),
            "ARCHIVE_STOW_MAX_BYTES": ("stow_max_bytes", int),
            "ARCHIVE_QUERY_DICOM_PORT": ("query_dicom_port", int),
            "ARCHIVE_FIND_MAX_MATCHES": ("find_max_matches", int),
            "ARCHIVE_OBJECT_CACHE_BYTES": ("object_cache_bytes", int),
        }
        for var, (attr, kind) in numbers.items():
            if (value := get(var)) is not None:
                try:
                    values[attr] = kind(value)
                except ValueError:
                    raise ConfigError(f"{var}: {value!r} is not a number") from None
        if (value := get("ARCHIVE_DATA_DIR")) is not None:
            values["data_dir"] = Path(value)
        if (value := get("ARCHIVE_CORS_ORIGINS")) is not None:
            values["cors_origins"] = tuple(o.strip().rstrip("/") for o in value.split(",") if o.strip())
        if (value := get("ARCHIVE_ALLOWED_AETS")) is not None:
            values["allowed_aets"] = tuple(a.strip() for a in value.split(",") if a.strip())
        if (value := get("ARCHIVE_ALLOWED_NETWORKS")) is not None:
            nets = []
            for cidr in (c.strip() for c in value.split(",") if c.strip()):
                try:
                    nets.append(ipaddress.ip_network(cidr, strict=False))
                except ValueError:
                    raise ConfigError(f"ARCHIVE_ALLOWED_NETWORKS: {cidr!r} is not a CIDR network") from None
            values["allowed_networks"] = tuple(nets)
        if (value := get("ARCHIVE_PEERS")) is not None:
            values["peers"] = tuple(Peer.parse(p) for p in value.split(",") if p.strip())
        if (value := get("ARCHIVE_DUPLICATE_POLICY")) is not None:
            try:
                values["duplicate_policy"] = DuplicatePolicy(value)
            except ValueError:
                raise ConfigError(
                    f"ARCHIVE_DUPLICATE_POLICY: {value!r} is not one of keep-first, replace, reject"
                ) from None
        if (value := get("ARCHIVE_FSYNC")) is not None:
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ConfigError(f"ARCHIVE_FSYNC: {value!r} is not true or false")
            values["fsync"] = value.lower() in ("true", "1", "yes")
        values.update({k: v for k, v in overrides.items() if v is not None})
        if isinstance(values.get("data_dir"), str):
            values["data_dir"] = Path(str(values["data_dir"]))
        return cls(**values)  # type: ignore[arg-type]

    def peer(self, aet: str) -> Peer | None:
        return next((p for p in self.peers if p.aet == aet.strip()), None)

    def with_(self, **changes: object) -> "Settings":
        return replace(self, **changes)  # type: ignore[arg-type]


def _check_url(name: str, url: str, schemes: tuple[str, ...]) -> None:
    scheme = url.split("://", 1)[0] if "://" in url else ""
    if scheme not in schemes:
        raise ConfigError(f"{name}: {url!r} must start with one of {', '.join(s + '://' for s in schemes)}")
