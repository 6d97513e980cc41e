"""Explore one target with atheris (libFuzzer): ``python -m fuzz.run TARGET [--seconds N]``.

New interesting inputs go to ``fuzz/work/<target>/`` (not committed), crashing ones to
``fuzz/crashes/<target>/`` (a finding: fix it, then copy the input into
``fuzz/corpus/<target>/``). The committed corpus is read as seeds. Memory is bounded
twice: an address-space limit on the process (an unbounded allocation becomes a
``MemoryError``, which is a finding like any other unexpected exception) and libFuzzer's
RSS limit. ``make fuzz`` runs this for every target under ``nice``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import resource
import sys
import warnings
from pathlib import Path
from types import ModuleType

from fuzz import TARGETS

HERE = Path(__file__).resolve().parent
MEMORY_MB = 3072  # address space of the fuzzing process (numpy, threads and pydicom included)
RSS_MB = 1536


def wrap(target: ModuleType):  # type: ignore[no-untyped-def]
    """The libFuzzer callback: expected refusals pass, everything else propagates (a crash)."""
    expected = target.EXPECTED

    def one(data: bytes) -> None:
        try:
            target.fuzz_one(data)
        except expected:
            pass
    return one


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("target", choices=TARGETS)
    parser.add_argument("--seconds", type=int, default=180)
    parser.add_argument("--memory-mb", type=int, default=MEMORY_MB)
    parser.add_argument("--max-len", type=int, default=0, help="longest input (0: libFuzzer's choice)")
    args, extra = parser.parse_known_args(argv)
    limit = args.memory_mb << 20
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    warnings.simplefilter("ignore")  # pydicom warns about every odd element
    logging.disable(logging.CRITICAL)  # the parsers log every refusal; millions of lines help no one
    import atheris  # here: the replay test and CI never need it

    work, crashes, corpus = (HERE / d / args.target for d in ("work", "crashes", "corpus"))
    for directory in (work, crashes):
        directory.mkdir(parents=True, exist_ok=True)
    with atheris.instrument_imports(include=["archive", "fuzz", "aiohttp", "multidict", "yarl"]):
        target = importlib.import_module(f"fuzz.{args.target}")
    flags = [sys.argv[0], f"-max_total_time={args.seconds}", f"-rss_limit_mb={RSS_MB}",
             f"-artifact_prefix={crashes}/", "-timeout=30", "-print_final_stats=1"]
    if args.max_len:
        flags.append(f"-max_len={args.max_len}")
    atheris.Setup([*flags, *extra, str(work), str(corpus)], wrap(target))
    atheris.Fuzz()


if __name__ == "__main__":
    main()
