"""The one table from ingest outcomes and errors to C-STORE statuses (PS3.4 B.2.3, PS3.7 C),
and the one builder of the status dataset a pynetdicom handler returns."""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.dataset import Dataset

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

# A C-STORE whose Affected SOP Class UID is not the abstract syntax of the presentation context
# it came on: that SOP Class was not negotiated for the message, so it is refused unstored with
# 0x0122 Refused: SOP Class not supported, a C-STORE status of PS3.7 9.1.1.1.9 (general meaning
# in PS3.7 C.5). Each context carries one abstract syntax (PS3.8 7.1.1.13).
SOP_CLASS_NOT_NEGOTIATED = Status(0x0122, "sop_class_not_negotiated",
                                  "SOP Class not negotiated on this presentation context")

# A calling AE whose ARCHIVE_AE_CONFIG entry lacks the permission: 0x0124 Refused: Not Authorized,
# a general status of PS3.7 Annex C that any DIMSE service may answer.
NOT_AUTHORIZED = Status(0x0124, "not_authorized", "Calling AE title not authorized for this operation")

# The asyncio engine serves C-ECHO, C-STORE and C-FIND only (PS3.7 C.5: 0x0211 Unrecognized operation).
UNRECOGNIZED_OPERATION = Status(0x0211, "unrecognized_operation", "Only C-ECHO, C-STORE and C-FIND are served here")
# A C-FIND-RQ whose Command Data Set Type says no identifier follows (PS3.4 C.4.1.1.4: Unable to process).
FIND_WITHOUT_IDENTIFIER = Status(0xC000, "no_identifier", "C-FIND-RQ without an identifier")


def status_for_error(exc: BaseException) -> Status:
    for kind, status in ERROR_STATUS:
        if isinstance(exc, kind):
            if isinstance(exc, (InvalidUID, UIDMismatch, MalformedDataset)):
                return Status(status.code, status.label, str(exc)[:64])
            return status
    return UNEXPECTED


def status_dataset(status: Status | int, comment: str = "") -> Dataset:
    """The Status (0000,0900) and Error Comment (0000,0902) a pynetdicom handler returns
    (PS3.7 C). ``comment`` overrides the Status's own; none is sent with Success."""
    if isinstance(status, Status):
        code, comment = status.code, comment or status.comment
    else:
        code = status
    ds = Dataset()
    ds.Status = code
    if comment and code != 0x0000:
        ds.ErrorComment = comment[:64]  # LO
    return ds
