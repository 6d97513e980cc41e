"""Errors of HTTP authentication."""

from __future__ import annotations

from archive.core.errors import ArchiveError


class AuthError(ArchiveError):
    """Root of the authentication errors."""


class InvalidToken(AuthError):
    """A bearer token that is not accepted: 401 with ``error="invalid_token"`` (RFC 6750 3.1).

    The message is a short reason a client may see ("expired", "wrong audience"); it never
    quotes the token.
    """
