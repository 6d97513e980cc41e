"""What a verified access token says about its holder: roles from a configurable claim, a name."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from archive.core.identity import Role

_BY_NAME = {role.value: role for role in Role}


def claim_at(claims: Mapping[str, Any], path: str) -> Any:
    """The value at a dotted ``path`` (``realm_access.roles``), None where the path ends early.

    A claim whose own name contains a dot (Azure AD's ``roles`` does not; some issuers use
    URLs as claim names) is found too: the whole remaining path is tried as one name first.
    """
    node: Any = claims
    rest = path
    while rest:
        if not isinstance(node, Mapping):
            return None
        if rest in node:
            return node[rest]
        head, _, rest = rest.partition(".")
        if head not in node:
            return None
        node = node[head]
        if not rest:
            return node
    return node


def roles_from(claims: Mapping[str, Any], path: str) -> frozenset[Role]:
    """The archive's roles (reader, writer, admin) in the claim at ``path``; other values are ignored.

    A list of strings (Keycloak ``realm_access.roles``, Azure AD ``roles``) or one string of
    space-separated names.
    """
    value = claim_at(claims, path)
    if isinstance(value, str):
        names = value.split()
    elif isinstance(value, (list, tuple)):
        names = [v for v in value if isinstance(v, str)]
    else:
        return frozenset()
    return frozenset(_BY_NAME[name] for name in names if name in _BY_NAME)


def user_name(claims: Mapping[str, Any]) -> str:
    """``preferred_username`` (OpenID Connect Core 5.1), else ``sub`` (RFC 7519 4.1.2)."""
    for name in ("preferred_username", "sub"):
        value = claims.get(name)
        if isinstance(value, str) and value:
            return value
    return "unknown"
