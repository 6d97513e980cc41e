"""The presentation contexts the pynetdicom AE accepts, and which transfer syntax it prefers."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pydicom.uid import AllTransferSyntaxes
from pynetdicom.presentation import build_context
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from archive.core.storage_classes import STORAGE_SOP_CLASSES

# Lossless compressed transfer syntaxes (PS3.5 A.4, A.6, A.8): what was sent, kept bit for bit.
LOSSLESS_COMPRESSED = frozenset({
    "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.90",
    "1.2.840.10008.1.2.4.92", "1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.5",
})
_UNCOMPRESSED_RANK = {"1.2.840.10008.1.2.1": 1, "1.2.840.10008.1.2.1.99": 2, "1.2.840.10008.1.2.2": 3,
                      "1.2.840.10008.1.2": 4}


def preferred_transfer_syntaxes() -> list[str]:
    """Every transfer syntax pydicom knows, in the order we accept them.

    pynetdicom accepts the first of *our* list that a proposed context offers
    (PS3.8 9.3.3.2 leaves the choice to the acceptor). Lossless compressed first (the
    sender offers them because its data is so), then Explicit VR (private tags keep
    their VR), Implicit VR, and lossy syntaxes last: a sender offering both never
    has to compress lossily for us.
    """
    def rank(uid: str) -> int:
        return 0 if uid in LOSSLESS_COMPRESSED else _UNCOMPRESSED_RANK.get(uid, 5)

    return sorted((str(ts) for ts in AllTransferSyntaxes), key=rank)


def storage_contexts(*, retrieve_roles: bool = False) -> list[Any]:
    """Every storage SOP class we accept (:mod:`archive.core.storage_classes`), in every transfer
    syntax pydicom knows.

    With ``retrieve_roles`` the requestor may take the SCP role (SCP/SCU Role
    Selection, PS3.7 D.3.3.4), as a C-GET requestor does to receive its instances.
    """
    syntaxes = preferred_transfer_syntaxes()
    contexts = []
    for sop_class in sorted(STORAGE_SOP_CLASSES):
        context = build_context(sop_class, syntaxes)
        if retrieve_roles:
            context.scu_role = True
            context.scp_role = True
        contexts.append(context)
    contexts.append(build_context(Verification, syntaxes))
    return contexts


def merge_contexts(contexts: Iterable[Any]) -> list[Any]:
    """One context per abstract syntax: the first one given, with the roles of all."""
    merged: dict[str, Any] = {}
    for context in contexts:
        seen = merged.get(str(context.abstract_syntax))
        if seen is None:
            merged[str(context.abstract_syntax)] = context
        elif context.scp_role or context.scu_role:
            seen.scu_role = seen.scu_role or context.scu_role
            seen.scp_role = seen.scp_role or context.scp_role
    return list(merged.values())
