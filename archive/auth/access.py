"""The authentication middleware every role's HTTP application runs, and what applies when.

Per request, before any handler: the route's role (:mod:`archive.auth.policy`); open routes
pass. Otherwise the caller is identified from ``Authorization: Bearer <token>`` (RFC 6750 2.1):
an API key (``dka_...``) or, with ``ARCHIVE_OIDC_ISSUER``, an access token (JWT). Without a
token:

- with an issuer: 401;
- ``ARCHIVE_HTTP_INSECURE_OPEN=true``: every role (``Principal(OPEN)``);
- neither (the default): a loopback client gets every role (``Principal(LOCAL)``), any other
  403 with a message naming both settings.

A token that is given is always checked: a bad one is 401 with ``error="invalid_token"``
(RFC 6750 3.1), wherever it comes from; so is a request with two Authorization headers. Tokens
come from that header only, never the query string (RFC 6750 2.3) or a cookie. A valid caller without the role gets 403. Both are
decided before the handler runs, so neither says whether a study exists. The caller is left
under :data:`archive.web.PRINCIPAL` for handlers and the audit trail.
"""

from __future__ import annotations

import logging
from enum import Enum

from aiohttp import web
from aiohttp.typedefs import Middleware

from archive import metrics
from archive.auth.api_keys import ApiKeyChecker, is_api_key
from archive.auth.errors import InvalidToken
from archive.auth.oidc import OidcVerifier
from archive.auth.policy import required_role
from archive.core.identity import Principal, PrincipalKind, Role
from archive.core.ports import ApiKeys
from archive.settings import Settings, loopback_host
from archive.web import PRINCIPAL, Handler, audit_denied

log = logging.getLogger(__name__)

REALM = "dicom-archive"
EVERY_ROLE = frozenset({Role.ADMIN})  # roles are cumulative
NOT_FROM_HERE = (
    "HTTP access without authentication is allowed from this machine (loopback) only. Set "
    "ARCHIVE_OIDC_ISSUER and ARCHIVE_OIDC_AUDIENCE to let users sign in (or send an API key), or "
    "ARCHIVE_HTTP_INSECURE_OPEN=true to open the HTTP API to the network without authentication")


class Mode(str, Enum):
    OIDC = "oidc"  # access tokens of an issuer (and API keys)
    LOCAL = "local"  # no issuer: loopback clients get every role (and API keys work from anywhere)
    OPEN = "open"  # ARCHIVE_HTTP_INSECURE_OPEN=true: anyone gets every role


class Refused(Exception):
    """The answer to a request that may not proceed (401 or 403)."""

    def __init__(self, response: web.Response, outcome: str) -> None:
        super().__init__(outcome)
        self.response = response
        self.outcome = outcome


def _unauthorized(reason: str | None) -> Refused:
    challenge = f'Bearer realm="{REALM}"'
    if reason is None:
        body = "authentication required: send Authorization: Bearer <access token or API key>"
        outcome = "unauthenticated"
    else:
        description = "".join(c if c.isprintable() and c not in '"\\' else "'" for c in reason)  # RFC 6750 3
        challenge += f', error="invalid_token", error_description="{description}"'
        body, outcome = f"invalid token: {reason}", "invalid_token"
    return Refused(web.json_response({"error": body}, status=401, headers={"WWW-Authenticate": challenge}), outcome)


def _forbidden(message: str) -> Refused:
    return Refused(web.json_response({"error": message}, status=403), "forbidden")


class Access:
    """How one process identifies HTTP callers (from the settings, once)."""

    def __init__(self, mode: Mode, *, verifier: OidcVerifier | None = None,
                 api_keys: ApiKeyChecker | None = None, ignored_open: bool = False) -> None:
        if (mode is Mode.OIDC) != (verifier is not None):
            raise ValueError("an OIDC verifier goes with Mode.OIDC")
        self.mode = mode
        self.verifier = verifier
        self.api_keys = api_keys
        self.ignored_open = ignored_open

    @classmethod
    def from_settings(cls, settings: Settings, keys: ApiKeys | None) -> "Access":
        checker = ApiKeyChecker(keys) if keys is not None else None
        if settings.oidc_issuer:
            verifier = OidcVerifier(settings.oidc_issuer, settings.oidc_audience, settings.oidc_roles_claim)
            return cls(Mode.OIDC, verifier=verifier, api_keys=checker, ignored_open=settings.http_insecure_open)
        return cls(Mode.OPEN if settings.http_insecure_open else Mode.LOCAL, api_keys=checker)

    def describe(self) -> tuple[int, str]:
        """What applies, for the start-up log: (level, message)."""
        keys = " and API keys" if self.api_keys is not None else ""
        if self.mode is Mode.OIDC:
            assert self.verifier is not None
            text = (f"HTTP sign-in: access tokens of {self.verifier.issuer} for audience {self.verifier.audience} "
                    f"(roles from the claim {self.verifier.roles_claim}){keys}; no access without a token "
                    "(except /healthz, /readyz, /api/openapi.json and the web UI's files)")
            if self.ignored_open:
                return logging.WARNING, text + "; ARCHIVE_HTTP_INSECURE_OPEN is ignored: ARCHIVE_OIDC_ISSUER is set"
            return logging.INFO, text
        if self.mode is Mode.OPEN:
            return logging.WARNING, ("ARCHIVE_HTTP_INSECURE_OPEN=true: every HTTP client, from any address, has "
                                     "every role without authentication")
        return logging.WARNING, ("No HTTP authentication configured: loopback clients have every role, other "
                                 f"clients get 403{' unless they send an API key' if keys else ''}. Set "
                                 "ARCHIVE_OIDC_ISSUER and ARCHIVE_OIDC_AUDIENCE to let users sign in, or "
                                 "ARCHIVE_HTTP_INSECURE_OPEN=true to open the HTTP API without authentication")

    async def identify(self, request: web.Request) -> Principal:
        """Who sends ``request``; Refused (401/403) when nobody we accept."""
        address = request.remote or ""
        headers = request.headers.getall("Authorization", [])
        if len(headers) > 1:  # one credential per request (RFC 9110 11.6.2): a proxy may have checked the other
            raise _unauthorized("more than one Authorization header")
        header = headers[0] if headers else None
        if header is not None:
            scheme, _, token = header.strip().partition(" ")
            token = token.strip()
            if scheme.lower() != "bearer" or not token:
                raise _unauthorized("send Authorization: Bearer <token>")
            return await self._from_token(token, address)
        if self.mode is Mode.OIDC:
            raise _unauthorized(None)
        if self.mode is Mode.OPEN:
            return Principal(PrincipalKind.OPEN, "anonymous", address, EVERY_ROLE)
        if loopback_host(address):
            return Principal(PrincipalKind.LOCAL, "local", address, EVERY_ROLE)
        raise _forbidden(NOT_FROM_HERE)

    async def _from_token(self, token: str, address: str) -> Principal:
        if is_api_key(token):
            found = await self.api_keys.check(token) if self.api_keys is not None else None
            if found is None:
                raise _unauthorized("unknown or revoked API key")
            return Principal(PrincipalKind.API_KEY, found.name, address, frozenset({found.role}))
        if self.verifier is None:
            raise _unauthorized("no OpenID Connect issuer is configured; use an API key")
        try:
            holder = await self.verifier.verify(token)
        except InvalidToken as exc:
            log.info("access token refused", extra={"reason": str(exc), "client": address})
            raise _unauthorized(str(exc)) from None
        return Principal(PrincipalKind.USER, holder.name, address, holder.roles)

    async def prefetch(self) -> None:
        if self.verifier is not None:
            await self.verifier.prefetch()

    async def close(self) -> None:
        if self.verifier is not None:
            await self.verifier.close()
        if self.api_keys is not None:
            await self.api_keys.close()


def middleware(access: Access) -> Middleware:
    @web.middleware
    async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
        resource = request.match_info.route.resource
        path = resource.canonical if resource is not None else None
        preflight = "Access-Control-Request-Method" in request.headers
        needed = required_role(request.method, path, preflight=preflight)
        if needed is None:
            return await handler(request)
        principal: Principal | None = None
        try:
            principal = await access.identify(request)
            request[PRINCIPAL] = principal
            if not principal.may(needed):
                raise _forbidden(f"this needs the {needed.value} role")
        except Refused as refused:
            metrics.HTTP_AUTH.labels(refused.outcome).inc()
            # PS3.15 A.5.3: a 401 is a failed User Authentication, a 403 a Security Alert
            audit_denied(request, refused.response.status, refused.outcome, who=principal)
            return refused.response
        metrics.HTTP_AUTH.labels(principal.kind.value).inc()
        return await handler(request)

    return authenticate
