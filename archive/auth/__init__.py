"""HTTP authentication and authorisation: who is calling (OpenID Connect access tokens, API keys,
the loopback default) and what each role may do (the route -> role table).

- :mod:`~archive.auth.policy`: the one table from routes to the role they need.
- :mod:`~archive.auth.claims`: roles and the user name from a token's claims.
- :mod:`~archive.auth.oidc`: JWT access tokens checked against the issuer's keys (RFC 7519, RFC 7517,
  OpenID Connect Discovery 1.0), fetched asynchronously and cached.
- :mod:`~archive.auth.api_keys`: long-lived keys of scripts (only their SHA-256 is stored).
- :mod:`~archive.auth.access`: the middleware every role's HTTP application runs (RFC 6750 answers).
- :mod:`~archive.auth.https`: the HTTP port's TLS context.

It knows ports only (``archive.core.ports.ApiKeys``), never an adapter or a role.
"""
