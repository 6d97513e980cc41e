"""Writes ui/src/dictionary.json: DICOM tag (8 hex digits) -> keyword, from pydicom's data dictionary
(PS3.6), for the web UI's tag browser. Run with the project's venv when pydicom's dictionary moves:
``.venv/bin/python ui/scripts/dictionary.py``."""

from __future__ import annotations

import json
from pathlib import Path

from pydicom.datadict import DicomDictionary

out = {f"{tag:08X}": entry[4] for tag, entry in sorted(DicomDictionary.items()) if entry[4]}
target = Path(__file__).resolve().parents[1] / "src" / "dictionary.json"
target.write_text(json.dumps(out, separators=(",", ":"), sort_keys=True) + "\n")
print(f"{len(out)} keywords -> {target}")
