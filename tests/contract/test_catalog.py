"""The catalog contract, run against SQLite and PostgreSQL.

Each test gets a fresh SQLite file or a fresh PostgreSQL schema (dropped at the
end). Expected results are computed from the generated data, never read back.
"""

from __future__ import annotations

import asyncio
import dataclasses
import fnmatch
import json
import logging
import unicodedata
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any
from pathlib import Path

import psycopg
import pytest

from archive.adapters.postgres_catalog import DIALECT as POSTGRES_DIALECT
from archive.adapters.postgres_catalog import PostgresCatalog
from archive.adapters.sql_catalog import build_find
from archive.adapters.sqlite_catalog import DIALECT as SQLITE_DIALECT
from archive.adapters.sqlite_catalog import SqliteCatalog
from archive.core.errors import BackendUnavailable
from archive.core.levels import Level
from archive.core.ports import Catalog
from archive.core.query import InvalidQuery, Matcher, Query, Range, SingleValue, UIDList, Universal, Wildcard
from archive.core.records import CatalogEntry
from archive.core.uids import object_key
from tests.conftest import free_port, service_setting
from tests.factories import clones, make_ct, make_message, new_uid

CatalogFactory = Callable[[], Catalog]


@pytest.fixture(params=["sqlite", "postgresql"])
async def open_catalog(
    request: pytest.FixtureRequest, tmp_path: Path, unique: str
) -> AsyncIterator[CatalogFactory]:
    """A factory of catalogs sharing one fresh store (as several processes would)."""
    opened: list[Catalog] = []
    dsn = service_setting("ARCHIVE_CATALOG") if request.param == "postgresql" else ""

    def new() -> Catalog:
        backend: Catalog = SqliteCatalog(tmp_path / "catalog.db") if not dsn else PostgresCatalog(dsn, schema=unique)
        opened.append(backend)
        return backend

    yield new
    for backend in opened:
        await backend.close()
    if dsn:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            await conn.execute(f"DROP SCHEMA IF EXISTS {unique} CASCADE")


@pytest.fixture
async def catalog(open_catalog: CatalogFactory) -> Catalog:
    backend = open_catalog()
    await backend.migrate()
    return backend


# -- generated data -------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Spec:
    """One generated instance and the attributes it was generated with."""

    patient_id: str
    patient_name: str
    study_uid: str
    study_date: str
    study_time: str
    accession: str
    referring: str
    series_uid: str
    modality: str
    series_number: int
    sop_uid: str
    instance_number: int


def entry(spec: Spec, tmp_path: Path) -> CatalogEntry:
    ds = make_ct(
        study_uid=spec.study_uid, series_uid=spec.series_uid, sop_uid=spec.sop_uid,
        patient_id=spec.patient_id, patient_name=spec.patient_name, study_date=spec.study_date,
        accession=spec.accession, modality=spec.modality, instance_number=spec.instance_number, size=4,
    )  # fmt: skip
    ds.StudyTime = spec.study_time
    ds.ReferringPhysicianName = spec.referring
    ds.SeriesNumber = spec.series_number
    return CatalogEntry.from_message(make_message(ds, tmp_path))


class World:
    """Three patients, four studies, five series, nine instances."""

    def __init__(self) -> None:
        self.uid: dict[str, str] = {}
        self.specs: list[Spec] = []
        # patient, name, study, date, time, accession, referring, [(series, modality, number, instances)]
        plan = [
            ("PID-1", "Doe^Jane", "A", "20240115", "101500", "ACC-1", "Smith^John",
             [("A.CT", "CT", 1, 3), ("A.MR", "MR", 2, 2)]),
            ("PID-1", "Doe^Jane", "B", "20230601", "073000", "ACC-2", "Ångström^Anders", [("B.CT", "CT", 1, 1)]),
            ("PID-2", "Müller^Jürgen", "C", "20220310", "101500", "100%_A", "Smith^John", [("C.US", "US", 1, 1)]),
            ("PID-3", "Doe^John", "D", "20240301", "120000", "100XYA", "Smith^John", [("D.CT", "CT", 3, 1)]),
        ]  # fmt: skip
        for pid, name, study, date, time_, acc, ref, series in plan:
            self.uid[study] = new_uid()
            for label, modality, number, count in series:
                self.uid[label] = new_uid()
                for n in range(1, count + 1):
                    sop = self.uid[f"{label}.{n}"] = new_uid()
                    study_uid, series_uid = self.uid[study], self.uid[label]
                    self.specs.append(
                        Spec(pid, name, study_uid, date, time_, acc, ref, series_uid, modality, number, sop, n)
                    )


@pytest.fixture
async def world(catalog: Catalog, tmp_path: Path) -> World:
    w = World()
    await catalog.upsert([entry(s, tmp_path) for s in w.specs])
    return w


def value(result: dict, tag: str) -> object:
    return result[tag]["Value"][0]


KEY_TAG = {Level.PATIENT: "00100020", Level.STUDY: "0020000D", Level.SERIES: "0020000E", Level.IMAGE: "00080018"}
SPEC_KEY: dict[Level, Callable[[Spec], str]] = {
    Level.PATIENT: lambda s: s.patient_id,
    Level.STUDY: lambda s: s.study_uid,
    Level.SERIES: lambda s: s.series_uid,
    Level.IMAGE: lambda s: s.sop_uid,
}


def fold(text: str) -> str:
    """Reference folding for the expectations: no accents, upper case."""
    return "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c)).upper()


# -- matching at every level (PS3.4 C.2.2.2) ----------------------------------------

Pred = Callable[[Spec, World], bool]
Case = tuple[str, Callable[[World], Sequence[Matcher]], Pred]


def in_study_with(modalities: set[str]) -> Pred:
    return lambda s, w: any(o.modality in modalities for o in w.specs if o.study_uid == s.study_uid)


STUDY_CASES: list[Case] = [
    ("single PatientID", lambda w: [SingleValue("PatientID", "PID-1")], lambda s, w: s.patient_id == "PID-1"),
    ("universal", lambda w: [Universal("PatientID"), Universal("StudyDate")], lambda s, w: True),
    ("PN wildcard, any case", lambda w: [Wildcard("PatientName", "doe*")],
     lambda s, w: fold(s.patient_name).startswith("DOE")),
    ("PN wildcard, accents", lambda w: [Wildcard("PatientName", "muller*")],
     lambda s, w: fold(s.patient_name).startswith("MULLER")),
    ("PN ?", lambda w: [Wildcard("PatientName", "MÜLLER^J?RGEN")],
     lambda s, w: fnmatch.fnmatchcase(fold(s.patient_name), "MULLER^J?RGEN")),
    ("PN leading *", lambda w: [Wildcard("PatientName", "*jane")], lambda s, w: fold(s.patient_name).endswith("JANE")),
    ("PN single, any case", lambda w: [SingleValue("PatientName", "doe^jane")],
     lambda s, w: fold(s.patient_name) == "DOE^JANE"),
    ("referring PN", lambda w: [Wildcard("ReferringPhysicianName", "angstrom*")],
     lambda s, w: fold(s.referring).startswith("ANGSTROM")),
    ("LIKE metacharacters literal", lambda w: [SingleValue("AccessionNumber", "100%_A")],
     lambda s, w: s.accession == "100%_A"),
    ("LIKE metacharacters in wildcard", lambda w: [Wildcard("AccessionNumber", "100%_*")],
     lambda s, w: fnmatch.fnmatchcase(s.accession, "100%_*")),
    ("? matches any one character", lambda w: [Wildcard("AccessionNumber", "100??A")],
     lambda s, w: fnmatch.fnmatchcase(s.accession, "100??A")),
    ("non-PN is case sensitive", lambda w: [SingleValue("AccessionNumber", "acc-1")],
     lambda s, w: s.accession == "acc-1"),
    ("date range open high", lambda w: [Range("StudyDate", "20240101", None)], lambda s, w: s.study_date >= "20240101"),
    ("date range open low", lambda w: [Range("StudyDate", None, "20230601")], lambda s, w: s.study_date <= "20230601"),
    ("date range inclusive", lambda w: [Range("StudyDate", "20230601", "20240115")],
     lambda s, w: "20230601" <= s.study_date <= "20240115"),
    ("time range to minute", lambda w: [Range("StudyTime", None, "0730")], lambda s, w: s.study_time[:4] <= "0730"),
    ("time range one minute", lambda w: [Range("StudyTime", "1015", "1015")], lambda s, w: s.study_time[:4] == "1015"),
    ("UID list", lambda w: [UIDList("StudyInstanceUID", (w.uid["A"], w.uid["C"]))],
     lambda s, w: s.study_uid in (w.uid["A"], w.uid["C"])),
    ("ModalitiesInStudy", lambda w: [SingleValue("ModalitiesInStudy", "MR")], in_study_with({"MR"})),
    ("ModalitiesInStudy list", lambda w: [UIDList("ModalitiesInStudy", ("US", "MR"))], in_study_with({"US", "MR"})),
    ("ModalitiesInStudy wildcard", lambda w: [Wildcard("ModalitiesInStudy", "M*")], in_study_with({"MR"})),
    ("combined", lambda w: [Wildcard("PatientName", "doe*"), Range("StudyDate", "20240101", None)],
     lambda s, w: fold(s.patient_name).startswith("DOE") and s.study_date >= "20240101"),
    ("series attribute below", lambda w: [SingleValue("Modality", "US")], in_study_with({"US"})),
]  # fmt: skip

SERIES_CASES: list[Case] = [
    ("Modality", lambda w: [SingleValue("Modality", "MR")], lambda s, w: s.modality == "MR"),
    ("scoped by study", lambda w: [SingleValue("StudyInstanceUID", w.uid["A"])],
     lambda s, w: s.study_uid == w.uid["A"]),
    ("scoped, no match", lambda w: [SingleValue("StudyInstanceUID", w.uid["B"]), SingleValue("Modality", "MR")],
     lambda s, w: False),
    ("SeriesNumber", lambda w: [SingleValue("SeriesNumber", "2")], lambda s, w: s.series_number == 2),
    ("SeriesNumber wildcard", lambda w: [Wildcard("SeriesNumber", "3*")], lambda s, w: str(s.series_number)[0] == "3"),
    ("UID list", lambda w: [UIDList("SeriesInstanceUID", (w.uid["A.MR"], w.uid["D.CT"]))],
     lambda s, w: s.series_uid in (w.uid["A.MR"], w.uid["D.CT"])),
    ("patient attribute above", lambda w: [SingleValue("PatientID", "PID-1")], lambda s, w: s.patient_id == "PID-1"),
    ("study date above", lambda w: [Range("StudyDate", None, "20230601")], lambda s, w: s.study_date <= "20230601"),
    ("description wildcard", lambda w: [Wildcard("SeriesDescription", "AX*")], lambda s, w: True),
    ("ModalitiesInStudy is about the study", lambda w: [SingleValue("ModalitiesInStudy", "MR")], in_study_with({"MR"})),
]  # fmt: skip

IMAGE_CASES: list[Case] = [
    ("scoped by study and series",
     lambda w: [SingleValue("StudyInstanceUID", w.uid["A"]), SingleValue("SeriesInstanceUID", w.uid["A.CT"])],
     lambda s, w: s.series_uid == w.uid["A.CT"]),
    ("series of another study", lambda w: [SingleValue("StudyInstanceUID", w.uid["B"]),
                                           SingleValue("SeriesInstanceUID", w.uid["A.CT"])], lambda s, w: False),
    ("SOP UID", lambda w: [SingleValue("SOPInstanceUID", w.uid["A.MR.2"])], lambda s, w: s.sop_uid == w.uid["A.MR.2"]),
    ("SOP UID list", lambda w: [UIDList("SOPInstanceUID", (w.uid["A.CT.1"], w.uid["C.US.1"]))],
     lambda s, w: s.sop_uid in (w.uid["A.CT.1"], w.uid["C.US.1"])),
    ("InstanceNumber in series",
     lambda w: [SingleValue("SeriesInstanceUID", w.uid["A.CT"]), SingleValue("InstanceNumber", "2")],
     lambda s, w: s.series_uid == w.uid["A.CT"] and s.instance_number == 2),
    ("SOP class", lambda w: [SingleValue("SOPClassUID", "1.2.840.10008.5.1.4.1.1.2")], lambda s, w: True),
    ("series attribute above", lambda w: [SingleValue("Modality", "MR")], lambda s, w: s.modality == "MR"),
]  # fmt: skip

PATIENT_CASES: list[Case] = [
    ("PatientID wildcard", lambda w: [Wildcard("PatientID", "PID-*")], lambda s, w: s.patient_id.startswith("PID-")),
    ("PatientName wildcard", lambda w: [Wildcard("PatientName", "DOE*")],
     lambda s, w: fold(s.patient_name).startswith("DOE")),
    ("birth date range, none", lambda w: [Range("PatientBirthDate", None, "19691231")], lambda s, w: False),
    ("birth date single", lambda w: [SingleValue("PatientBirthDate", "19700101")], lambda s, w: True),
    ("sex", lambda w: [SingleValue("PatientSex", "M")], lambda s, w: False),
    ("study date below", lambda w: [Range("StudyDate", "20240201", None)], lambda s, w: s.study_date >= "20240201"),
    ("ModalitiesInStudy below", lambda w: [SingleValue("ModalitiesInStudy", "US")],
     lambda s, w: any(o.modality == "US" for o in w.specs if o.patient_id == s.patient_id)),
]  # fmt: skip

CASES = {Level.PATIENT: PATIENT_CASES, Level.STUDY: STUDY_CASES, Level.SERIES: SERIES_CASES, Level.IMAGE: IMAGE_CASES}


@pytest.mark.parametrize("level", list(CASES), ids=lambda lv: lv.value)
async def test_matching(catalog: Catalog, world: World, level: Level) -> None:
    wrong = []
    for name, matchers, pred in CASES[level]:
        got = [str(value(r, KEY_TAG[level])) for r in await catalog.find(Query(level, tuple(matchers(world))))]
        expected = {SPEC_KEY[level](s) for s in world.specs if pred(s, world)}
        if sorted(got) != sorted(expected):  # no duplicates either
            wrong.append(f"{name}: got {len(got)} {sorted(got)}, expected {len(expected)} {sorted(expected)}")
    assert not wrong, "\n".join(wrong)


async def test_fuzzy_person_name_matches_any_component(catalog: Catalog, world: World) -> None:
    got = await catalog.find(Query(Level.STUDY, (SingleValue("PatientName", "jan"),), fuzzy=True))
    expected = {s.study_uid for s in world.specs if any(p.startswith("JAN") for p in fold(s.patient_name).split("^"))}
    assert {value(r, "0020000D") for r in got} == expected and expected


async def test_invalid_value_is_rejected(catalog: Catalog) -> None:
    with pytest.raises(InvalidQuery):
        await catalog.find(Query(Level.SERIES, (SingleValue("SeriesNumber", "two"),)))


async def test_results_carry_higher_levels_and_computed_attributes(catalog: Catalog, world: World) -> None:
    studies = await catalog.find(Query(Level.STUDY, (SingleValue("StudyInstanceUID", world.uid["A"]),)))
    assert len(studies) == 1
    study, specs = studies[0], [s for s in world.specs if s.study_uid == world.uid["A"]]
    assert value(study, "00100020") == specs[0].patient_id  # patient attributes included
    assert value(study, "00080050") == specs[0].accession
    assert value(study, "00201206") == len({s.series_uid for s in specs})  # NumberOfStudyRelatedSeries
    assert value(study, "00201208") == len(specs)  # NumberOfStudyRelatedInstances
    assert study["00080061"] == {"vr": "CS", "Value": sorted({s.modality for s in specs})}

    series = await catalog.find(Query(Level.SERIES, (SingleValue("SeriesInstanceUID", world.uid["A.CT"]),)))
    assert value(series[0], "0020000D") == world.uid["A"]
    assert value(series[0], "00080060") == "CT"
    assert value(series[0], "00201209") == sum(s.series_uid == world.uid["A.CT"] for s in world.specs)

    image = await catalog.find(Query(Level.IMAGE, (SingleValue("SOPInstanceUID", world.uid["A.MR.1"]),)))
    assert value(image[0], "0020000D") == world.uid["A"]
    assert value(image[0], "0020000E") == world.uid["A.MR"]
    assert value(image[0], "00200013") == 1

    patients = await catalog.find(Query(Level.PATIENT, (SingleValue("PatientID", "PID-1"),)))
    mine = [s for s in world.specs if s.patient_id == "PID-1"]
    assert len(patients) == 1
    assert value(patients[0], "00201200") == len({s.study_uid for s in mine})
    assert value(patients[0], "00201202") == len({s.series_uid for s in mine})
    assert value(patients[0], "00201204") == len(mine)


async def test_order_limit_and_offset(catalog: Catalog, world: World) -> None:
    studies = sorted({(s.study_date, s.study_uid) for s in world.specs}, key=lambda t: t[1])
    order = [uid for _, uid in sorted(studies, key=lambda t: t[0], reverse=True)]  # date desc, then UID
    found = [value(r, "0020000D") for r in await catalog.find(Query(Level.STUDY))]
    assert found == order
    page = await catalog.find(Query(Level.STUDY, limit=2, offset=1))
    assert [value(r, "0020000D") for r in page] == order[1:3]
    pages = [await catalog.find(Query(Level.STUDY, limit=1, offset=n)) for n in range(len(order) + 1)]
    assert [value(p[0], "0020000D") for p in pages if p] == order and pages[-1] == []

    in_a = [s for s in world.specs if s.study_uid == world.uid["A"]]
    series = await catalog.find(Query(Level.SERIES, (SingleValue("StudyInstanceUID", world.uid["A"]),)))
    by_number = sorted({(s.series_number, s.series_uid) for s in in_a})
    assert [value(r, "0020000E") for r in series] == [uid for _, uid in by_number]
    images = await catalog.find(Query(Level.IMAGE, (SingleValue("SeriesInstanceUID", world.uid["A.CT"]),), limit=2))
    expected = sorted((s.instance_number, s.sop_uid) for s in in_a if s.series_uid == world.uid["A.CT"])
    assert [value(r, "00080018") for r in images] == [uid for _, uid in expected[:2]]


# -- upsert -----------------------------------------------------------------------


async def test_upsert_is_idempotent(catalog: Catalog, world: World, tmp_path: Path) -> None:
    before = await catalog.find(Query(Level.STUDY))
    batch = [entry(s, tmp_path) for s in world.specs]
    await catalog.upsert(batch + batch[:3])  # the same batch again, duplicates inside too
    assert await catalog.count_instances() == len(world.specs)
    assert await catalog.find(Query(Level.STUDY)) == before
    assert len(await catalog.find(Query(Level.SERIES))) == len({s.series_uid for s in world.specs})
    assert len(await catalog.find(Query(Level.PATIENT))) == len({s.patient_id for s in world.specs})


async def test_study_moves_to_the_patient_it_is_resent_under(catalog: Catalog, tmp_path: Path) -> None:
    study, series = new_uid(), new_uid()
    specs = [
        Spec("OLD-1", "Old^Name", study, "20200101", "1000", "X", "R", series, "CT", 1, new_uid(), n) for n in (1, 2)
    ]
    await catalog.upsert([entry(s, tmp_path) for s in specs])
    moved = dataclasses.replace(specs[0], patient_id="NEW-1", patient_name="New^Name")
    await catalog.upsert([entry(moved, tmp_path)])
    assert await catalog.count_instances() == len(specs)
    found = await catalog.find(Query(Level.STUDY, (SingleValue("PatientID", "NEW-1"),)))
    assert [value(r, "0020000D") for r in found] == [study]
    assert value(found[0], "00100010") == {"Alphabetic": "New^Name"}
    assert await catalog.find(Query(Level.STUDY, (SingleValue("PatientID", "OLD-1"),))) == []
    assert await catalog.find(Query(Level.PATIENT, (SingleValue("PatientID", "OLD-1"),))) == []
    patients = await catalog.find(Query(Level.PATIENT, (SingleValue("PatientID", "NEW-1"),)))
    assert [value(p, "00201204") for p in patients] == [len(specs)]


async def test_series_moved_to_another_study_moves_its_instances(catalog: Catalog, tmp_path: Path) -> None:
    old, new, series = new_uid(), new_uid(), new_uid()
    specs = [Spec("P", "N", old, "20200101", "1000", "X", "R", series, "CT", 1, new_uid(), n) for n in (1, 2)]
    await catalog.upsert([entry(s, tmp_path) for s in specs])
    await catalog.upsert([entry(dataclasses.replace(specs[0], study_uid=new), tmp_path)])
    assert {i.study_uid async for i in catalog.instances()} == {new}
    found = await catalog.find(Query(Level.IMAGE, (SingleValue("StudyInstanceUID", new),)))
    assert sorted(value(r, "00080018") for r in found) == sorted(s.sop_uid for s in specs)


async def test_concurrent_overlapping_upserts(
    open_catalog: CatalogFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first, second = open_catalog(), open_catalog()  # two indexer processes
    await asyncio.gather(first.migrate(), second.migrate())  # concurrent migrations are safe
    studies = [new_uid() for _ in range(3)]
    entries = [
        e
        for n, study in enumerate(studies)
        for e in clones(tmp_path, 20, study_uid=study, series_uid=new_uid(), patient_id=f"P{n}")
        + clones(tmp_path, 20, study_uid=study, series_uid=new_uid(), patient_id=f"P{n}")
    ]
    with caplog.at_level(logging.WARNING):
        for _ in range(5):  # overlapping batches, given in opposite orders
            await asyncio.gather(first.upsert(entries[:90]), second.upsert(list(reversed(entries[30:]))))
    # rows are locked in key order: no deadlock, so no retry either
    assert not [r for r in caplog.records if "retry" in r.getMessage()]
    assert await first.count_instances() == len(entries)
    found = await second.find(Query(Level.STUDY))
    assert sorted(value(s, "0020000D") for s in found) == sorted(studies)
    assert [value(s, "00201208") for s in found] == [40, 40, 40]
    assert [value(s, "00201206") for s in found] == [2, 2, 2]


async def test_instances_iterates_every_row_in_batches(catalog: Catalog, tmp_path: Path) -> None:
    entries = clones(tmp_path, 1_050, patient_id="MANY")
    for n in range(0, len(entries), 350):
        await catalog.upsert(entries[n : n + 350])
    assert await catalog.count_instances() == len(entries)
    listed = [i async for i in catalog.instances()]
    assert sorted(i.sop_instance_uid for i in listed) == sorted(e.instance.sop_instance_uid for e in entries)
    one = entries[17].instance
    got = await catalog.get_instance(one.sop_instance_uid)
    assert got is not None
    assert (got.object_key, got.size, got.sha256, got.series_uid) == (
        one.object_key, one.size, one.sha256, entries[17].series.series_uid
    )  # fmt: skip
    assert await catalog.get_instance("1.2.3.404") is None


async def test_migrate_twice_keeps_data(catalog: Catalog, world: World) -> None:
    await catalog.migrate()
    await catalog.ping()
    assert await catalog.count_instances() == len(world.specs)


# -- availability and plans ------------------------------------------------------


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_unreachable_backend_is_unavailable(backend: str, tmp_path: Path) -> None:
    if backend == "sqlite":
        (tmp_path / "file").write_text("not a directory")
        unreachable: Catalog = SqliteCatalog(tmp_path / "file" / "catalog.db")
        calls: list[Callable[[], Awaitable[None]]] = [unreachable.migrate, unreachable.ping]
    else:
        unreachable = PostgresCatalog(f"postgresql://nobody:x@127.0.0.1:{free_port()}/none", connect_timeout=1)
        calls = [unreachable.ping, unreachable.migrate]
    for call in calls:
        with pytest.raises(BackendUnavailable):
            await call()
    await unreachable.close()


async def test_prefix_wildcard_uses_the_folded_name_index(catalog: Catalog) -> None:
    """White box: ``Doe*`` becomes a prefix LIKE that an index range scan serves."""
    query = Query(Level.STUDY, (Wildcard("PatientName", "Doe*"),))
    if isinstance(catalog, SqliteCatalog):
        sql, params = build_find(query, SQLITE_DIALECT)
        read = catalog._read_con  # noqa: SLF001 - the adapter's own connection and pragmas
        rows = await catalog._reader.run(lambda: read().execute("EXPLAIN QUERY PLAN " + sql, params).fetchall())
        plan = "\n".join(r[3] for r in rows)
        assert "patients_name_folded (patient_name_folded>? AND patient_name_folded<?)" in plan, plan
    else:
        assert isinstance(catalog, PostgresCatalog)
        sql, params = build_find(query, POSTGRES_DIALECT)
        pool = await catalog._get_pool()  # noqa: SLF001
        async with pool.connection() as conn, conn.transaction():
            await conn.execute("SET LOCAL enable_seqscan = off")
            plan = "\n".join(r[0] for r in await (await conn.execute("EXPLAIN " + sql, params)).fetchall())
        assert "patients_name_folded" in plan and "~>=~ 'DOE'" in plan, plan


async def test_values_json_and_postgresql_refuse_are_cleaned_on_receipt(catalog: Catalog, tmp_path: Path) -> None:
    """NaN decimal strings and NUL characters arrive from real senders; they must index."""
    from tests.factories import make_ct, make_message

    ds = make_ct(patient_id="NUL\x00ID")
    ds.PatientWeight = "NaN"
    ds.StudyDescription = "CT\x00CHEST"
    message = make_message(ds, tmp_path)
    assert b"NaN" not in message.to_bytes() and b"\\u0000" not in message.to_bytes()
    await catalog.upsert([CatalogEntry.from_message(message)])
    [study] = await catalog.find(Query(Level.STUDY, (SingleValue("PatientID", "NULID"),)))
    assert study["00100020"]["Value"] == ["NULID"]
    assert "Value" not in study.get("00101030", {})  # PatientWeight kept without its NaN value


@pytest.mark.parametrize(
    "level, matchers, expected",
    [
        (Level.STUDY, lambda w: (SingleValue("StudyInstanceUID", w.uid["A"]),), lambda s: s.study_uid_label == "A"),
        (Level.SERIES, lambda w: (UIDList("SeriesInstanceUID", (w.uid["A.MR"], w.uid["D.CT"])),),
         lambda s: s.series_label in ("A.MR", "D.CT")),
        (Level.IMAGE, lambda w: (SingleValue("SOPInstanceUID", w.uid["B.CT.1"]),), lambda s: s.series_label == "B.CT"),
        (Level.PATIENT, lambda w: (SingleValue("PatientID", "PID-1"),), lambda s: s.patient_id == "PID-1"),
    ],
)
async def test_locate_lists_the_instances_to_retrieve(
    catalog: Catalog, world: World, level: Level, matchers: Callable[[World], tuple[Matcher, ...]],
    expected: Callable[[Any], bool],
) -> None:
    found = await catalog.locate(Query(level, matchers(world), limit=1000))
    labels = {uid: label for label, uid in world.uid.items()}
    wanted = [s for s in world.specs if expected(_Labelled(s, labels))]
    assert sorted(i.sop_instance_uid for i in found) == sorted(s.sop_uid for s in wanted)
    for inst in found:
        assert inst.sop_class_uid == "1.2.840.10008.5.1.4.1.1.2"  # CT Image Storage, as generated
        assert inst.transfer_syntax_uid and inst.object_key == object_key(inst.sop_instance_uid)
    # ordered by study, then series number, then instance number
    order = [(i.study_uid, i.series_uid) for i in found]
    assert order == sorted(order, key=lambda p: (p[0], next(s.series_number for s in wanted if s.series_uid == p[1])))
    assert len(await catalog.locate(Query(level, matchers(world), limit=1))) == min(1, len(wanted))


@dataclasses.dataclass(frozen=True)
class _Labelled:
    spec: Spec
    labels: dict[str, str]

    @property
    def patient_id(self) -> str:
        return self.spec.patient_id

    @property
    def study_uid_label(self) -> str:
        return self.labels[self.spec.study_uid]

    @property
    def series_label(self) -> str:
        return self.labels[self.spec.series_uid]


# -- WADO-RS metadata ------------------------------------------------------------------


async def test_metadata_is_the_stored_json_as_text_in_locate_order(
    catalog: Catalog, world: World, tmp_path: Path
) -> None:
    study = (SingleValue("StudyInstanceUID", world.uid["A"]),)
    rows = await catalog.metadata(Query(Level.STUDY, study, limit=1000))
    located = await catalog.locate(Query(Level.STUDY, study, limit=1000))
    assert [r.sop_instance_uid for r in rows] == [i.sop_instance_uid for i in located]
    specs = {s.sop_uid: s for s in world.specs}
    for row in rows:
        spec = specs[row.sop_instance_uid]
        assert (row.study_uid, row.series_uid) == (spec.study_uid, spec.series_uid)
        assert row.transfer_syntax_uid == "1.2.840.10008.1.2.1"
        assert isinstance(row.json, str) and row.indexed_at > 0
        assert json.loads(row.json) == entry(spec, tmp_path).instance.metadata  # as stored, nothing lost
    # paging: limit and offset over the same order
    pages = [await catalog.metadata(Query(Level.STUDY, study, limit=2, offset=n)) for n in (0, 2, 4)]
    assert [r.sop_instance_uid for page in pages for r in page] == [r.sop_instance_uid for r in rows]
    series = (SingleValue("SeriesInstanceUID", world.uid["A.MR"]),)
    assert len(await catalog.metadata(Query(Level.SERIES, series, limit=1000))) == 2
    assert await catalog.metadata(Query(Level.STUDY, (SingleValue("StudyInstanceUID", new_uid()),))) == []


async def test_metadata_indexed_at_changes_when_an_instance_is_reindexed(
    catalog: Catalog, world: World, tmp_path: Path
) -> None:
    """WADO-RS ETags are derived from it: a re-indexed instance must change it."""
    image = (SingleValue("SOPInstanceUID", world.uid["B.CT.1"]),)
    [before] = await catalog.metadata(Query(Level.IMAGE, image))
    await asyncio.sleep(0.01)
    await catalog.upsert([entry(next(s for s in world.specs if s.sop_uid == world.uid["B.CT.1"]), tmp_path)])
    [after] = await catalog.metadata(Query(Level.IMAGE, image))
    assert after.indexed_at > before.indexed_at and after.json == before.json
