"""DICOM access control: calling AE titles and client networks (allow-lists)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

# A-ASSOCIATE-RJ (PS3.8 9.3.4): result 1 = rejected-permanent, source 1 = service-user
REJECT_PERMANENT = 0x01
SOURCE_SERVICE_USER = 0x01
REASON_NO_REASON = 0x01
REASON_CALLING_AE_NOT_RECOGNIZED = 0x03


@dataclass(frozen=True)
class Rejection:
    result: int
    source: int
    reason: int
    why: str


@dataclass(frozen=True)
class AccessPolicy:
    allowed_aets: tuple[str, ...] = ()
    allowed_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()

    def check(self, calling_aet: str, address: str) -> Rejection | None:
        """None if the peer may associate, else the A-ASSOCIATE-RJ to send."""
        if self.allowed_networks:
            try:
                ip = ipaddress.ip_address(address)
            except ValueError:
                ip = None
            if ip is None or not any(ip in net for net in self.allowed_networks):
                return Rejection(REJECT_PERMANENT, SOURCE_SERVICE_USER, REASON_NO_REASON, "network not allowed")
        if self.allowed_aets and calling_aet.strip() not in self.allowed_aets:
            return Rejection(
                REJECT_PERMANENT, SOURCE_SERVICE_USER, REASON_CALLING_AE_NOT_RECOGNIZED, "calling AE title not allowed"
            )
        return None
