"""UID validation and object keys.

PS3.5 9.1: a UID is made of numeric components separated by ".", each component
without a leading zero (except "0" itself), at most 64 characters in total.
Nothing from a dataset becomes part of an object key unless it passed here.
"""

from __future__ import annotations

import hashlib
import re

from archive.core.errors import InvalidUID

UID_PATTERN = r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$"  # also the OpenAPI document's (ECMA-262 regex)
# fullmatch: with re.match, "$" also matches before a final newline ("1.2.3\n" passed)
_UID = re.compile(UID_PATTERN.removeprefix("^").removesuffix("$"), re.ASCII)
MAX_UID_LENGTH = 64


def uid_problem(value: object) -> str | None:
    """Return why ``value`` is not a valid UID, or None when it is one."""
    if not isinstance(value, str):
        return "missing"
    if not value:
        return "empty"
    if len(value) > MAX_UID_LENGTH:
        return f"longer than {MAX_UID_LENGTH} characters"
    if not _UID.fullmatch(value):
        return "not digits and dots (PS3.5 9.1)"
    return None


def validate_uid(value: object, attribute: str) -> str:
    """Return ``value`` if it is a valid UID, else raise :class:`InvalidUID`."""
    problem = uid_problem(value)
    if problem is not None:
        raise InvalidUID(attribute, problem)
    assert isinstance(value, str)
    return value


def encode_uid(uid: str) -> bytes:
    """A UI value as it goes on the wire or into a file: ASCII, padded to even length with NUL (PS3.5 6.2, 9.1)."""
    raw = uid.encode("ascii", "replace")
    return raw + b"\x00" if len(raw) % 2 else raw


def object_key(sop_instance_uid: str) -> str:
    """The object-store key of an instance, from its (validated) SOP Instance UID.

    Keys fan out over 65,536 prefixes so that no directory or listing page
    grows with the archive: ``instances/ab/cd/<uid>.dcm``.
    """
    uid = validate_uid(sop_instance_uid, "SOPInstanceUID")
    digest = hashlib.sha1(uid.encode("ascii")).hexdigest()
    return f"instances/{digest[0:2]}/{digest[2:4]}/{uid}.dcm"


def uid_from_key(key: str) -> str | None:
    """The SOP Instance UID in an instance key, or None for foreign keys."""
    parts = key.split("/")
    if len(parts) != 4 or parts[0] != "instances" or not parts[3].endswith(".dcm"):
        return None
    uid = parts[3][: -len(".dcm")]
    return uid if uid_problem(uid) is None and object_key(uid) == key else None
