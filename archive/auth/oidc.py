"""OpenID Connect access tokens: JWTs (RFC 7519) checked against the issuer's keys.

The keys (a JWK Set, RFC 7517) are found by discovery (OpenID Connect Discovery 1.0:
``<issuer>/.well-known/openid-configuration`` names ``jwks_uri``), fetched with aiohttp (the
event loop never waits on a socket), and cached. A token signed with a key we do not know
(``kid``: the issuer rotated its keys) makes us fetch the set again, at most once every
``min_refresh`` seconds whatever the callers send (a flood of made-up ``kid`` values costs
the issuer one request per interval); the set is also refetched when older than ``max_age``.

Checked by PyJWT (``jwt.decode``, RFC 7515 signatures through ``cryptography``): the
signature, with only the algorithms the key is for (RSA: RS*/PS*, EC: the ES* of its curve,
OKP: EdDSA; never ``none``, never an HMAC algorithm, so a public key can never be used as an
HMAC secret), the issuer, the audience, ``exp`` and ``nbf`` with ``leeway`` seconds of clock
skew (RFC 7519 4.1.4, 4.1.5). PyJWT rather than joserfc: the most used Python JOSE library,
maintained for a decade, typed, and its API makes the allowed algorithms an explicit list.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import jwt

from archive.auth.claims import roles_from, user_name
from archive.auth.errors import InvalidToken
from archive.core.errors import BackendUnavailable
from archive.core.identity import Role
from archive.settings import loopback_host

log = logging.getLogger(__name__)

LEEWAY = 30.0  # seconds of clock skew allowed on exp, nbf and iat
MIN_REFRESH = 5.0  # at most one JWKS fetch per this many seconds
MAX_AGE = 600.0  # refetch a JWKS older than this (a key the issuer withdrew stops working)
FETCH_TIMEOUT = 5.0
MAX_DOCUMENT = 1024**2  # bytes of a discovery document or a JWK Set
MAX_TOKEN = 8192  # characters (aiohttp's header limit is about the same)
CACHE_SECONDS = 60.0  # a token verified once is taken as verified for this long (its exp still checked)
CACHE_ENTRIES = 4096
_SEGMENT = re.compile(r"[A-Za-z0-9_-]+")

RSA_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
EC_ALGORITHMS = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}
ALGORITHMS = RSA_ALGORITHMS | frozenset(EC_ALGORITHMS.values()) | {"EdDSA"}

FetchJson = Callable[[str], Awaitable[Any]]


def _secure_url(url: str) -> bool:
    """https, or http on a loopback host (tests, a sidecar)."""
    parts = urlsplit(url)
    return parts.scheme == "https" or (parts.scheme == "http" and loopback_host(parts.hostname))


def algorithms_for(jwk: Mapping[str, Any]) -> frozenset[str]:
    """The signature algorithms a JWK may verify (RFC 7518 3; RFC 8037 for OKP); empty: not a
    signing key we use (an encryption key, a symmetric key, an unknown type)."""
    if jwk.get("use", "sig") != "sig":
        return frozenset()
    kty = jwk.get("kty")
    if kty == "RSA":
        family = RSA_ALGORITHMS
    elif kty == "EC":
        family = frozenset({EC_ALGORITHMS[jwk["crv"]]}) if jwk.get("crv") in EC_ALGORITHMS else frozenset()
    elif kty == "OKP" and jwk.get("crv") in ("Ed25519", "Ed448"):
        family = frozenset({"EdDSA"})
    else:  # "oct" (a shared secret) and anything else: never
        return frozenset()
    named = jwk.get("alg")
    if named is not None:  # the key says which one (RFC 7517 4.4)
        return frozenset({named}) & family
    return family


@dataclass
class _Key:
    jwk: dict[str, Any]
    algorithms: frozenset[str]
    usable: dict[str, jwt.PyJWK] = field(default_factory=dict)  # by algorithm, made on first use

    def for_algorithm(self, alg: str) -> jwt.PyJWK:
        found = self.usable.get(alg)
        if found is None:
            try:
                found = self.usable[alg] = jwt.PyJWK(self.jwk, alg)
            except jwt.PyJWTError:
                raise InvalidToken("the issuer's key cannot be used") from None
        return found


class JwksCache:
    """The issuer's signing keys by ``kid``, fetched by discovery and refreshed on an unknown ``kid``."""

    def __init__(self, issuer: str, fetch_json: FetchJson, *, min_refresh: float = MIN_REFRESH,
                 max_age: float = MAX_AGE, clock: Callable[[], float] = time.monotonic) -> None:
        self.issuer = issuer
        self._fetch_json = fetch_json
        self.min_refresh = min_refresh
        self.max_age = max_age
        self._clock = clock
        self._keys: dict[str | None, _Key] | None = None
        self._jwks_uri: str | None = None
        self._fetched_at = -float("inf")  # last fetch attempt (successful or not)
        self._loaded_at = -float("inf")  # last successful fetch
        self._lock = asyncio.Lock()
        self.fetches = 0  # JWKS fetches made (for tests and the metrics)

    async def key(self, kid: str | None) -> _Key:
        """The key ``kid`` names; InvalidToken when the issuer has none of that id."""
        stale = self._clock() - self._loaded_at > self.max_age
        if self._keys is None or stale or not self._has(kid):
            await self._refresh(want=kid)
        if self._keys is None:  # never fetched: the issuer is down (the fetch raised), or rate limited
            raise BackendUnavailable("oidc", f"the signing keys of {self.issuer} are not loaded yet")
        if kid is None and len(self._keys) == 1:  # a token without kid, an issuer with one key
            return next(iter(self._keys.values()))
        found = self._keys.get(kid)
        if found is None:
            raise InvalidToken("signed with a key the issuer does not publish")
        return found

    def _has(self, kid: str | None) -> bool:
        return self._keys is not None and (kid in self._keys or (kid is None and len(self._keys) == 1))

    async def load(self) -> None:
        """Fetch the keys unless they are fresh (start-up); BackendUnavailable if the issuer is down."""
        await self._refresh(want=None)

    async def _refresh(self, want: str | None) -> None:
        async with self._lock:  # one fetch at a time; the others wait for its result
            if self._has(want) and self._clock() - self._loaded_at <= self.max_age:
                return  # fetched by whoever held the lock
            if self._clock() - self._fetched_at < self.min_refresh:
                return  # rate limited: answer from what we have
            self._fetched_at = self._clock()
            try:
                keys = await self._load()
            except BackendUnavailable as exc:
                if self._keys is None:
                    raise
                log.warning("JWKS refresh failed; keeping the keys we have", extra={"error": str(exc)})
                return
            self._keys = keys
            self._loaded_at = self._clock()

    async def _load(self) -> dict[str | None, _Key]:
        if self._jwks_uri is None:
            url = self.issuer.rstrip("/") + "/.well-known/openid-configuration"
            document = await self._fetch_json(url)
            if not isinstance(document, dict) or document.get("issuer") != self.issuer:
                # OpenID Connect Discovery 4.3: the document must name exactly the issuer asked for
                found = document.get("issuer") if isinstance(document, dict) else None
                raise BackendUnavailable("oidc", f"{url} names issuer {found!r}, not {self.issuer!r}")
            uri = document.get("jwks_uri")
            if not isinstance(uri, str) or not _secure_url(uri):
                raise BackendUnavailable("oidc", f"{url}: jwks_uri {uri!r} is not https")
            self._jwks_uri = uri
        self.fetches += 1
        jwks = await self._fetch_json(self._jwks_uri)
        if not isinstance(jwks, dict) or not isinstance(jwks.get("keys"), list):
            raise BackendUnavailable("oidc", f"{self._jwks_uri} is not a JWK Set")
        keys: dict[str | None, _Key] = {}
        for jwk in jwks["keys"]:
            if isinstance(jwk, dict) and (algorithms := algorithms_for(jwk)):
                keys[jwk.get("kid")] = _Key(jwk, algorithms)
        log.info("signing keys loaded", extra={"issuer": self.issuer, "kids": sorted(str(k) for k in keys)})
        return keys


class HttpJson:
    """GETs JSON documents with one aiohttp session (opened on first use, in the running loop)."""

    def __init__(self, timeout: float = FETCH_TIMEOUT) -> None:
        self.timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    async def __call__(self, url: str) -> Any:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout),
                                                  headers={"Accept": "application/json"})
        try:
            async with self._session.get(url, allow_redirects=False) as response:
                if response.status != 200:
                    raise BackendUnavailable("oidc", f"{url} answered {response.status}")
                body = await response.content.read(MAX_DOCUMENT + 1)
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise BackendUnavailable("oidc", f"{url}: {type(exc).__name__}: {exc}") from exc
        if len(body) > MAX_DOCUMENT:
            raise BackendUnavailable("oidc", f"{url}: more than {MAX_DOCUMENT} bytes")
        try:
            return json.loads(body)
        except ValueError as exc:
            raise BackendUnavailable("oidc", f"{url}: not JSON") from exc

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


@dataclass(frozen=True)
class TokenHolder:
    name: str
    roles: frozenset[Role]


def _unverified_header(token: str) -> dict[str, Any]:
    """The JOSE header (RFC 7515 4), read to find the key; nothing in it is trusted yet."""
    head, dot, _ = token.partition(".")
    if not dot or not _SEGMENT.fullmatch(head):
        raise InvalidToken("not a JWT")
    try:
        header = json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))
    except (ValueError, binascii.Error):
        raise InvalidToken("not a JWT") from None
    if not isinstance(header, dict):
        raise InvalidToken("not a JWT")
    return header


class OidcVerifier:
    """Checks access tokens of one issuer for one audience; roles from ``roles_claim``."""

    def __init__(self, issuer: str, audience: str, roles_claim: str, *, fetch_json: FetchJson | None = None,
                 leeway: float = LEEWAY, min_refresh: float = MIN_REFRESH, cache_seconds: float = CACHE_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.issuer = issuer
        self.audience = audience
        self.roles_claim = roles_claim
        self.leeway = leeway
        self._http = HttpJson() if fetch_json is None else None
        fetch = fetch_json if fetch_json is not None else self._http
        assert fetch is not None
        self.keys = JwksCache(issuer, fetch, min_refresh=min_refresh, clock=clock)
        # Tokens verified lately: a client sends the same token with every request of a session.
        # Keyed by the whole token, so only the very same bytes hit; exp is checked again on each hit.
        self.cache_seconds = cache_seconds
        self._clock = clock
        self._verified: OrderedDict[str, tuple[TokenHolder, float, float]] = OrderedDict()

    async def verify(self, token: str) -> TokenHolder:
        """The holder of a valid token; InvalidToken with the reason otherwise."""
        if len(token) > MAX_TOKEN:
            raise InvalidToken("too long")
        cached = self._verified.get(token)
        if cached is not None:
            holder, expires, until = cached
            if time.time() <= expires + self.leeway and self._clock() < until:
                self._verified.move_to_end(token)
                return holder
            del self._verified[token]
        holder, expires = await self._verify(token)
        if self.cache_seconds > 0:
            self._verified[token] = (holder, expires, self._clock() + self.cache_seconds)
            if len(self._verified) > CACHE_ENTRIES:
                self._verified.popitem(last=False)
        return holder

    async def _verify(self, token: str) -> tuple[TokenHolder, float]:
        header = _unverified_header(token)
        alg, kid = header.get("alg"), header.get("kid")
        if alg not in ALGORITHMS:  # "none", HS256 and anything we do not know (never echoed back)
            raise InvalidToken("signature algorithm not accepted")
        if kid is not None and not isinstance(kid, str):
            raise InvalidToken("malformed kid")
        key = await self.keys.key(kid)
        if alg not in key.algorithms:
            raise InvalidToken(f"algorithm {alg} does not fit the key")
        try:
            claims = jwt.decode(
                token, key.for_algorithm(alg), algorithms=[alg], audience=self.audience, issuer=self.issuer,
                leeway=self.leeway, options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            raise InvalidToken("expired") from None
        except jwt.ImmatureSignatureError:
            raise InvalidToken("not yet valid") from None
        except jwt.InvalidAudienceError:
            raise InvalidToken("not for this audience") from None
        except jwt.InvalidIssuerError:
            raise InvalidToken("wrong issuer") from None
        except jwt.InvalidSignatureError:
            raise InvalidToken("bad signature") from None
        except jwt.MissingRequiredClaimError as exc:
            raise InvalidToken(("not for this audience (no aud claim)" if exc.claim == "aud"
                                else f"no {exc.claim} claim")) from None
        except jwt.PyJWTError as exc:
            raise InvalidToken(f"invalid ({type(exc).__name__})") from None
        return TokenHolder(user_name(claims), roles_from(claims, self.roles_claim)), float(claims["exp"])

    async def prefetch(self) -> None:
        """Load the keys now (at start-up), so that the first request does not wait; failures are logged."""
        try:
            await self.keys.load()
        except BackendUnavailable as exc:
            log.warning("OpenID Connect issuer unreachable at start-up", extra={"error": str(exc)})

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
