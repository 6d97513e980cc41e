"""Target ``describe``: a received Part 10 object -> header parse -> index message, and back.

The input is a file as STOW-RS spools it (or a dataset as a C-STORE spools it, without
File Meta). It goes the way :meth:`archive.ingest.service.IngestService.prepare` takes it:
:func:`~archive.ingest.describe.dataset_offset` steps over the File Meta, the transfer
syntax comes from it (pydicom's ``read_file_meta_info``, as STOW-RS reads it; Implicit VR
Little Endian, as a C-STORE context may say, when there is none),
:func:`~archive.ingest.describe.describe` parses the header and builds the DICOM JSON, and
:meth:`Description.index_message` the message the indexer receives.

Invariants: the native core (native/) and the Python path describe it alike, the same Description (the
DICOM JSON in the same order) or the same refusal; the DICOM JSON equals pydicom's (the plain path of
common elements turned off), the message encodes (no NaN), parses back equal through
:meth:`IndexMessage.from_bytes` (what the indexer does), and carries no NUL character
(PostgreSQL text and jsonb refuse it: the message would be poison).
"""

from __future__ import annotations

import atexit
import os
import tempfile
from pathlib import Path
from typing import Any

from pydicom.filereader import read_file_meta_info
from pydicom.uid import ImplicitVRLittleEndian

from archive.core.errors import InvalidInstance
from archive.core.models import IndexMessage
from archive.core.uids import object_key
from archive.ingest.describe import NATIVE, Description, dataset_json, dataset_offset, describe, read_header

# MalformedDataset (unparseable) and InvalidUID (a UID that is not one) are InvalidInstance.
EXPECTED: tuple[type[BaseException], ...] = (InvalidInstance,)
_PATH: list[Path] = []


def _file() -> Path:
    if not _PATH:
        fd, name = tempfile.mkstemp(prefix="fuzz-describe-", suffix=".dcm")
        os.close(fd)
        _PATH.append(Path(name))
        atexit.register(_PATH[0].unlink, missing_ok=True)
    return _PATH[0]


def transfer_syntax(path: Path) -> str:
    """The File Meta's Transfer Syntax UID, as STOW-RS reads it; the C-STORE default without one."""
    try:
        syntax = str(read_file_meta_info(path).get("TransferSyntaxUID", "") or "")
    except Exception:  # no File Meta: a C-STORE dataset on an Implicit VR context
        return str(ImplicitVRLittleEndian)
    return syntax or str(ImplicitVRLittleEndian)


def _pydicom_json(path: Path, syntax: str, offset: int) -> dict[str, Any]:
    """The header's DICOM JSON with every element through pydicom's DataElement (no plain path)."""
    with open(path, "rb") as fh:
        fh.seek(offset)
        return dataset_json(read_header(fh, syntax), plain=False)


def _native_agrees(path: Path, syntax: str, offset: int, reference: tuple[Description, list[str]] | str) -> None:
    """The native core's Description (its JSON in the same order) or refusal is the Python path's."""
    try:
        description = describe(path, syntax, offset, native=True)
        native: tuple[Description, list[str]] | str = (description, list(description.metadata))
    except InvalidInstance as exc:
        native = type(exc).__name__
    assert native == reference, "the native core and the Python path describe it differently"


def fuzz_one(data: bytes) -> None:
    path = _file()
    path.write_bytes(data)
    offset = dataset_offset(path)
    assert 0 <= offset, offset
    syntax = transfer_syntax(path)
    try:
        description = describe(path, syntax, offset, native=False)
    except InvalidInstance as exc:
        if NATIVE:
            _native_agrees(path, syntax, offset, type(exc).__name__)
        raise
    if NATIVE:
        _native_agrees(path, syntax, offset, (description, list(description.metadata)))
    assert description.metadata == _pydicom_json(path, syntax, offset), \
        "the plain path's DICOM JSON differs from pydicom's"
    message = description.index_message(object_key(description.sop_instance_uid), len(data), "0" * 64, "FUZZ")
    body = message.to_bytes()
    assert b"\\u0000" not in body, "a NUL character would reach the catalog"
    assert IndexMessage.from_bytes(body) == message
