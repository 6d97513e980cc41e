"""JSON on the indexer's path: orjson where it answers, the standard library where it refuses.

orjson (Rust) reads an index message about twice and writes the catalog's metadata text about ten
times as fast as ``json``. Where orjson refuses what ``json`` takes (``NaN`` and ``Infinity``
literals, strings with lone surrogates, keys that are not strings) or reads it otherwise (integers
beyond 64 bits, which it makes floats), the standard library reads and writes, so every input
gives what it gave before. One difference is kept: a float NaN or infinity, which JSON has no word for, is written as ``null`` (``json`` wrote
``NaN``, which PostgreSQL's jsonb refuses).
"""

from __future__ import annotations

import json
import re
from typing import Any

import orjson

# orjson reads an integer beyond 64 bits as a float; a number token of 19 digits or more (which a
# JSON number token is: after the start, ":", "," or "[") goes to json, which reads it exactly.
_LONG_NUMBER = re.compile(r"(?:^|[:,\[])\s*-?\d{19}")
_LONG_NUMBER_BYTES = re.compile(_LONG_NUMBER.pattern.encode())


def loads(data: bytes | str) -> Any:
    long_number = _LONG_NUMBER_BYTES.search(data) if isinstance(data, bytes) else _LONG_NUMBER.search(data)
    if long_number is None:
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
