"""What an association of the asyncio engine serves besides C-ECHO and C-STORE: C-FIND.

The engine reads and writes PDUs and command sets; a :class:`FindService` (the query
service's, :mod:`archive.query.dimse.find_service`) answers each C-FIND-RQ from the
identifier's bytes with the responses' bytes, so that this package never loads a DICOM
networking library (PS3.4 C.4.1 for the service, PS3.7 9.1.2 for C-FIND and C-CANCEL).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class FindCall:
    """One C-FIND-RQ as received."""

    identifier: bytes  # the dataset, in the presentation context's transfer syntax
    sop_class_uid: str  # the query model (the context's abstract syntax)
    transfer_syntax: str
    calling_aet: str
    address: str


@dataclass(frozen=True)
class FindResponse:
    """One C-FIND-RSP: its status, Error Comment, and the identifier that follows (Pending ones)."""

    status: int
    comment: str = ""
    identifier: bytes | None = None  # encoded in the call's transfer syntax


class FindService(Protocol):
    """The Query/Retrieve Find service an association hands its C-FIND requests to."""

    models: frozenset[str]  # the Find SOP classes it serves
    transfer_syntaxes: tuple[str, ...]  # the transfer syntaxes it takes identifiers in

    def extended(self, sop_class_uid: str, asked: bytes) -> bytes | None:
        """The SOP Class Extended Negotiation answer for ``sop_class_uid`` (PS3.4 C.5.1), if it has one."""

    def responses(self, call: FindCall, cancelled: Callable[[], bool]) -> AsyncGenerator[FindResponse, None]:
        """The responses to ``call``: Pending ones, then one final status. ``cancelled()`` says
        whether a C-CANCEL-RQ came for it (asked before each Pending response)."""
