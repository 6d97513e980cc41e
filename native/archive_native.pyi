"""dicom-archive's native core (native/src/lib.rs): a received dataset's header read to DICOM JSON."""

from collections.abc import Callable
from typing import Any

BULK_THRESHOLD: int

class Header:
    """The header reader, with the data dictionary's VRs it needs for Implicit VR."""

    def __init__(self, implicit_vrs: dict[int, str], sequences: frozenset[int] | set[int]) -> None: ...
    def read(
        self, data: bytes, implicit: bool, complete: bool, charset_ascii: Callable[[bytes], bool | None]
    ) -> tuple[dict[str, dict[str, Any]], list[str] | None, bytes, list[str]] | None:
        """None (pydicom reads the whole dataset) or (metadata, keys, rest, uids): see lib.rs."""
