"""The indexer's JSON (orjson, the standard library where orjson refuses) reads and writes as ``json`` does."""

from __future__ import annotations

import dataclasses
import json
import math
import random

import pytest

from archive.core import jsontext
from archive.core.models import IndexMessage
from archive.core.errors import PoisonMessage
from tests.factories import make_ct, make_message


def _compact(value: object) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _random_value(rng: random.Random, depth: int = 0) -> object:
    kind = rng.randrange(8 if depth < 4 else 5)
    if kind == 0:
        return "".join(chr(rng.choice((rng.randrange(32, 127), rng.randrange(0, 32), rng.randrange(0x80, 0xD800),
                                       rng.randrange(0xE000, 0x110000)))) for _ in range(rng.randrange(12)))
    if kind == 1:
        return rng.choice((0, -1, 2**31, -(2**63), -(2**63) - 1, 2**64 - 1, 2**64, 2**70, -(10**30),
                           rng.randrange(-10**6, 10**6)))
    if kind == 2:
        return rng.choice((0.5, -0.0, 1e-7, 3.141592653589793, 1e300, rng.uniform(-1e6, 1e6)))
    if kind == 3:
        return rng.choice((None, True, False))
    if kind == 4:
        return rng.choice(("", ",12345678901234567890123", "2.25.329800735698586629295641978511506172918"))
    if kind in (5, 6):
        return {f"{rng.randrange(16**8):08X}": _random_value(rng, depth + 1) for _ in range(rng.randrange(5))}
    return [_random_value(rng, depth + 1) for _ in range(rng.randrange(5))]


def test_what_json_writes_reads_back_the_same_and_is_written_the_same() -> None:
    rng = random.Random(13)
    for _ in range(2000):
        value = _random_value(rng)
        text = _compact(value)
        assert repr(jsontext.loads(text)) == repr(json.loads(text))  # repr: 2**70 read as a float is not equal
        assert repr(jsontext.loads(text.encode())) == repr(json.loads(text))
        assert repr(jsontext.loads(bytearray(text.encode()))) == repr(json.loads(text))
        assert repr(json.loads(jsontext.dumps(value))) == repr(json.loads(text))  # floats may spell 1e+16 as 1e16


@pytest.mark.parametrize("text", [
    '{"a":NaN}', '[Infinity,-Infinity]', '"\\ud800"', '{"x":"a\\udfffb"}', "123456789012345678901234567890",
    '[1e400]', '{"a":1,"a":2}', '[-9223372036854775809]', '{"v": 18446744073709551616}',
    '{"a" :  -12345678901234567890123}', '[1,\n 12345678901234567890123]',
    '{"u":"2.25.1234567890123456789012","n":[1e5]}',
])
def test_what_orjson_refuses_reads_as_json_reads_it(text: str) -> None:
    expected, got = json.loads(text), jsontext.loads(text)
    assert repr(got) == repr(expected)


@pytest.mark.parametrize("value", [
    {"s": "a\ud800b"}, [2**70], {1: "not a string key"}, {"nested": [{"deep": "\udfff"}]},
])
def test_what_orjson_refuses_is_written_as_json_writes_it(value: object) -> None:
    assert jsontext.dumps(value) == _compact(value)


def test_a_float_json_has_no_word_for_is_written_null() -> None:
    assert json.loads(jsontext.dumps({"v": [math.nan, math.inf, 1.5]})) == {"v": [None, None, 1.5]}


def test_an_index_message_reads_back_as_before_and_junk_stays_poison(tmp_path) -> None:  # type: ignore[no-untyped-def]
    message = make_message(make_ct(patient_id="P1", patient_name="Müller^Jörg"), tmp_path)
    assert IndexMessage.from_bytes(message.to_bytes()) == message
    for junk in (b"", b"\xff\xfe", b"[1,2]", b'{"version": 1', b"null"):
        with pytest.raises(PoisonMessage):
            IndexMessage.from_bytes(junk)


def test_a_message_orjson_refuses_is_written_as_before(tmp_path) -> None:  # type: ignore[no-untyped-def]
    message = make_message(make_ct(patient_id="P1"), tmp_path)
    odd = dataclasses.replace(message, metadata={**message.metadata, "00100010": {
        "vr": "PN", "Value": [{"Alphabetic": "M\udce9ller"}]}})  # a lone surrogate: escaped, ASCII
    before = json.dumps(vars(odd), separators=(",", ":"), allow_nan=False).encode("utf-8")
    assert odd.to_bytes() == before
    assert IndexMessage.from_bytes(before) == odd
    with pytest.raises(ValueError):  # NaN beside what orjson refuses: refused, as before
        dataclasses.replace(odd, metadata={**odd.metadata, "00181050": {"vr": "FD", "Value": [math.nan]}}).to_bytes()


def test_the_catalog_text_drops_a_nul_and_keeps_a_backslash_before_u0000() -> None:
    from archive.adapters.sql_catalog import dumps

    value = {"00204000": {"vr": "LT", "Value": ["end\\u0000 and NUL\x00 and \\\x00 and \\\\u0000"]}}
    text = dumps(value)
    assert json.loads(text) == {"00204000": {"vr": "LT", "Value": ["end\\u0000 and NUL and \\ and \\\\u0000"]}}
