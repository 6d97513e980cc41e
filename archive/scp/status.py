"""The one table from ingest outcomes and errors to C-STORE statuses (PS3.4 B.2.3)."""

from __future__ import annotations

from dataclasses import dataclass

from archive.core.errors import (
    BackendUnavailable,
    DuplicateConflict,
    InvalidUID,
    MalformedDataset,
    UIDMismatch,
)
from archive.ingest.service import Outcome


@dataclass(frozen=True)
class Status:
    code: int
    label: str  # metrics label and log word
    comment: str = ""  # Error Comment (0000,0902), at most 64 characters


SUCCESS = Status(0x0000, "success")

OUTCOME_STATUS: dict[Outcome, Status] = {
    Outcome.STORED: SUCCESS,
    Outcome.IDENTICAL: SUCCESS,
    Outcome.REPLACED: SUCCESS,
    # Warning: the archived instance differs from the one sent and was kept
    Outcome.KEPT_FIRST: Status(0xB000, "duplicate_kept_first", "SOP Instance UID archived with other content; kept"),
}

# Most specific first.
ERROR_STATUS: tuple[tuple[type[BaseException], Status], ...] = (
    (BackendUnavailable, Status(0xA700, "out_of_resources", "Archive backend unavailable; retry later")),
    (TimeoutError, Status(0xA701, "timeout", "Archive backend too slow; retry later")),
    (DuplicateConflict, Status(0x0111, "duplicate_rejected", "SOP Instance UID archived with other content")),
    (UIDMismatch, Status(0xA900, "uid_mismatch", "Dataset UIDs differ from the C-STORE command")),
    (InvalidUID, Status(0xC001, "invalid_uid", "Invalid UID in dataset (PS3.5 9.1)")),
    (MalformedDataset, Status(0xC000, "malformed", "Dataset cannot be parsed")),
)
# Our own fault, not the sender's: 0x0110 Processing failure (PS3.7 C), not a Cxxx "cannot
# understand", which senders take as permanent.
UNEXPECTED = Status(0x0110, "internal_error", "Unexpected error while archiving")


def status_for_error(exc: BaseException) -> Status:
    for kind, status in ERROR_STATUS:
        if isinstance(exc, kind):
            if isinstance(exc, (InvalidUID, UIDMismatch, MalformedDataset)):
                return Status(status.code, status.label, str(exc)[:64])
            return status
    return UNEXPECTED
