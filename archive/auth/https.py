"""HTTPS on the HTTP port (ARCHIVE_HTTP_TLS_CERT, ARCHIVE_HTTP_TLS_KEY): TLS 1.2 or newer.

Python's server defaults (``ssl.create_default_context(Purpose.CLIENT_AUTH)``) with the
minimum raised to TLS 1.2 (RFC 8996 deprecates 1.0 and 1.1; BCP 195, RFC 9325, asks for 1.2+).
"""

from __future__ import annotations

import ssl

from archive.core.errors import ConfigError


def server_context(cert: str, key: str) -> ssl.SSLContext:
    """The TLS context of the HTTP port; ConfigError naming the setting when a file is unusable."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except FileNotFoundError as exc:
        which = "ARCHIVE_HTTP_TLS_KEY" if exc.filename == key else "ARCHIVE_HTTP_TLS_CERT"
        raise ConfigError(f"{which}: {exc.filename}: no such file") from None
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"ARCHIVE_HTTP_TLS_CERT/ARCHIVE_HTTP_TLS_KEY: cannot load {cert} with {key}: {exc}") from None
    return context
