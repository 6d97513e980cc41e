"""A study's *common text*: the lines of free text every instance of the study has.

A study document (:mod:`archive.adapters.opensearch_studies`) keeps ``common``: lines that are in
the text of each of its instances (an instance's text is its values joined by newlines,
:func:`archive.core.flatten.flatten`). When ``common`` matches every term of a free-text request,
each instance of the study does (the analyser splits at newlines, so the tokens of a line are the
same alone as within the text): the study matches with all of its instances, counted from the
study document without visiting one instance document. That is what makes broad free text fast at
10M instances (docs/benchmarks.md, "Broad free text from the study documents").

``common`` may be smaller than the true intersection, never larger: it only shrinks as instances
come (an intersection), a delete leaves it as it was (a subset of what the rest have), and cutting
it to :data:`MAX_COMMON_CHARS` drops lines. A smaller one only means the study matches the fast
path less often.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from archive.core.flatten import MAX_TEXT_CHARS, MAX_VALUE_CHARS

# A study document's common text is cut to this (its shortest lines kept: names, codes, dates).
MAX_COMMON_CHARS = 32_768
# The instance document's fields keep each value cut at this (opensearch_search.MAX_FIELD_VALUE_CHARS).
STORED_VALUE_CHARS = 1024


def text_lines(text: str) -> set[str]:
    """The lines of an instance's text, those with something to search in."""
    return {line for line in text.split("\n") if line.strip()}


def field_lines(fields: Mapping[str, Sequence[str]]) -> set[str]:
    """The lines an instance's text is sure to have, from its stored fields (each value cut at
    STORED_VALUE_CHARS): the lines of the values kept whole, when the text holds every value (the
    values' longest possible length fits MAX_TEXT_CHARS); else none."""
    whole: list[str] = []
    longest = 0
    for values in fields.values():
        for value in values:
            value = str(value)
            if len(value) < STORED_VALUE_CHARS:
                whole.append(value)
                longest += len(value) + 1
            else:  # cut, or exactly this long: as long as flatten keeps a value at most
                longest += MAX_VALUE_CHARS + 1
    if longest > MAX_TEXT_CHARS:
        return set()
    return {line for value in whole for line in value.split("\n") if line.strip()}


def common_text(lines: Iterable[str]) -> str:
    """Lines as a study document's ``common``: sorted, cut to MAX_COMMON_CHARS (shortest first)."""
    kept: list[str] = []
    size = 0
    for line in sorted(set(lines), key=lambda line: (len(line), line)):
        if size + len(line) + 1 > MAX_COMMON_CHARS:
            break
        kept.append(line)
        size += len(line) + 1
    return "\n".join(sorted(kept))


def common_lines(text: str) -> set[str]:
    """A stored ``common``'s lines."""
    return text_lines(text)
