"""STOW-RS, the Studies Store Transaction (PS3.18 10.5), through the C-STORE ingest path.

``POST /dicom-web/studies[/{study}]`` with ``multipart/related; type="application/dicom"``.
The body is read part by part (aiohttp's ``MultipartReader``) into spool files, never held
whole in memory, and counted against ``ARCHIVE_STOW_MAX_BYTES`` (413 as soon as it is
exceeded). Request-level faults (400 malformed multipart, 413, 415, 406) are found while
spooling, before anything is stored. Then each part goes through
:class:`~archive.ingest.service.IngestService` exactly as a C-STORE does, so Success means
durable in the object store and queued for indexing, and the duplicate policy applies.

The response is the Store Instances Response Module (PS3.18 Annex I) in DICOM JSON; the
failure and warning reasons come from one table (:func:`failure_reason`), which extends the
C-STORE one (:mod:`archive.scp.status`) with the reasons only STOW-RS has.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import BodyPartReader, MultipartReader, web
from aiohttp.helpers import parse_mimetype
from aiohttp.http_exceptions import HttpProcessingError
from pydicom.filereader import read_file_meta_info
from pydicom.uid import AllTransferSyntaxes

from archive import metrics
from archive.core.audit import StudyTally
from archive.core.errors import InvalidInstance, InvalidUID, MalformedDataset, UIDMismatch
from archive.core.records import text_value
from archive.core.storage_classes import STORAGE_SOP_CLASSES
from archive.core.uids import validate_uid
from archive.ingest.service import IngestService, Outcome, Prepared, Received
from archive.query.context import INGEST, SETTINGS
from archive.query.dicomweb.request import base_url
from archive.scp.spool import process_spool
from archive.scp.status import OUTCOME_STATUS, status_for_error
from archive.query import audit

log = logging.getLogger(__name__)

DICOM = "application/dicom"
DICOM_JSON = "application/dicom+json"
CHUNK = 1 << 20  # spool writes of up to 1 MiB, each on a worker thread
SOURCE_AET = "STOW-RS"  # recorded in the index message as the sender (there is no AE title)
TRANSFER_SYNTAXES = frozenset(str(ts) for ts in AllTransferSyntaxes)
ACCEPTABLE = ("application/dicom+json", "application/json", "application/*", "*/*")


def media_type(text: str) -> str:
    """``type/subtype[+suffix]`` of a media type, lower case, without parameters."""
    mime = parse_mimetype(text)
    return f"{mime.type}/{mime.subtype}" + (f"+{mime.suffix}" if mime.suffix else "")


class UnsupportedSOPClass(InvalidInstance):
    """The part's SOP Class is not a storage SOP class we accept over DIMSE either."""


class UnsupportedTransferSyntax(InvalidInstance):
    """The part's File Meta names a transfer syntax we cannot decode."""


class StudyMismatch(UIDMismatch):
    """The part belongs to another study than the one in the request URL."""


# PS3.18 I.2.2 Table I.2-2, most specific first; every other error maps through the C-STORE
# table, whose codes are of the families Table I.2-2 names (A7xx out of resources, A9xx does
# not match, Cxxx cannot understand, 0110 processing failure).
STOW_FAILURES: tuple[tuple[type[BaseException], int], ...] = (
    (UnsupportedSOPClass, 0x0122),  # Referenced SOP Class not supported
    (UnsupportedTransferSyntax, 0xC122),  # Referenced Transfer Syntax not supported
    # PS3.18 10.5.3 Table 10.5.3-1 names a Study Instance UID mismatch as a conflict but gives
    # it no code; A9xx (the instance does not fit what the request says it is) is the closest.
    (StudyMismatch, 0xA900),
)
RETRY_LATER = (0xA700, 0xA701)  # out of resources: the backends, not the instance


def failure_reason(exc: BaseException) -> int:
    """Failure Reason (0008,1197) of a part that was not stored."""
    for kind, code in STOW_FAILURES:
        if isinstance(exc, kind):
            return code
    return status_for_error(exc).code


class RequestRejected(Exception):
    """The request as a whole cannot be processed; nothing was stored."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


@dataclass(frozen=True)
class PartResult:
    """What happened to one part: stored (maybe with a warning) or failed with a reason."""

    sop_class_uid: str = ""
    sop_instance_uid: str = ""
    study_uid: str = ""
    series_uid: str = ""
    failure: int | None = None
    warning: int | None = None


class _Budget:
    """Bytes a request may still send (ARCHIVE_STOW_MAX_BYTES)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def take(self, n: int) -> None:
        self.used += n
        if self.used > self.limit:
            raise RequestRejected(413, f"request body exceeds ARCHIVE_STOW_MAX_BYTES ({self.limit} bytes)")


def check_content_type(content_type: str) -> None:
    """PS3.18 10.5.1.1: ``multipart/related; type="application/dicom"`` (else 415)."""
    mime = parse_mimetype(content_type)
    if media_type(content_type) != "multipart/related":
        raise RequestRejected(415, "Content-Type must be multipart/related; type=\"application/dicom\"")
    if media_type(mime.parameters.get("type", "")) != DICOM:
        raise RequestRejected(415, "only type=\"application/dicom\" is supported (no metadata + bulk data)")
    if not mime.parameters.get("boundary"):
        raise RequestRejected(400, "multipart/related without a boundary")


def check_accept(accept: str) -> None:
    """The response is DICOM JSON (PS3.18 10.5.2); a client that accepts none of it gets 406."""
    if not accept.strip():
        return
    for item in accept.split(","):
        if media_type(item.strip()) in ACCEPTABLE:
            return
    raise RequestRejected(406, f"the response can only be {DICOM_JSON}")


def _check_part(part: Any) -> BodyPartReader:
    if not isinstance(part, BodyPartReader):
        raise RequestRejected(415, "nested multipart parts are not supported")
    content_type = part.headers.get("Content-Type")
    if content_type is not None:
        if media_type(content_type) != DICOM:
            raise RequestRejected(415, f"part of type {content_type[:80]!r}; only {DICOM} is supported")
    encoding = part.headers.get("Content-Transfer-Encoding", "binary").strip().lower()
    if encoding not in ("binary", "8bit", "7bit") or part.headers.get("Content-Encoding", "identity") != "identity":
        raise RequestRejected(415, "encoded parts (Content-Transfer-Encoding, Content-Encoding) are not supported")
    return part


async def _spool_part(part: BodyPartReader, path: Path, budget: _Budget) -> None:
    fh = await asyncio.to_thread(open, path, "wb")
    try:
        buffer = bytearray()
        while chunk := await part.read_chunk(CHUNK):
            budget.take(len(chunk))
            buffer += chunk
            if len(buffer) >= CHUNK:
                data, buffer = buffer, bytearray()
                await asyncio.to_thread(fh.write, data)
        if buffer:
            await asyncio.to_thread(fh.write, buffer)
    finally:
        await asyncio.to_thread(fh.close)


async def spool_parts(request: web.Request, directory: Path, max_bytes: int) -> list[Path]:
    """Every part of the body in its own file under ``directory``, in order."""
    check_content_type(request.headers.get("Content-Type", ""))
    if request.content_length is not None and request.content_length > max_bytes:
        raise RequestRejected(413, f"request body exceeds ARCHIVE_STOW_MAX_BYTES ({max_bytes} bytes)")
    budget = _Budget(max_bytes)
    paths: list[Path] = []
    try:
        reader = MultipartReader(request.headers, request.content)
        while (part := await reader.next()) is not None:
            path = directory / f"{len(paths):06d}.part"
            await _spool_part(_check_part(part), path, budget)
            paths.append(path)
    except (ValueError, AssertionError, HttpProcessingError) as exc:  # what aiohttp raises on bad framing
        raise RequestRejected(400, f"malformed multipart body: {str(exc)[:200]}") from None
    if not paths:
        raise RequestRejected(400, "the multipart body has no parts")
    return paths


def _received(path: Path) -> tuple[Received, PartResult]:
    """A spooled Part 10 file (PS3.10 7.1) as the ingest service takes it (blocking)."""
    try:
        meta = read_file_meta_info(path)
        sop_class = str(meta.get("MediaStorageSOPClassUID", "") or "")
        sop_uid = str(meta.get("MediaStorageSOPInstanceUID", "") or "")
        syntax = str(meta.get("TransferSyntaxUID", "") or "")
    except Exception as exc:  # no preamble/DICM, or a File Meta pydicom cannot read
        raise MalformedDataset(f"not a DICOM Part 10 file: {str(exc)[:120]}") from exc
    if not sop_class or not sop_uid:
        raise MalformedDataset("File Meta Information without Media Storage SOP Class/Instance UID")
    known = PartResult(sop_class_uid=sop_class[:64], sop_instance_uid=sop_uid[:64])
    return Received(
        dataset_path=path,
        transfer_syntax_uid=syntax,
        source_aet=SOURCE_AET,
        # The File Meta must name the instance it holds (PS3.10 7.1), as a C-STORE command must.
        affected_sop_class_uid=sop_class or None,
        affected_sop_instance_uid=sop_uid or None,
    ), known


class Stower:
    """Stores the spooled parts of one request, one after the other, as C-STORE does."""

    def __init__(self, ingest: IngestService, study: str | None, timeout: float,
                 tally: StudyTally | None = None) -> None:
        self.ingest = ingest
        self.tally = tally  # the request's audit tally: stored (or failed) instances per study
        self.study = study
        self.timeout = timeout
        self.unavailable: BaseException | None = None  # once a backend failed, the rest fail alike

    async def store(self, path: Path) -> PartResult:
        known = PartResult()
        prepared: Prepared | None = None
        try:
            received, known = await asyncio.to_thread(_received, path)
            if not received.transfer_syntax_uid or received.transfer_syntax_uid not in TRANSFER_SYNTAXES:
                raise UnsupportedTransferSyntax(f"transfer syntax {received.transfer_syntax_uid[:64]!r}")
            if received.affected_sop_class_uid not in STORAGE_SOP_CLASSES:
                raise UnsupportedSOPClass(f"SOP Class {known.sop_class_uid!r} is not a storage SOP class")
            if self.unavailable is not None:
                raise self.unavailable
            prepared = await asyncio.to_thread(self.ingest.prepare, received)
            d = prepared.description
            known = PartResult(d.sop_class_uid, d.sop_instance_uid, d.study_uid, d.series_uid)
            if self.study is not None and d.study_uid != self.study:
                raise StudyMismatch("Study Instance UID differs from the one in the request URL")
            result = await asyncio.wait_for(self.ingest.commit(prepared), self.timeout)
        except Exception as exc:
            code = failure_reason(exc)
            if code in RETRY_LATER:
                self.unavailable = exc
            log.warning("STOW-RS instance not stored", extra={
                "sop_instance_uid": known.sop_instance_uid, "failure_reason": f"0x{code:04X}",
                "reason": str(exc)[:200]})
            metrics.STOW_INSTANCES.labels(f"0x{code:04X}").inc()
            self._tally(prepared, ok=False)
            return PartResult(known.sop_class_uid, known.sop_instance_uid, failure=code)
        status = OUTCOME_STATUS[result.outcome]
        metrics.STOW_INSTANCES.labels(status.label).inc()
        self._tally(prepared, ok=True)
        warning = status.code if result.outcome is Outcome.KEPT_FIRST else None
        return PartResult(known.sop_class_uid, known.sop_instance_uid, known.study_uid, known.series_uid,
                          warning=warning)


    def _tally(self, prepared: Prepared | None, ok: bool) -> None:
        if self.tally is not None and prepared is not None:  # unparsed parts name no study
            d = prepared.description
            self.tally.add(d.study_uid, text_value(d.metadata, "00100020") or "", d.sop_class_uid, ok)


def _item(tag_values: dict[str, tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for tag, (vr, value) in sorted(tag_values.items()):
        out[tag] = {"vr": vr, "Value": [value]} if value not in ("", None) else {"vr": vr}
    return out


def response_body(results: list[PartResult], base_url: str, study: str | None) -> dict[str, Any]:
    """The Store Instances Response Module (PS3.18 I.1 Table I.1-1) in DICOM JSON."""
    stored = [r for r in results if r.failure is None]
    failed = [r for r in results if r.failure is not None]
    studies = {r.study_uid for r in stored}
    study_url = study or (studies.pop() if len(studies) == 1 else None)
    # Type 2: empty when the stored instances belong to several studies (or none was stored)
    body = _item({"00081190": ("UR", f"{base_url}/studies/{study_url}" if study_url else "")})
    if failed:
        body["00081198"] = {"vr": "SQ", "Value": [_item({
            "00081150": ("UI", r.sop_class_uid), "00081155": ("UI", r.sop_instance_uid),
            "00081197": ("US", r.failure)}) for r in failed]}
    if stored:
        body["00081199"] = {"vr": "SQ", "Value": [_item({
            "00081150": ("UI", r.sop_class_uid), "00081155": ("UI", r.sop_instance_uid),
            "00081190": ("UR", f"{base_url}/studies/{r.study_uid}/series/{r.series_uid}/instances/"
                               f"{r.sop_instance_uid}"),
            **({"00081196": ("US", r.warning)} if r.warning is not None else {})}) for r in stored]}
    return body


def http_status(results: list[PartResult]) -> int:
    """PS3.18 10.5.3 Table 10.5.3-1 (and 8.5: 503 when only the backends are at fault)."""
    stored = [r for r in results if r.failure is None]
    if not stored:
        if all(r.failure in RETRY_LATER for r in results):
            return 503
        return 409
    if len(stored) == len(results) and all(r.warning is None for r in stored):
        return 200
    return 202


class Spool:
    """This process's spool directory, created on first use (not at import or route setup)."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self._path: Path | None = None

    async def request_directory(self) -> Path:
        if self._path is None:
            self._path = await asyncio.to_thread(process_spool, self.data_dir)
        return Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="stow-", dir=self._path))


SPOOL = web.AppKey("stow_spool", Spool)  # set by archive.query.dicomweb.routes


async def store_instances(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    study = request.match_info.get("study")
    try:
        if study is not None:
            validate_uid(study, "StudyInstanceUID")
    except InvalidUID as exc:
        return web.json_response({"error": str(exc)}, status=400)
    directory = await request.app[SPOOL].request_directory()
    try:
        check_accept(request.headers.get("Accept", ""))
        paths = await spool_parts(request, directory, settings.stow_max_bytes)
        stower = Stower(request.app[INGEST], study, settings.store_timeout, audit.tally_of(request))
        results = [await stower.store(path) for path in paths]
    except RequestRejected as exc:
        log.warning("STOW-RS request rejected", extra={"status": exc.status, "reason": str(exc)})
        metrics.STOW_INSTANCES.labels(f"http_{exc.status}").inc()
        return web.json_response({"error": str(exc)}, status=exc.status)
    finally:
        await asyncio.to_thread(shutil.rmtree, directory, True)
    base = base_url(request)
    status = http_status(results)
    log.info("STOW-RS request", extra={"status": status, "instances": len(results), "study_uid": study or ""})
    body = json.dumps(response_body(results, base, study)).encode()
    return web.Response(body=body, status=status, headers={"Content-Type": DICOM_JSON})
