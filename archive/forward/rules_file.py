"""ARCHIVE_ROUTING_RULES: the rules file, parsed at start (an error stops the process) and
re-read when its modification time or size changes (an error then keeps the rules in force and
is logged: a typo in production never stops forwarding)."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable
from pathlib import Path

from archive.core.routing import Rules, RulesError, parse

log = logging.getLogger(__name__)
CHECK_SECONDS = 2.0


def read(path: str, peers: Iterable[str] | None) -> Rules:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RulesError(f"ARCHIVE_ROUTING_RULES: cannot read {path}: {exc}") from None
    return parse(text, path, peers)


class RulesFile:
    """The rules in force; ``current()`` re-reads the file at most every ``check_seconds``."""

    def __init__(self, path: str, peers: Iterable[str], *, check_seconds: float = CHECK_SECONDS) -> None:
        self.path = path
        self.peers = frozenset(peers)
        self.check_seconds = check_seconds
        self._stamp = self._stat()
        self._rules = read(path, self.peers) if path else Rules()
        self._next_check = time.monotonic() + check_seconds

    def _stat(self) -> tuple[int, int] | None:
        if not self.path:
            return None
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size

    def current(self) -> Rules:
        if not self.path or time.monotonic() < self._next_check:
            return self._rules
        self._next_check = time.monotonic() + self.check_seconds
        stamp = self._stat()
        if stamp is None or stamp == self._stamp:
            return self._rules
        self._stamp = stamp
        try:
            self._rules = read(self.path, self.peers)
        except RulesError as exc:
            log.error("routing rules not reloaded; the previous rules stay in force", extra={"reason": str(exc)})
            return self._rules
        log.info("routing rules reloaded", extra={"rules": len(self._rules.rules),
                                                  "destinations": list(self._rules.destinations)})
        return self._rules
