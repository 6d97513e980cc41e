"""Replay the committed fuzz corpora (``fuzz/corpus/<target>/``) through the fuzz targets.

The same functions atheris explores (``make fuzz``), run here deterministically and without
atheris: every seed and every input a past exploration found (crashes once fixed, and the
inputs that reached new code) must be refused only in the documented ways. A regression in
a parser of untrusted input fails this test, never a random exploration in CI.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from fuzz import TARGETS

CORPUS = Path(__file__).resolve().parents[2] / "fuzz" / "corpus"


@pytest.mark.parametrize("target", TARGETS)
def test_corpus_replays_cleanly(target: str) -> None:
    module = importlib.import_module(f"fuzz.{target}")
    inputs = sorted((CORPUS / target).iterdir())
    assert inputs, f"no committed corpus for {target}"
    refused = 0
    for path in inputs:
        try:
            module.fuzz_one(path.read_bytes())
        except module.EXPECTED:
            refused += 1
        except BaseException as exc:
            raise AssertionError(f"fuzz/corpus/{target}/{path.name}: {type(exc).__name__}: {exc}") from exc
    assert refused < len(inputs) or target == "pdu", "every input refused: the target no longer reaches the parser"
