"""Who is asking: the one description of a caller that access control and the audit trail share.

An HTTP request is made by a user (an OpenID Connect access token), by a script with an API
key, or, when no authentication is configured, by a process on the same machine (loopback);
a DICOM association by a calling AE title from an address. Access control decides what a
principal may do from its roles; the audit trail names it (PS3.15 A.5: the user or AE, the
network access point). Patient data never goes here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


class Role(str, Enum):
    """Roles of the HTTP API, cumulative: an admin may do what a writer may, a writer what a reader may."""

    READER = "reader"  # QIDO-RS, WADO-RS/URI, rendered, the search API, the web UI
    WRITER = "writer"  # STOW-RS, and everything a reader may
    ADMIN = "admin"  # metrics, dead letters, operations (delete, routing rules), and everything a writer may

    def includes(self, other: "Role") -> bool:
        return _RANK[self] >= _RANK[other]


_RANK = {Role.READER: 1, Role.WRITER: 2, Role.ADMIN: 3}


class PrincipalKind(str, Enum):
    USER = "user"  # an OpenID Connect access token
    API_KEY = "api-key"  # a long-lived key of a script or an integration
    LOCAL = "local"  # a loopback client while no authentication is configured
    OPEN = "open"  # any client, ARCHIVE_HTTP_INSECURE_OPEN=true
    AE = "ae"  # a DICOM peer: its calling AE title


@dataclass(frozen=True)
class Principal:
    kind: PrincipalKind
    name: str  # user name (preferred_username, else sub), API key name, or AE title
    address: str  # the client's IP address
    roles: frozenset[Role] = field(default_factory=frozenset)

    def may(self, role: Role) -> bool:
        """Whether one of its roles includes ``role``."""
        return any(held.includes(role) for held in self.roles)
