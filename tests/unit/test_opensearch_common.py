"""A study's common text (archive.adapters.opensearch_common): lines every instance has, never more."""

from __future__ import annotations

from archive.adapters.opensearch_common import (
    MAX_COMMON_CHARS,
    STORED_VALUE_CHARS,
    common_lines,
    common_text,
    field_lines,
    text_lines,
)
from archive.adapters.opensearch_search import MAX_FIELD_VALUE_CHARS
from archive.core.flatten import MAX_TEXT_CHARS, flatten
from tests.factories import make_ct, make_message


def test_text_lines_are_the_values_of_the_text() -> None:
    assert text_lines("DOE^JANE\nCT\n\n  \nline one\nline two") == {"DOE^JANE", "CT", "line one", "line two"}
    assert text_lines("") == set()


def test_field_lines_are_lines_the_indexed_text_has(tmp_path) -> None:
    """From an instance's fields as the index stores them, only lines its text has (flatten's)."""
    ds = make_ct(patient_name="Doe^Jane")
    ds.StudyDescription = "CT CHEST\r\nROUTINE"
    document = flatten(make_message(ds, tmp_path))
    stored = {k: [v[:MAX_FIELD_VALUE_CHARS] for v in vs] for k, vs in document.fields.items()}
    lines = field_lines(stored)
    assert lines <= text_lines(document.text)
    assert {"Doe^Jane", "CT CHEST\r", "ROUTINE"} <= lines  # a value's own newlines split it as the text does


def test_field_lines_leave_out_a_cut_value_and_a_text_that_may_be_cut() -> None:
    assert STORED_VALUE_CHARS == MAX_FIELD_VALUE_CHARS
    long = "x" * STORED_VALUE_CHARS  # maybe cut when stored: its line may be longer in the text
    assert field_lines({"A": ["short", long]}) == {"short"}
    # the stored values might add up to more than the text holds: nothing is sure to be in it
    many = {f"T{i}": [long] for i in range(MAX_TEXT_CHARS // STORED_VALUE_CHARS // 8)}
    assert field_lines({**many, "A": ["short"]}) == set()
    assert field_lines({"A": ["short"], "B": ["a\nb"]}) == {"short", "a", "b"}


def test_common_text_keeps_the_shortest_lines_under_its_limit() -> None:
    lines = {"CT", "DOE^JANE"} | {f"{i:05d}" + "y" * 1000 for i in range(100)}
    text = common_text(lines)
    assert len(text) <= MAX_COMMON_CHARS
    kept = common_lines(text)
    assert {"CT", "DOE^JANE"} <= kept < lines  # a subset: still only lines every instance has
    assert common_text({"b", "a"}) == "a\nb" and common_lines(common_text(set())) == set()
