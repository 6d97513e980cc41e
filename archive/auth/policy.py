"""The one table from HTTP routes to the role they need (roles are cumulative: admin > writer > reader).

Decided from the route aiohttp matched (its canonical path, e.g. ``/dicom-web/studies/{study}``),
so that the decision is about the handler that will run, whatever spelling of the URL reached
it. A route the table does not name needs ``reader`` for GET/HEAD and ``admin`` for anything
else: nothing is open by default. CORS preflights (OPTIONS with Access-Control-Request-Method,
the Fetch standard) carry no credentials by design and are open.
"""

from __future__ import annotations

from dataclasses import dataclass

from archive.core.identity import Role

READ = frozenset({"GET", "HEAD"})


@dataclass(frozen=True)
class Rule:
    methods: frozenset[str] | None  # None: any method
    path: str  # a canonical route path; ending in "/*": every route under it
    role: Role | None  # None: open (no token needed)

    def matches(self, method: str, path: str) -> bool:
        if self.methods is not None and method not in self.methods:
            return False
        if self.path.endswith("/*"):
            return path.startswith(self.path[:-1])
        return path == self.path


# First match wins.
RULES: tuple[Rule, ...] = (
    # open: probes and the API description (nothing that names a patient or a study)
    Rule(READ, "/healthz", None),
    Rule(READ, "/readyz", None),
    Rule(READ, "/api/openapi.json", None),
    # open: the web UI's files and the settings it starts from (it reads patients through the API)
    Rule(READ, "/", None),
    Rule(READ, "/ui", None),
    Rule(READ, "/ui/*", None),
    # admin: metrics on the HTTP port (ARCHIVE_METRICS_PORT serves them elsewhere, without a token)
    Rule(None, "/metrics", Role.ADMIN),
    # writer: STOW-RS (PS3.18 10.5)
    Rule(frozenset({"POST"}), "/dicom-web/studies", Role.WRITER),
    Rule(frozenset({"POST"}), "/dicom-web/studies/{study}", Role.WRITER),
    # admin: delete a study, series or instance (not in PS3.18)
    Rule(frozenset({"DELETE"}), "/dicom-web/*", Role.ADMIN),
    # reader: QIDO-RS, WADO-RS (rendered, thumbnails, frames, bulk data), WADO-URI, the search API
    Rule(READ, "/dicom-web/*", Role.READER),
    Rule(READ, "/wado", Role.READER),
    Rule(READ, "/api/search", Role.READER),
    # reader: the change feed (UIDs only)
    Rule(READ, "/api/changes", Role.READER),
    # forwarding: what went where (admin); send a study or series to a configured peer (writer)
    Rule(READ, "/api/forwarding", Role.ADMIN),
    Rule(frozenset({"POST"}), "/api/studies/{study}/send", Role.WRITER),
)
UNKNOWN_READ = Role.READER
UNKNOWN_OTHER = Role.ADMIN


def required_role(method: str, path: str | None, *, preflight: bool = False) -> Role | None:
    """The role a request needs (None: open). ``path``: the matched route's canonical path, None
    when no route matched (a 404 or 405 is then answered only to a caller with the role)."""
    if preflight and method == "OPTIONS":
        return None
    if path is not None:
        for rule in RULES:
            if rule.matches(method, path):
                return rule.role
    return UNKNOWN_READ if method in READ else UNKNOWN_OTHER
