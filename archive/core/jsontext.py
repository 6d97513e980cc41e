"""JSON of the index messages: orjson where it answers, the standard library where it does not.

orjson (Rust) reads an index message about twice and writes one (or the catalog's metadata text)
about ten times as fast as ``json``. Where orjson refuses what ``json`` takes (``NaN`` and
``Infinity`` literals, strings with lone surrogates, keys that are not strings) or reads it
otherwise (integers beyond 64 bits, which it makes floats), the standard library reads and writes,
so every input gives what it gave before. One difference is kept: a float NaN or infinity, which
JSON has no word for, is written as ``null`` (``json`` wrote ``NaN``, which PostgreSQL's jsonb
refuses; ``describe`` leaves none in an instance's metadata).
"""

from __future__ import annotations

import json
from typing import Any

import orjson

# orjson reads an integer beyond 64 bits as a float: a number token of 19 digits or more goes to json,
# which reads it exactly. Runs of 19 digits are found on a copy with every digit made "0" (a regular
# expression takes ten times as long); most are inside strings (UUID-derived UIDs). A run is a number
# token when it follows the start, ":", "," or "[" (the marks and spaces are ASCII, so UTF-8 is read
# as bytes).
_DIGITS_AS_ZERO = bytes(48 if 48 <= i <= 57 else 32 for i in range(256))
_RUN = b"0" * 19
_SPACE = b" \t\r\n"


def _long_number(data: bytes | bytearray | str) -> bool:
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else bytes(data)
    digits = raw.translate(_DIGITS_AS_ZERO)
    at = digits.find(_RUN)
    while at >= 0:
        before = raw[max(0, at - 32) : at].rstrip(_SPACE).removesuffix(b"-").rstrip(_SPACE)
        if before[-1:] in (b"", b":", b",", b"["):  # b"": the start, or more spaces than we look at
            return True
        at = digits.find(_RUN, at + len(_RUN))
    return False


def loads(data: bytes | bytearray | str) -> Any:
    if not _long_number(data):
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            pass
    return json.loads(data)


def dumps(value: Any) -> str:
    """Compact text, non-ASCII characters as they are: ``json.dumps(value, separators=(",", ":"),
    ensure_ascii=False)``."""
    try:
        return orjson.dumps(value).decode("utf-8")
    except TypeError:  # orjson.JSONEncodeError
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def dumps_message(value: Any) -> bytes:
    """A message body: compact UTF-8; where orjson refuses, ASCII with escapes and no NaN, as
    ``json.dumps(value, separators=(",", ":"), allow_nan=False).encode()`` wrote every body before
    (a lone surrogate escaped, a NaN refused with ValueError)."""
    try:
        return orjson.dumps(value)
    except TypeError:  # orjson.JSONEncodeError
        return json.dumps(value, separators=(",", ":"), allow_nan=False).encode("ascii")
