"""One root exception with subclasses that say what went wrong and what to do."""

from __future__ import annotations


class ArchiveError(Exception):
    """Root of every error raised by the archive."""


class ConfigError(ArchiveError):
    """A setting is missing or invalid; the message names the variable."""


class BackendUnavailable(ArchiveError):
    """A backend (object store, queue, catalog, search) cannot be reached now.

    Transient: the caller may retry later. Maps to DIMSE 0xA700 and HTTP 503.
    """

    def __init__(self, backend: str, detail: str) -> None:
        super().__init__(f"{backend} unavailable: {detail}")
        self.backend = backend
        self.detail = detail


class InvalidInstance(ArchiveError):
    """The received data cannot be archived as it is (a sender-side problem)."""


class MalformedDataset(InvalidInstance):
    """The dataset cannot be parsed as DICOM."""


class InvalidUID(InvalidInstance):
    """A UID is not a valid PS3.5 9.1 UID (digits and dots, at most 64 characters)."""

    def __init__(self, attribute: str, reason: str) -> None:
        super().__init__(f"{attribute} is not a valid UID: {reason}")
        self.attribute = attribute


class UIDMismatch(InvalidInstance):
    """The dataset's SOP Class/Instance UID differs from the C-STORE command's."""


class DuplicateConflict(ArchiveError):
    """The SOP Instance UID is already archived with different content."""


class ObjectNotFound(ArchiveError):
    """No object under that key in the object store."""


class PoisonMessage(ArchiveError):
    """An index message that can never be processed (bad body, rejected data)."""


class ApiKeyExists(ArchiveError):
    """An API key of that name exists already (names are unique): revoke it first, or choose another."""
