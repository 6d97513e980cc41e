"""archive.core.storage_classes is pynetdicom's list of storage SOP classes, written down.

STOW-RS accepts the SOP classes the DIMSE receiver negotiates (pynetdicom's
``AllStoragePresentationContexts``) without loading pynetdicom. When an upgrade of
pynetdicom changes its list, this test fails and names the UIDs to add or remove.
"""

from __future__ import annotations

from pydicom.uid import UID
from pynetdicom import AllStoragePresentationContexts

from archive.core.storage_classes import STORAGE_SOP_CLASSES
from archive.core.uids import uid_problem


def _named(uids: set[str]) -> list[str]:
    return [f"{uid}  # {UID(uid).name}" for uid in sorted(uids)]


def test_the_declaration_is_pynetdicoms_list_of_storage_sop_classes() -> None:
    pynetdicom_classes = {str(cx.abstract_syntax) for cx in AllStoragePresentationContexts}
    missing, extra = pynetdicom_classes - STORAGE_SOP_CLASSES, STORAGE_SOP_CLASSES - pynetdicom_classes
    assert not missing and not extra, (
        "archive/core/storage_classes.py differs from pynetdicom's AllStoragePresentationContexts; "
        f"add {_named(missing)}, remove {_named(extra)}")


def test_every_entry_is_a_uid() -> None:
    assert all(uid_problem(uid) is None for uid in STORAGE_SOP_CLASSES)
