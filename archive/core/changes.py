"""The change feed and deletes, as data: what the catalog records and hands back.

A :class:`Change` is one entry of the change feed (``GET /api/changes``): its ``seq`` is
assigned when the catalog change commits, in commit order, without gaps, so a reader that
resumes after the last ``seq`` it saw misses nothing and repeats nothing. The actions are an
open set: delete and the indexer write the first three; study-stable detection, IOCM and
others add theirs later without a schema change.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from archive.core.records import CatalogInstance


class ChangeAction(str, Enum):
    CREATED = "created"  # an SOP Instance UID the catalog did not hold
    UPDATED = "updated"  # an upsert replaced a different object (another SHA-256) under the UID
    DELETED = "deleted"  # removed by a delete (a tombstone remains)
    STABLE = "stable"  # a study received no new instance for ARCHIVE_STUDY_STABLE_SECONDS (series, instance: "")


STABLE_FEED = ""  # the change feed's watcher in study-stable detection (StablePending.name)


@dataclass(frozen=True)
class Change:
    seq: int
    action: str  # a ChangeAction value (kept as text: readers of newer entries must not fail)
    study_uid: str
    series_uid: str
    sop_instance_uid: str
    at: float  # unix seconds: when the change was written


@dataclass(frozen=True)
class UpsertOutcome:
    """What a catalog upsert did, by SOP Instance UID."""

    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    # dropped: the message was received before the instance's tombstone (a late or redelivered
    # index message of a deleted instance): not written, and must not reach the search index
    dropped: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Deletion:
    """What to delete: a study, one of its series, or one instance of that series."""

    study_uid: str
    series_uid: str | None = None
    sop_instance_uid: str | None = None

    def __post_init__(self) -> None:
        if self.sop_instance_uid is not None and self.series_uid is None:
            raise ValueError("an instance is deleted with its series UID")


@dataclass(frozen=True)
class Deleted:
    """The instances a catalog delete removed (and tombstoned), with their object keys."""

    instances: list[CatalogInstance]
    at: float
