"""Fuzz targets for the archive's parsers of untrusted input, and their committed corpora.

One module per target (:data:`TARGETS`); each has ``fuzz_one(data: bytes)``, which feeds the
bytes to the real parser and raises only the errors listed in its ``EXPECTED`` (the
documented ways to refuse input). Anything else - another exception, a broken invariant
(an ``AssertionError`` here), running out of the memory the runner allows - is a finding.

- ``python -m fuzz.run TARGET`` explores with atheris (libFuzzer); ``make fuzz`` runs every
  target for ``FUZZ_SECONDS`` each, niced, with a memory limit.
- ``tests/unit/test_fuzz_corpora.py`` replays ``fuzz/corpus/<target>/`` through the same
  functions, deterministically and without atheris, so CI never turns red by chance.
- ``python -m fuzz.seeds`` writes the seed inputs (real PDUs, Part 10 headers, multipart
  bodies and query strings) into the corpora.
"""

from __future__ import annotations

TARGETS = ("pdu", "describe", "stow", "qido", "search")
