"""Where forward jobs go: a DICOM peer (C-STORE) or a DICOMweb service (STOW-RS), by the name jobs
carry: an AE title of ARCHIVE_PEERS / ARCHIVE_AE_CONFIG, or a DICOMweb base URL (its credentials, if
any, from the ARCHIVE_AE_CONFIG entry with that ``url``)."""

from __future__ import annotations

import base64
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from archive.ae_config import AEConfig, AEEntry
from archive.core.errors import ConfigError
from archive.core.routing import is_url


@dataclass(frozen=True)
class Target:
    name: str  # what the jobs name
    dicom: AEEntry | None = None  # a DICOM peer
    url: str = ""  # a DICOMweb base URL
    authorization: str = ""  # the Authorization header for the DICOMweb service ("" none)

    @property
    def host(self) -> str:
        return self.dicom.host if self.dicom is not None else (urlsplit(self.url).hostname or "")


def _authorization(entry: AEEntry) -> str:
    """Read from the entry's files (a Kubernetes Secret mounted as files) when the forwarder starts."""
    try:
        if entry.token_file:
            return f"Bearer {Path(entry.token_file).read_text(encoding='utf-8').strip()}"
        if entry.username:
            password = Path(entry.password_file).read_text(encoding="utf-8").strip()
            return "Basic " + base64.b64encode(f"{entry.username}:{password}".encode()).decode("ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"ARCHIVE_AE_CONFIG: {entry.aet}: cannot read its credentials: {exc}") from None
    return ""


def resolve(name: str, config: AEConfig) -> Target | None:
    peer = config.peer(name)
    if peer is not None:
        return Target(name, dicom=peer)
    web = config.web(name)
    if web is not None:
        return Target(name, url=web.url, authorization=_authorization(web))
    if is_url(name):
        return Target(name, url=name.rstrip("/"))
    return None


def configured(config: AEConfig) -> list[str]:
    """The names of every configured destination: DICOM peers (with an address) and DICOMweb entries."""
    return [aet for aet, entry in config.entries.items() if entry.host or entry.url]


def targets(names: Iterable[str], config: AEConfig) -> list[Target]:
    out: dict[str, Target] = {}
    for name in names:
        if name not in out and (target := resolve(name, config)) is not None:
            out[name] = target
    return list(out.values())
