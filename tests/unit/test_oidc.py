"""Access tokens checked against an issuer's keys: every way a token can be wrong, with hand-minted tokens.

The issuer here is a fake (its discovery document and JWK Set are served by a function that counts
its calls), so that tokens Keycloak never issues (expired, not yet valid, another issuer, `none`,
HS256 keyed with the public key, a foreign key, an unknown kid) can be made. Tokens from the real
Keycloak: tests/e2e/test_http_auth.py.
"""

from __future__ import annotations

import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from archive.auth.errors import InvalidToken
from archive.auth.oidc import MAX_AGE, MIN_REFRESH, OidcVerifier, algorithms_for
from archive.core.errors import BackendUnavailable
from archive.core.identity import Role

ISSUER = "https://sso.example.com/realms/archive"
AUDIENCE = "dicom-archive"


def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


KEY = rsa_key()
OTHER_KEY = rsa_key()
EC_KEY = ec.generate_private_key(ec.SECP256R1())


def public_jwk(key: Any, kid: str, alg: str | None = "RS256") -> dict[str, Any]:
    algorithm = jwt.algorithms.RSAAlgorithm if isinstance(key, rsa.RSAPrivateKey) else jwt.algorithms.ECAlgorithm
    jwk: dict[str, Any] = algorithm.to_jwk(key.public_key(), as_dict=True)
    jwk |= {"kid": kid, "use": "sig"}
    if alg:
        jwk["alg"] = alg
    return jwk


class FakeIssuer:
    """Discovery and JWKS documents; counts the JWKS fetches; ``clock`` is what the verifier sees."""

    def __init__(self, *jwks: dict[str, Any]) -> None:
        self.keys = list(jwks)
        self.jwks_fetches = 0
        self.now = 1000.0
        self.down = False

    async def fetch(self, url: str) -> Any:
        if self.down:
            raise BackendUnavailable("oidc", f"{url}: connection refused")
        if url == ISSUER + "/.well-known/openid-configuration":
            return {"issuer": ISSUER, "jwks_uri": ISSUER + "/protocol/openid-connect/certs"}
        assert url == ISSUER + "/protocol/openid-connect/certs"
        self.jwks_fetches += 1
        return {"keys": list(self.keys)}

    def clock(self) -> float:
        return self.now

    def verifier(self, roles_claim: str = "realm_access.roles") -> OidcVerifier:
        return OidcVerifier(ISSUER, AUDIENCE, roles_claim, fetch_json=self.fetch, clock=self.clock)


def claims(**changes: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {"iss": ISSUER, "aud": AUDIENCE, "sub": "u-1", "preferred_username": "rita", "iat": now,
            "exp": now + 300, "realm_access": {"roles": ["writer"]}}
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


def mint(payload: dict[str, Any], key: Any = KEY, kid: str | None = "k1", alg: str = "RS256") -> str:
    headers = {"kid": kid} if kid is not None else {}
    return jwt.encode(payload, key, algorithm=alg, headers=headers)


@pytest.fixture
def issuer() -> FakeIssuer:
    return FakeIssuer(public_jwk(KEY, "k1"))


async def test_a_valid_token_names_its_holder_and_roles(issuer: FakeIssuer) -> None:
    holder = await issuer.verifier().verify(mint(claims()))
    assert holder.name == "rita" and holder.roles == {Role.WRITER}
    azure = await issuer.verifier("roles").verify(mint(claims(roles=["admin"], realm_access=None)))
    assert azure.roles == {Role.ADMIN}
    assert (await issuer.verifier().verify(mint(claims(aud=["account", AUDIENCE])))).roles == {Role.WRITER}


async def test_an_ec_key_and_a_key_without_alg(issuer: FakeIssuer) -> None:
    issuer.keys = [public_jwk(EC_KEY, "ec1", alg=None), public_jwk(KEY, "k1", alg=None)]
    verifier = issuer.verifier()
    assert (await verifier.verify(mint(claims(), EC_KEY, "ec1", "ES256"))).name == "rita"
    assert (await verifier.verify(mint(claims(), KEY, "k1", "PS256"))).name == "rita"  # RSA: RS* and PS*
    with pytest.raises(InvalidToken, match="does not fit the key"):
        await verifier.verify(mint(claims(), EC_KEY, "k1", "ES256"))  # an EC signature naming the RSA key


# the claims are made when the test runs (at collection, a long suite would see every token expired)
@pytest.mark.parametrize("changes, reason", [
    (lambda now: {"iss": "https://evil.example.com/realms/archive"}, "wrong issuer"),
    (lambda now: {"aud": "another-app"}, "not for this audience"),
    (lambda now: {"aud": None}, "no aud claim"),
    (lambda now: {"exp": now - 120}, "expired"),
    (lambda now: {"nbf": now + 120}, "not yet valid"),
    (lambda now: {"exp": None}, "no exp claim"),
], ids=["wrong-issuer", "another-audience", "no-audience", "expired", "not-yet-valid", "no-expiry"])
async def test_claims_that_are_refused(issuer: FakeIssuer, changes: Any, reason: str) -> None:
    with pytest.raises(InvalidToken, match=reason):
        await issuer.verifier().verify(mint(claims(**changes(int(time.time())))))


async def test_clock_skew_within_the_leeway_is_accepted(issuer: FakeIssuer) -> None:
    now = int(time.time())
    verifier = issuer.verifier()
    await verifier.verify(mint(claims(exp=now - 10)))  # expired 10 s ago: a clock behind ours
    await verifier.verify(mint(claims(nbf=now + 10, iat=now + 10)))


async def test_alg_none_is_refused(issuer: FakeIssuer) -> None:
    token = jwt.encode(claims(), None, algorithm="none", headers={"kid": "k1"})
    with pytest.raises(InvalidToken, match="signature algorithm not accepted"):
        await issuer.verifier().verify(token)
    unsigned = mint(claims()).rsplit(".", 1)[0] + "."  # a real header and payload, the signature cut off
    with pytest.raises(InvalidToken):
        await issuer.verifier().verify(unsigned)


async def test_hs256_keyed_with_the_public_key_is_refused(issuer: FakeIssuer) -> None:
    """The classic confusion: an HMAC "signature" made with the issuer's (public) RSA key as the secret."""
    pem = KEY.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    import hashlib
    import hmac
    import base64
    import json

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    signing_input = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "k1"}).encode()) + "." + b64(
        json.dumps(claims()).encode())
    forged = signing_input + "." + b64(hmac.new(pem, signing_input.encode(), hashlib.sha256).digest())
    with pytest.raises(InvalidToken, match="signature algorithm not accepted"):
        await issuer.verifier().verify(forged)


async def test_a_token_signed_by_another_key_is_refused(issuer: FakeIssuer) -> None:
    with pytest.raises(InvalidToken, match="bad signature"):
        await issuer.verifier().verify(mint(claims(), OTHER_KEY, kid="k1"))


@pytest.mark.parametrize("token", ["", "abc", "a.b.c", "eyJhbGciOiJSUzI1NiJ9.e30", "x" * 5000])
async def test_garbage_is_refused(issuer: FakeIssuer, token: str) -> None:
    with pytest.raises(InvalidToken):
        await issuer.verifier().verify(token)


async def test_an_unknown_kid_refetches_the_keys_at_most_every_few_seconds(issuer: FakeIssuer) -> None:
    verifier = issuer.verifier()
    await verifier.verify(mint(claims()))
    assert issuer.jwks_fetches == 1

    async def flood() -> None:
        for i in range(20):
            with pytest.raises(InvalidToken, match="key the issuer does not publish"):
                await verifier.verify(mint(claims(), OTHER_KEY, kid=f"made-up-{i}"))

    await flood()  # made-up kids right after a fetch: none
    assert issuer.jwks_fetches == 1
    issuer.now += MIN_REFRESH + 0.1
    await flood()  # later: one fetch for all of them
    assert issuer.jwks_fetches == 2
    await verifier.verify(mint(claims()))  # the known key still works, without a fetch
    assert issuer.jwks_fetches == 2

    # The issuer rotates: a new key appears. Within the interval we cannot know it yet ...
    issuer.keys.append(public_jwk(OTHER_KEY, "k2"))
    rotated = mint(claims(), OTHER_KEY, kid="k2")
    with pytest.raises(InvalidToken):
        await verifier.verify(rotated)
    assert issuer.jwks_fetches == 2
    issuer.now += MIN_REFRESH + 0.1  # ... after it, the first token with the new kid fetches the set
    assert (await verifier.verify(rotated)).name == "rita"
    assert issuer.jwks_fetches == 3
    await verifier.verify(mint(claims()))
    assert issuer.jwks_fetches == 3


async def test_an_issuer_that_is_down_is_503_not_401_and_known_keys_keep_working(issuer: FakeIssuer) -> None:
    verifier = issuer.verifier()
    issuer.down = True
    with pytest.raises(BackendUnavailable):
        await verifier.verify(mint(claims()))
    issuer.down = False
    with pytest.raises(BackendUnavailable):  # a failed fetch counts too: no new one within the interval
        await verifier.verify(mint(claims()))
    issuer.now += MIN_REFRESH + 0.1
    assert (await verifier.verify(mint(claims()))).name == "rita"  # ... then it loads
    issuer.down = True
    issuer.now += 1000  # keys are stale, the refetch fails: the keys we have still serve
    assert (await verifier.verify(mint(claims()))).name == "rita"


async def test_discovery_must_name_the_issuer_and_an_https_jwks_uri() -> None:
    async def lying(url: str) -> Any:
        return {"issuer": "https://other.example.com", "jwks_uri": "https://other.example.com/certs"}

    async def plain(url: str) -> Any:
        return {"issuer": ISSUER, "jwks_uri": "http://sso.example.com/certs"}

    for fetch in (lying, plain):
        with pytest.raises(BackendUnavailable):
            await OidcVerifier(ISSUER, AUDIENCE, "roles", fetch_json=fetch).verify(mint(claims()))


def test_only_signing_keys_of_known_types_are_used() -> None:
    rsa_jwk = public_jwk(KEY, "k", alg=None)
    assert algorithms_for(rsa_jwk) == {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}
    assert algorithms_for(rsa_jwk | {"alg": "RS256"}) == {"RS256"}
    assert algorithms_for(rsa_jwk | {"alg": "HS256"}) == set()  # a key claiming an HMAC algorithm
    assert algorithms_for(rsa_jwk | {"use": "enc"}) == set()  # Keycloak also publishes RSA-OAEP keys
    assert algorithms_for({"kty": "oct", "k": "c2VjcmV0"}) == set()
    assert algorithms_for(public_jwk(EC_KEY, "e", alg=None)) == {"ES256"}
    assert algorithms_for({"kty": "OKP", "crv": "Ed25519", "x": "AA"}) == {"EdDSA"}


async def test_a_verified_token_is_cached_briefly_and_its_expiry_still_applies(
        issuer: FakeIssuer, monkeypatch: pytest.MonkeyPatch) -> None:
    from archive.auth import oidc

    verifier = issuer.verifier()
    token = mint(claims(exp=int(time.time()) + 120))
    await verifier.verify(token)
    issuer.keys = [public_jwk(OTHER_KEY, "k2")]  # the issuer withdraws k1
    assert (await verifier.verify(token)).name == "rita"  # the same token: from the cache
    issuer.now += MAX_AGE + 1  # past the cache time and the key set's age: fetched again, k1 is gone
    with pytest.raises(InvalidToken, match="key the issuer does not publish"):
        await verifier.verify(token)

    issuer.keys = [public_jwk(KEY, "k1")]
    issuer.now += MIN_REFRESH + 1
    await verifier.verify(token)
    checked = []
    full_check = verifier._verify

    async def spy(t: str) -> Any:
        checked.append(t)
        return await full_check(t)

    monkeypatch.setattr(verifier, "_verify", spy)
    await verifier.verify(token)
    assert checked == []  # from the cache
    real_time = time.time
    monkeypatch.setattr(oidc.time, "time", lambda: real_time() + 120 + verifier.leeway + 1)
    await verifier.verify(token)  # (PyJWT reads the real clock: the token is still valid for it)
    assert checked == [token]  # past its exp the cache does not answer for it


async def test_an_oversized_token_is_refused_before_any_parsing(issuer: FakeIssuer) -> None:
    with pytest.raises(InvalidToken, match="too long"):
        await issuer.verifier().verify("e" * 9000)
