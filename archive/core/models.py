"""Domain models shared by every role and adapter."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from archive.core import jsontext
from archive.core.errors import PoisonMessage
from archive.core.uids import validate_uid

# DICOM JSON model (PS3.18 F.2): {"0020000D": {"vr": "UI", "Value": [...]}, ...}
DicomJson = dict[str, dict[str, Any]]

INDEX_MESSAGE_VERSION = 1


@dataclass(frozen=True)
class ObjectInfo:
    """What the object store knows about one stored object."""

    key: str
    size: int
    sha256: str | None = None  # None when the store has no recorded checksum


@dataclass(frozen=True)
class FilePart:
    """The bytes of a local file from ``offset`` to its end."""

    path: Path
    offset: int = 0


@dataclass(frozen=True)
class Payload:
    """Bytes to store, given as an ordered list of in-memory parts and local files.

    Lets a receiver store ``preamble + file meta + spooled dataset`` as one
    object without ever holding the dataset in memory.
    """

    parts: tuple[bytes | Path | FilePart, ...]
    size: int
    sha256: str
    # parts is one whole local file that nothing writes to again: a store on the same
    # filesystem may link it into place instead of copying it
    adoptable: bool = False

    def chunks(self, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        for part in self.parts:
            if isinstance(part, bytes):
                if part:
                    yield part
                continue
            path, offset = (part.path, part.offset) if isinstance(part, FilePart) else (part, 0)
            with open(path, "rb") as fh:
                fh.seek(offset)
                while True:
                    chunk = fh.read(chunk_size)
                    if not chunk:
                        break
                    yield chunk


@dataclass(frozen=True)
class PutResult:
    """Outcome of a conditional put."""

    created: bool  # False: an object already existed under the key and was kept
    info: ObjectInfo


@dataclass(frozen=True)
class IndexMessage:
    """What a receiver publishes for the indexer after the object is durable.

    ``metadata`` is the instance in the DICOM JSON model without bulk data, so
    the indexer never re-reads the object. The object store stays the source of
    truth: ``reindex`` rebuilds the same message from the stored object.
    """

    key: str
    size: int
    sha256: str
    study_uid: str
    series_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    received_at: float  # unix time when the receiver answered (for lag metrics)
    source_aet: str
    metadata: DicomJson = field(default_factory=dict)
    version: int = INDEX_MESSAGE_VERSION
    # rebuilt from the stored object (verify --repair): indexed without change-feed entries,
    # events or forwarding rules, as reindex does
    rebuild: bool = False

    def to_bytes(self) -> bytes:
        # vars(), not dataclasses.asdict(): asdict deep-copies the metadata first.
        return jsontext.dumps_message(vars(self))

    @classmethod
    def from_bytes(cls, body: bytes) -> "IndexMessage":
        """Parse and validate a message body; raise :class:`PoisonMessage` if unusable."""
        try:
            raw = jsontext.loads(body)
            if not isinstance(raw, dict):
                raise ValueError("body is not a JSON object")
            if raw.get("version") != INDEX_MESSAGE_VERSION:
                raise ValueError(f"unsupported message version {raw.get('version')!r}")
            message = cls(**raw)
            for attr, name in (
                (message.study_uid, "StudyInstanceUID"),
                (message.series_uid, "SeriesInstanceUID"),
                (message.sop_instance_uid, "SOPInstanceUID"),
                (message.sop_class_uid, "SOPClassUID"),
            ):
                validate_uid(attr, name)
            if not isinstance(message.metadata, dict):
                raise ValueError("metadata is not an object")
            return message
        except PoisonMessage:
            raise
        except Exception as exc:  # any defect in the body makes it poison
            raise PoisonMessage(f"unusable index message: {exc}") from exc


@dataclass(frozen=True)
class SearchDocument:
    """One instance flattened for the search index (id = SOP Instance UID)."""

    sop_instance_uid: str
    study_uid: str
    series_uid: str
    fields: dict[str, list[str]]  # keyword (or private tag hex) -> string values
    text: str  # every string value, for full text
    indexed_at: float

