"""The header parse and DICOM JSON of one received instance (``describe``), in µs of CPU.

``describe`` is what ``IngestService.prepare`` spends most of its time in: the dataset read up to
Pixel Data and its DICOM JSON for the index message. Each kind of instance is written once as a
C-STORE spools it (a dataset without File Meta) and described ``--count`` times in a fresh
interpreter, this checkout and, with ``--baseline DIR``, another checkout, alternated ``--repeat``
times (process CPU time, so other load on the machine counts less than in wall time):

    .venv/bin/python bench/describe.py --baseline /tmp/before
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Runs in the checkout measured (its own archive.ingest.describe), with this checkout's tests.factories.
CHILD = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
from archive.ingest.describe import describe
path, syntax, count = sys.argv[2], sys.argv[3], int(sys.argv[4])
describe(path, syntax)
started = time.process_time()
for _ in range(count):
    describe(path, syntax)
print(json.dumps((time.process_time() - started) / count * 1e6))
"""


def kinds(directory: Path) -> dict[str, tuple[Path, str]]:
    """name -> (dataset file, transfer syntax)"""
    sys.path.insert(0, str(ROOT))
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

    from tests.factories import dataset_bytes, make_ct, new_uid
    from tests.sopclasses import make_sr

    ct = make_ct(patient_id="BENCH-1", patient_name="Bench^Ingest", seed=7, size=512)
    sr = make_sr(new_uid(), "BENCH-2", "suspicious nodule in the right upper lobe " * 20)
    out = {}
    for name, ds, implicit in (("CT slice 512x512, Explicit VR LE (the ingest bench's)", ct, False),
                               ("CT slice 512x512, Implicit VR LE", ct, True),
                               ("Basic Text SR, Explicit VR LE", sr, False)):
        path = directory / f"{len(out)}.raw"
        path.write_bytes(dataset_bytes(ds, implicit=implicit))
        out[name] = (path, str(ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian))
    # Headers of real modalities, as pydicom ships them (private blocks; sequences of undefined length)
    import pydicom
    from pydicom.filereader import read_file_meta_info

    from archive.ingest.describe import dataset_offset
    shipped = Path(pydicom.__file__).parent / "data" / "test_files"
    for file, name in (("CT_small.dcm", "pydicom's CT_small.dcm (GE CT: private blocks)"),
                       ("liver_1frame.dcm", "pydicom's liver_1frame.dcm (enhanced CT: sequences of undefined length)")):
        path = directory / f"{len(out)}.raw"
        path.write_bytes((shipped / file).read_bytes()[dataset_offset(shipped / file):])
        out[name] = (path, str(read_file_meta_info(shipped / file).TransferSyntaxUID))
    return out


def measure(checkout: Path, path: Path, syntax: str, count: int) -> float:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    python = checkout / ".venv" / "bin" / "python"
    result = subprocess.run([str(python if python.exists() else sys.executable), "-c", CHILD, str(checkout),
                             str(path), syntax, str(count)], capture_output=True, text=True, env=env, check=True)
    return float(json.loads(result.stdout.strip().splitlines()[-1]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, help="another checkout to compare with")
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    builds = {"this checkout": ROOT}
    if args.baseline:
        builds = {"baseline": args.baseline.resolve(), **builds}
    with tempfile.TemporaryDirectory() as tmp:
        samples: dict[tuple[str, str], list[float]] = {}
        for name, (path, syntax) in kinds(Path(tmp)).items():
            for _ in range(args.repeat):
                for build, checkout in builds.items():
                    samples.setdefault((name, build), []).append(measure(checkout, path, syntax, args.count))
        print("| instance | build | µs CPU per describe (median; min–max) |")
        print("|---|---|---:|")
        for (name, build), values in samples.items():
            print(f"| {name} | {build} | {statistics.median(values):.0f} ({min(values):.0f}–{max(values):.0f}) |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
