"""Retrieval (C-MOVE, C-GET): which instances, which presentation contexts, and sending.

An instance leaves the archive as it was stored: it is streamed from the object
store into a spool file (checksum verified), and pynetdicom sends that file in
chunks (``STORE_SEND_CHUNKED_DATASET``), so neither a study nor a multi-GB
instance is ever held in memory. Only when the peer accepted none of the stored
transfer syntax's contexts is the instance decoded and sent in an uncompressed
syntax the peer did accept (PS3.4 C.4.2.3.1, C.4.3.3.1).
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import _config
from pynetdicom.association import Association
from pynetdicom.presentation import PresentationContext, build_context

from archive.core.errors import ArchiveError
from archive.core.ports import ObjectStore
from archive.core.records import CatalogInstance

log = logging.getLogger(__name__)

MAX_CONTEXTS = 128  # PS3.8 9.3.2.2: presentation context IDs are odd numbers 1-255
UNCOMPRESSED = (str(ExplicitVRLittleEndian), str(ImplicitVRLittleEndian))

_config.STORE_SEND_CHUNKED_DATASET = True  # send a file in chunks, never whole in memory


class RetrieveError(ArchiveError):
    """An instance could not be read back (missing object, checksum mismatch)."""


class StoredInstance(Dataset):
    """A catalog instance spooled to a local Part 10 file, ready to be sent.

    pynetdicom's retrieve loop wants a Dataset; this one carries only the UIDs
    it looks at, and :func:`_send_c_store` sends the file behind it.
    """

    def __init__(self, path: Path, instance: CatalogInstance) -> None:
        super().__init__()
        self.SOPClassUID = instance.sop_class_uid
        self.SOPInstanceUID = instance.sop_instance_uid
        self.spool_path = path
        self.stored_syntax = instance.transfer_syntax_uid

    def sendable(self, assoc: Association) -> "Path | Dataset":
        """The file when the peer accepted its transfer syntax; else a converted dataset."""
        accepted = [
            cx for cx in assoc.accepted_contexts
            if cx.abstract_syntax == self.SOPClassUID and cx.as_scu
        ]
        if any(cx.transfer_syntax[0] == self.stored_syntax for cx in accepted):
            return self.spool_path
        targets = [cx.transfer_syntax[0] for cx in accepted if cx.transfer_syntax[0] in UNCOMPRESSED]
        if not targets:
            return self.spool_path  # pynetdicom refuses it: the sub-operation fails
        dataset = dcmread(self.spool_path)
        if UID(self.stored_syntax).is_compressed:
            dataset.decompress(generate_instance_uid=False)  # the same instance, losslessly re-encoded (PS3.5 8.2)
        target = UID(targets[0])
        dataset.file_meta.TransferSyntaxUID = target
        # pynetdicom re-encodes in the accepted syntax. Every element is decoded first (iterall
        # parses sequences too), so no raw element keeps the stored encoding inside the new one.
        for _ in dataset.iterall():
            pass
        dataset.set_original_encoding(target.is_implicit_VR, target.is_little_endian, dataset.original_character_set)
        return dataset


class Unreadable(Dataset):
    """A sub-operation that fails before sending; its UID goes to the Failed SOP Instance UID List."""

    def __init__(self, instance: CatalogInstance, reason: str) -> None:
        super().__init__()
        self.SOPClassUID = instance.sop_class_uid
        self.SOPInstanceUID = instance.sop_instance_uid
        self.reason = reason


# The C-MOVE requestor, per association thread: pynetdicom would name our own AE
# as Move Originator (PS3.7 9.1.1.1 wants the requestor's).
ORIGINATOR = threading.local()

_send_c_store_original = Association.send_c_store


def _send_c_store(self: Association, dataset: Any, *args: Any, **kwargs: Any) -> Dataset:
    if isinstance(dataset, Unreadable):
        raise RetrieveError(dataset.reason)
    if isinstance(dataset, StoredInstance):
        dataset = dataset.sendable(self)
    if kwargs.get("originator_aet") and getattr(ORIGINATOR, "aet", None):
        kwargs["originator_aet"] = ORIGINATOR.aet
    return _send_c_store_original(self, dataset, *args, **kwargs)


# pynetdicom's C-MOVE/C-GET service classes send what the handler yields through
# Association.send_c_store; this lets a yielded StoredInstance go out from its file.
Association.send_c_store = _send_c_store  # type: ignore[method-assign]


def store_contexts(instances: Iterable[CatalogInstance]) -> list[PresentationContext]:
    """Contexts for a C-MOVE sub-association: each stored syntax, then uncompressed fallbacks."""
    exact: dict[tuple[str, str], None] = {}
    fallback: dict[str, None] = {}
    for inst in instances:
        exact[(inst.sop_class_uid, inst.transfer_syntax_uid)] = None
        fallback[inst.sop_class_uid] = None
    contexts = [build_context(sop_class, [syntax]) for sop_class, syntax in exact]
    for sop_class in fallback:
        if len(contexts) >= MAX_CONTEXTS:
            break
        contexts.append(build_context(sop_class, list(UNCOMPRESSED)))
    return contexts[:MAX_CONTEXTS]


async def spool(store: ObjectStore, instance: CatalogInstance, directory: Path) -> Path:
    """Stream the instance's object into a file under ``directory``; verify its checksum."""
    fd, name = tempfile.mkstemp(prefix="retrieve-", suffix=".dcm", dir=directory)
    path = Path(name)
    digest = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out:
            async for chunk in store.get(instance.object_key):
                digest.update(chunk)
                out.write(chunk)
        if instance.sha256 and digest.hexdigest() != instance.sha256:
            raise RetrieveError(f"{instance.sop_instance_uid}: stored object does not match its checksum")
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path
