"""API keys: long-lived bearer tokens of scripts and integrations that cannot do OpenID Connect.

A key is ``dka_`` and 43 characters of base64url (32 random bytes from :mod:`secrets`): the
prefix tells it from a JWT at a glance (and to secret scanners). Only its SHA-256 is stored:
a key of 256 random bits cannot be guessed from its hash, so a slow password hash (bcrypt,
Argon2) would add cost and no safety; a stolen table holds no usable key. The key is shown
once, when created.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import time

from archive.core.identity import Role
from archive.core.ports import ApiKey, ApiKeys

log = logging.getLogger(__name__)

PREFIX = "dka_"
TOUCH_INTERVAL = 60.0  # record "last used" at most once a minute per key (a write per request would cost)


def new_key() -> str:
    return PREFIX + secrets.token_urlsafe(32)


def digest(key: str) -> str:
    """SHA-256 of the key, hex (what the table stores)."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def is_api_key(token: str) -> bool:
    return token.startswith(PREFIX)


async def create(keys: ApiKeys, name: str, role: Role) -> tuple[str, ApiKey]:
    """A new key named ``name``: the key (to show once) and what was stored."""
    if not name or len(name) > 100 or not name.isprintable():
        raise ValueError("an API key name is 1-100 printable characters")
    key = new_key()
    return key, await keys.create_key(name, role, digest(key))


class ApiKeyChecker:
    """Finds the stored key of a bearer token; records its use in the background."""

    def __init__(self, keys: ApiKeys, touch_interval: float = TOUCH_INTERVAL) -> None:
        self.keys = keys
        self.touch_interval = touch_interval
        self._touched: dict[str, float] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def check(self, token: str) -> ApiKey | None:
        found = await self.keys.key_by_digest(digest(token))
        if found is not None:
            self._touch(found.name)
        return found

    def _touch(self, name: str) -> None:
        now = time.time()
        if now - self._touched.get(name, 0.0) < self.touch_interval:
            return
        self._touched[name] = now
        task = asyncio.create_task(self._record(name, now))  # never delays the request
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _record(self, name: str, when: float) -> None:
        try:
            await self.keys.touch_key(name, when)
        except Exception as exc:  # the catalog is busy or down: "last used" is best effort
            log.warning("could not record an API key's use", extra={"key_name": name, "error": type(exc).__name__})

    async def close(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
