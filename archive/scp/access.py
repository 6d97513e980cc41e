"""DICOM access control: who may associate (AE title, network, client certificate) and what each
calling AE may do (store, query, retrieve, commit), from the per-AE configuration
(:mod:`archive.ae_config`). Both receiver engines and the query/retrieve services ask one
:class:`AccessPolicy`; every rejection and refusal goes to its ``on_refusal`` (the audit trail's
hook: a Security Alert / the refused operation, PS3.15 A.5) after being logged.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable
from dataclasses import dataclass

from archive import ae_config
from archive.ae_config import AEConfig, Permission, Subject
from archive.settings import Network, Settings

log = logging.getLogger(__name__)

# A-ASSOCIATE-RJ (PS3.8 9.3.4): result 1 = rejected-permanent, source 1 = service-user
REJECT_PERMANENT = 0x01
SOURCE_SERVICE_USER = 0x01
REASON_NO_REASON = 0x01
REASON_CALLING_AE_NOT_RECOGNIZED = 0x03

# PS3.7 Annex C (general statuses, for any DIMSE service): 0124H Refused: Not Authorized
NOT_AUTHORIZED = 0x0124


@dataclass(frozen=True)
class Rejection:
    result: int
    source: int
    reason: int
    why: str


@dataclass(frozen=True)
class Refusal:
    """A rejected association, a failed TLS handshake or a refused operation: what is audited."""

    what: str  # "association", "tls", or the Permission refused: "store", "query", "retrieve", "commit"
    calling_aet: str
    address: str
    reason: str
    status: int | None = None  # the DIMSE status answered (None: association level)


OnRefusal = Callable[[Refusal], None]


def _nothing(refusal: Refusal) -> None:
    """The default hook: the audit trail (archive.audit) replaces it."""


def _reject(reason: int, why: str) -> Rejection:
    return Rejection(REJECT_PERMANENT, SOURCE_SERVICE_USER, reason, why)


class AccessPolicy:
    """Who may associate and what they may do. ``check`` decides; ``admit`` and ``authorize`` also
    log and report refusals to ``on_refusal``."""

    def __init__(self, allowed_aets: tuple[str, ...] = (), allowed_networks: tuple[Network, ...] = (), *,
                 config: AEConfig | None = None, on_refusal: OnRefusal = _nothing) -> None:
        self.config = config if config is not None else ae_config.from_lists(allowed_aets, allowed_networks)
        self.on_refusal = on_refusal

    @classmethod
    def from_settings(cls, settings: Settings, on_refusal: OnRefusal = _nothing) -> "AccessPolicy":
        """From ARCHIVE_AE_CONFIG and the shorthands; AEConfigError (a ConfigError) if the file is wrong."""
        return cls(config=ae_config.load(settings), on_refusal=on_refusal)

    def check(self, calling_aet: str, address: str, subject: Subject | None = None) -> Rejection | None:
        """None if the peer may associate, else the A-ASSOCIATE-RJ to send. ``subject``: the
        verified client certificate's, when the association came over TLS with one."""
        aet = calling_aet.strip()
        config = self.config
        if config.networks and not _inside(address, config.networks):
            return _reject(REASON_NO_REASON, "network not allowed")
        entry = config.caller(aet)
        if entry is None:
            return _reject(REASON_CALLING_AE_NOT_RECOGNIZED, "calling AE title not allowed")
        if entry.networks and not _inside(address, entry.networks):
            return _reject(REASON_NO_REASON, "network not allowed for this AE title")
        if subject is not None and aet not in config.titles_for(subject):
            return _reject(REASON_CALLING_AE_NOT_RECOGNIZED, "calling AE title is not the client certificate's")
        if entry.subject and (subject is None or not subject.matches(entry.subject)):
            return _reject(REASON_CALLING_AE_NOT_RECOGNIZED, "calling AE title needs its client certificate")
        return None

    def admit(self, calling_aet: str, address: str, subject: Subject | None = None) -> Rejection | None:
        """:meth:`check`, reporting a rejection."""
        rejection = self.check(calling_aet, address, subject)
        if rejection is not None:
            self.report(Refusal("association", calling_aet.strip(), address, rejection.why))
        return rejection

    def permits(self, calling_aet: str, permission: Permission) -> bool:
        entry = self.config.caller(calling_aet)
        return entry is not None and permission in entry.permissions

    def authorize(self, calling_aet: str, address: str, permission: Permission) -> bool:
        """Whether ``calling_aet`` may do ``permission``; a refusal (answered 0x0124) is reported."""
        if self.permits(calling_aet, permission):
            return True
        self.report(Refusal(permission.value, calling_aet.strip(), address, f"no {permission.value} permission",
                            NOT_AUTHORIZED))
        return False

    def report(self, refusal: Refusal) -> None:
        """Hand a refusal to ``on_refusal``; a refused operation is logged here (AE titles and addresses,
        never patient data), a rejected association by the engine that rejected it."""
        if refusal.status is not None:
            log.warning("operation refused", extra={
                "calling_aet": refusal.calling_aet, "peer": refusal.address, "reason": refusal.reason,
                "refused": refusal.what, "status": f"0x{refusal.status:04X}"})
        try:
            self.on_refusal(refusal)
        except Exception:  # the audit hook must never take an association down
            log.exception("refusal hook failed")


def _inside(address: str, networks: tuple[Network, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in net for net in networks)
