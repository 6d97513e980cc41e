"""Versioned catalog schema migrations, one SQL file per version and dialect.

Files are named ``<dialect>/NNNN_<description>.sql``; a catalog applies every
version missing from its ``schema_version`` table, in order, in one transaction.
Never edit a released file: add the next version instead.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources

_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    sql: str


def load(dialect: str) -> list[Migration]:
    """Every migration of ``dialect`` ("sqlite" or "postgresql"), by version."""
    found: list[Migration] = []
    for entry in resources.files(__name__).joinpath(dialect).iterdir():
        match = _NAME.match(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), match.group(2), entry.read_text("utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"duplicate {dialect} migration versions: {versions}")
    return found
