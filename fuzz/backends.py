"""Embedded backends with a few instances in them, for the query targets (and the attack suite).

A real :class:`~archive.adapters.sqlite_catalog.SqliteCatalog` and
:class:`~archive.adapters.fts5_search.Fts5Search` in a temporary directory, filled through
the indexer's own functions (``CatalogEntry.from_message``, ``flatten``) from instances
built here, one of them with markup in its names (for the HTML-escaping invariant).
"""

from __future__ import annotations

import asyncio
import tempfile
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web
from pydicom.dataset import Dataset
from pydicom.filebase import DicomFileLike
from pydicom.filewriter import write_dataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

from archive.adapters.fts5_search import Fts5Search
from archive.adapters.sqlite_catalog import SqliteCatalog
from archive.core.flatten import flatten
from archive.core.models import IndexMessage
from archive.core.records import CatalogEntry
from archive.core.uids import object_key
from archive.ingest.describe import describe
from archive.query import routes
from archive.settings import Settings

ROOT = "1.2.826.0.1.3680043.10.1437.77"
HOSTILE_NAME = "<script>alert(1)</script>^O'Brien\"--"


def instance(n: int, name: str, modality: str, text: str) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = f"{ROOT}.3.{n}"
    ds.StudyInstanceUID = f"{ROOT}.1.{n % 2}"
    ds.SeriesInstanceUID = f"{ROOT}.2.{n}"
    ds.PatientName = name
    ds.PatientID = f"PAT-{n}"
    ds.StudyDate = f"2024010{n + 1}"
    ds.StudyTime = "101500"
    ds.Modality = modality
    ds.InstitutionName = "General Hospital"
    ds.StudyDescription = text
    ds.BodyPartExamined = "CHEST"
    ds.SeriesNumber = n
    ds.InstanceNumber = n
    return ds


def message(ds: Dataset, directory: Path) -> IndexMessage:
    path = directory / f"{ds.SOPInstanceUID}.raw"
    fp = DicomFileLike(path.open("wb"))
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_dataset(fp, ds)
    fp.close()
    d = describe(path, ExplicitVRLittleEndian)
    return d.index_message(object_key(d.sop_instance_uid), 1, "0" * 64, "FUZZ")


@dataclass
class Backends:
    directory: Path
    catalog: SqliteCatalog
    search: Fts5Search
    app: web.Application
    loop: asyncio.AbstractEventLoop


_BACKENDS: list[Backends] = []


def backends() -> Backends:
    """The process's seeded backends and a query application over them (made once)."""
    if _BACKENDS:
        return _BACKENDS[0]
    directory = Path(tempfile.mkdtemp(prefix="fuzz-backends-"))
    loop = asyncio.new_event_loop()
    catalog, search = SqliteCatalog(directory / "catalog.db"), Fts5Search(directory / "search.db")
    messages = [message(instance(n, name, modality, text), directory) for n, (name, modality, text) in enumerate((
        ("Doe^Jane", "CT", "CT CHEST nodule"),
        (HOSTILE_NAME, "MR", "<img src=x onerror=alert(1)> & report"),
        ("Müller^Jürgen", "SR", "follow-up 'nodule' \"quoted\" OR 1=1"),
    ))]

    async def fill() -> None:
        await catalog.migrate()
        await search.migrate()
        await catalog.upsert([CatalogEntry.from_message(m) for m in messages])
        await search.upsert([flatten(m) for m in messages])

    loop.run_until_complete(fill())
    app = web.Application()
    routes.add_routes(app, catalog, 1000, search, settings=Settings(data_dir=directory,
                                                                     public_url="http://archive.test"))
    _BACKENDS.append(Backends(directory, catalog, search, app, loop))
    return _BACKENDS[0]
