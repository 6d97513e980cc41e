"""Synthetic hospital archive for the query benchmark: index messages, fast.

Shape (a general hospital's PACS, studies spread over 10 years, 2015-2024):

- patients with 1..8 studies (mean ~2), born 1930-2020; surnames from 60
  common ones (~40 % of patients, SMITH ~1.3 %) plus a long synthetic tail, a few with
  accents (MÜLLER, GARCÍA, LEFÈVRE) so folded matching is exercised;
- a study's modality by a realistic mix (CR 30 %, US 15 %, CT 15 %, MR 10 %, DX 10 %,
  MG 8 %, XA 5 %, PT 4 %, NM 3 %), its series and instances per modality (CR: 1-3 series
  of 1 image; CT: 2-5 series of 20-120 slices; MR: 4-8 series of 10-40; ...): about 65
  instances and 2.3 series per study, so 1M instances are ~15.5k studies of ~7.6k patients;
- 4 institutions, 40 referring physicians, body part, study and series descriptions
  that depend on the modality, one accession number per study.

Every instance carries the attribute set of ``tests/factories.py::make_ct`` (the
DICOM JSON its description produces), with those values varied. Messages are
built from one template by replacing elements, about 15 µs each, never with pydicom.
"""

from __future__ import annotations

import datetime
import random
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _util import UID_ROOT

from archive.core.models import IndexMessage
from archive.core.uids import object_key


@dataclass(frozen=True)
class Profile:
    modality: str
    sop_class: str
    weight: float
    series: tuple[int, int]
    per_series: tuple[int, int]
    matrix: int
    body_parts: tuple[str, ...]
    series_descriptions: tuple[str, ...]


PROFILES = (
    Profile("CR", "1.2.840.10008.5.1.4.1.1.1", 30, (1, 3), (1, 1), 2048,
            ("CHEST", "HAND", "KNEE", "SPINE", "PELVIS", "FOOT"), ("PA", "LAT", "AP", "OBLIQUE")),
    Profile("US", "1.2.840.10008.5.1.4.1.1.6.1", 15, (1, 1), (5, 30), 640,
            ("ABDOMEN", "PELVIS", "NECK", "BREAST"), ("B-MODE", "DOPPLER")),
    Profile("CT", "1.2.840.10008.5.1.4.1.1.2", 15, (2, 5), (20, 120), 512,
            ("CHEST", "ABDOMEN", "HEAD", "PELVIS", "SPINE"), ("SCOUT", "AXIAL 5MM", "AXIAL 1MM", "CORONAL", "SAGITTAL")),
    Profile("MR", "1.2.840.10008.5.1.4.1.1.4", 10, (4, 8), (10, 40), 256,
            ("HEAD", "KNEE", "SPINE", "SHOULDER", "PROSTATE"), ("T1 SE", "T2 TSE", "FLAIR", "DWI", "T1 POST GD", "STIR")),
    Profile("DX", "1.2.840.10008.5.1.4.1.1.1.1", 10, (1, 2), (1, 2), 2048,
            ("CHEST", "ABDOMEN", "SKULL"), ("PA", "LAT", "AP")),
    Profile("MG", "1.2.840.10008.5.1.4.1.1.1.2", 8, (1, 1), (4, 4), 3328,
            ("BREAST",), ("SCREENING 4 VIEWS",)),
    Profile("XA", "1.2.840.10008.5.1.4.1.1.12.1", 5, (1, 3), (1, 15), 1024,
            ("HEART", "ARM", "LEG"), ("CORONARY", "RUN")),
    Profile("PT", "1.2.840.10008.5.1.4.1.1.128", 4, (2, 3), (60, 120), 128,
            ("WHOLEBODY",), ("PET AC", "PET NAC", "CT AC")),
    Profile("NM", "1.2.840.10008.5.1.4.1.1.20", 3, (1, 2), (1, 4), 128,
            ("WHOLEBODY", "THYROID", "HEART"), ("ANT", "POST", "SPECT")),
)  # fmt: skip

COMMON_SURNAMES = (
    "SMITH", "JOHNSON", "WILLIAMS", "BROWN", "JONES", "GARCIA", "MILLER", "DAVIS", "MARTINEZ", "WILSON",
    "ANDERSON", "TAYLOR", "THOMAS", "MOORE", "MARTIN", "JACKSON", "WHITE", "LOPEZ", "CLARK", "LEWIS",
    "MÜLLER", "SCHMIDT", "SCHNEIDER", "FISCHER", "WEBER", "MEYER", "WAGNER", "BECKER", "SCHULZ", "HOFFMANN",
    "BERNARD", "DUBOIS", "ROBERT", "RICHARD", "PETIT", "DURAND", "LEFÈVRE", "MOREAU", "LAURENT", "SIMON",
    "GARCÍA", "FERNÁNDEZ", "GONZÁLEZ", "RODRÍGUEZ", "ROSSI", "RUSSO", "FERRARI", "ESPOSITO", "BIANCHI", "ROMANO",
    "NGUYEN", "TRAN", "KIM", "LEE", "PARK", "WANG", "LI", "ZHANG", "CHEN", "SINGH",
)  # fmt: skip
_SYLLABLES = ("KA", "RO", "VEN", "TAL", "BER", "SON", "MI", "LAN", "DOR", "ES", "HOLM", "QUIST", "NAK", "ELLI", "WICZ")
GIVEN = (
    "JOHN", "MARY", "JAMES", "PATRICIA", "ROBERT", "JENNIFER", "MICHAEL", "LINDA", "DAVID", "ELIZABETH",
    "ANNA", "PETER", "MARIE", "HANS", "SOPHIE", "LUCA", "GIULIA", "JOSÉ", "ANA", "WEI", "MIN", "FATIMA", "OMAR",
)  # fmt: skip
INSTITUTIONS = ("General Hospital", "St. Mary Medical Center", "University Clinic North", "Riverside Imaging")
COMMON_WEIGHTS = [1 / (rank + 1) ** 0.3 for rank in range(len(COMMON_SURNAMES))]
PHYSICIANS = tuple(f"{COMMON_SURNAMES[i]}^{GIVEN[i % len(GIVEN)]}" for i in range(40))
FIRST_DAY = datetime.date(2015, 1, 1)
DAYS = (datetime.date(2024, 12, 31) - FIRST_DAY).days + 1


def surname(rng: random.Random) -> str:
    """40 % common surnames (Zipf-like, SMITH ~1.3 %), 60 % a tail of ~3,000 synthetic ones."""
    if rng.random() < 0.40:
        return rng.choices(COMMON_SURNAMES, COMMON_WEIGHTS)[0]
    return "".join(rng.choice(_SYLLABLES) for _ in range(3))


def date_text(day: int) -> str:
    return (FIRST_DAY + datetime.timedelta(days=day)).strftime("%Y%m%d")


def template_metadata() -> dict[str, Any]:
    """The DICOM JSON of a ``make_ct`` instance, as the receiver describes it."""
    from tests.factories import make_ct, make_message

    with tempfile.TemporaryDirectory() as tmp:
        return dict(make_message(make_ct(), Path(tmp)).metadata)


def _el(vr: str, value: Any) -> dict[str, Any]:
    return {"vr": vr, "Value": [value]}


def _pn(name: str) -> dict[str, Any]:
    return {"vr": "PN", "Value": [{"Alphabetic": name}]}


@dataclass
class Samples:
    """Values of the loaded data that queries are drawn from."""

    patient_ids: list[str] = field(default_factory=list)
    surnames: list[str] = field(default_factory=list)  # one per patient (frequency-weighted)
    study_uids: list[str] = field(default_factory=list)
    accessions: list[str] = field(default_factory=list)
    studies: int = 0
    series: int = 0
    instances: int = 0


class Hospital:
    """An endless, deterministic stream of index messages; ``take(n)`` the next ``n``."""

    def __init__(self, seed: int = 1437, run: int | None = None) -> None:
        self.rng = random.Random(seed)
        self.run = run if run is not None else random.Random().randint(1_000_000, 8_999_999)
        self.template = template_metadata()
        self.samples = Samples()
        self._n = 0
        self._stream = self._messages()

    def uid(self, kind: int) -> str:
        self._n += 1
        return f"{UID_ROOT}{self.run}.{kind}.{self._n}"

    def take(self, count: int) -> list[IndexMessage]:
        out = [next(self._stream) for _ in range(count)]
        self.samples.instances += count
        return out

    def _patient(self, number: int) -> dict[str, Any]:
        rng = self.rng
        name = f"{surname(rng)}^{rng.choice(GIVEN)}"
        pid = f"P{number:07d}"
        self.samples.patient_ids.append(pid)
        self.samples.surnames.append(name.split("^")[0])
        birth = datetime.date(1930, 1, 1) + datetime.timedelta(days=rng.randrange(90 * 365))
        return {
            "00100010": _pn(name), "00100020": _el("LO", pid),
            "00100030": _el("DA", birth.strftime("%Y%m%d")), "00100040": _el("CS", rng.choice("MF")),
        }  # fmt: skip

    def _study(self, patient: dict[str, Any], profile: Profile, number: int) -> dict[str, Any]:
        rng = self.rng
        study_uid = self.uid(1)
        accession = f"A{number:09d}"
        self.samples.study_uids.append(study_uid)
        self.samples.accessions.append(accession)
        self.samples.studies += 1
        part = rng.choice(profile.body_parts)
        contrast = rng.choice(("", " W/O CONTRAST", " WITH CONTRAST")) if profile.modality in ("CT", "MR") else ""
        return {
            **patient, "0020000D": _el("UI", study_uid),
            "00080020": _el("DA", date_text(rng.randrange(DAYS))),
            "00080030": _el("TM", f"{rng.randrange(7, 20):02d}{rng.randrange(60):02d}{rng.randrange(60):02d}"),
            "00080050": _el("SH", accession), "00200010": _el("SH", str(number % 100000)),
            "00081030": _el("LO", f"{profile.modality} {part}{contrast}"),
            "00080090": _pn(rng.choice(PHYSICIANS)), "00080080": _el("LO", rng.choice(INSTITUTIONS)),
            "00180015": _el("CS", part),
        }  # fmt: skip

    def _messages(self) -> Iterator[IndexMessage]:
        rng = self.rng
        tpl = self.template
        weights = [p.weight for p in PROFILES]
        patients = studies = 0
        while True:
            patients += 1
            patient = self._patient(patients)
            for _ in range(min(8, 1 + int(rng.expovariate(1 / 1.5)))):
                studies += 1
                profile = rng.choices(PROFILES, weights)[0]
                study = self._study(patient, profile, studies)
                for series_number in range(1, rng.randint(*profile.series) + 1):
                    self.samples.series += 1
                    series_uid = self.uid(2)
                    fixed = {
                        **study, "0020000E": _el("UI", series_uid), "00080016": _el("UI", profile.sop_class),
                        "00080060": _el("CS", profile.modality), "00200011": _el("IS", series_number),
                        "0008103E": _el("LO", rng.choice(profile.series_descriptions)),
                        "00280010": _el("US", profile.matrix), "00280011": _el("US", profile.matrix),
                    }  # fmt: skip
                    base = {tag: fixed.get(tag, element) for tag, element in tpl.items()}
                    for number in range(1, rng.randint(*profile.per_series) + 1):
                        sop = self.uid(3)
                        md = dict(base)
                        md["00080018"] = _el("UI", sop)
                        md["00200013"] = _el("IS", number)
                        yield IndexMessage(
                            key=object_key(sop), size=525_000 + number, sha256=f"{self._n:064x}",
                            study_uid=study["0020000D"]["Value"][0], series_uid=series_uid,
                            sop_instance_uid=sop, sop_class_uid=profile.sop_class,
                            transfer_syntax_uid="1.2.840.10008.1.2.1", received_at=0.0,
                            source_aet="BENCH", metadata=md,
                        )  # fmt: skip
