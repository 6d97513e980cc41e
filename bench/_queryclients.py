"""The queries of the query benchmark and the clients that time them.

Each query kind draws its values from the data loaded so far (``Samples``), with a
fixed seed, so every size and backend sees the same kind of question:

- ``patient_id``: studies of one patient (PatientID exact);
- ``study_uid``: one study (StudyInstanceUID exact);
- ``patient_name``: studies of patients whose name starts with a surname (``SMITH*``);
- ``study_date``: studies of one week (StudyDate range);
- ``modality_date``: CT or MR studies of one month (ModalitiesInStudy + StudyDate range);
- ``text_rare``: free text matching one study (its accession number);
- ``text_common``: free text matching thousands of instances (``<body part> <modality>``);
- ``ui_list``: the web UI's study list as it opens (no text, newest first, 25 studies, every facet);
- ``ui_list_name``: the same list after typing a surname into its patient-name field.

Clients: QIDO-RS over one keep-alive HTTP connection (request sent -> body read), C-FIND
over one open association (request sent -> final response; pynetdicom's requestor, and a lean
socket requestor whose own time is next to nothing), the JSON search API over
HTTP, or, while that does not exist, ``SearchIndex.search`` called in this process.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import random
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from _querydata import DAYS, PROFILES, Samples, date_text

PAGE = 100  # QIDO limit: what a viewer's study list asks for
KINDS = ("echo", "patient_id", "study_uid", "patient_name", "study_date", "modality_date", "text_rare", "text_common",
         "ui_list", "ui_list_name")
TEXT_KINDS = ("text_rare", "text_common")
UI_KINDS = ("ui_list", "ui_list_name")  # GET /api/search as ui/src/query.ts apiParams() sends it
UI_PAGE = 25  # ui/src/query.ts PAGE_SIZE
UI_FACETS = "Modality,StudyDate,InstitutionName,BodyPartExamined"  # ui/src/query.ts FACETS
LABELS = {
    "echo": "C-ECHO (DIMSE round trip, no query)",
    "patient_id": "PatientID exact",
    "study_uid": "StudyInstanceUID exact",
    "patient_name": "PatientName wildcard (SURNAME*)",
    "study_date": "StudyDate range (1 week)",
    "modality_date": "ModalitiesInStudy + StudyDate (1 month)",
    "text_rare": "free text, 1 study (accession)",
    "text_common": "free text, common (\"chest ct\")",
    "ui_list": "web UI study list as it opens (newest first)",
    "ui_list_name": "web UI study list, patient name typed (SURNAME*)",
}
EXACT = ("patient_id", "study_uid")


@dataclass(frozen=True)
class Question:
    kind: str
    keys: dict[str, str]  # DICOM keyword -> value (QIDO parameter / C-FIND identifier)
    text: str = ""  # free text


def questions(kind: str, samples: Samples, count: int, seed: int) -> list[Question]:
    rng = random.Random(f"{kind}-{seed}")
    out = []
    for _ in range(count):
        if kind == "echo":
            out.append(Question(kind, {}))
        elif kind == "patient_id":
            out.append(Question(kind, {"PatientID": rng.choice(samples.patient_ids)}))
        elif kind == "study_uid":
            out.append(Question(kind, {"StudyInstanceUID": rng.choice(samples.study_uids)}))
        elif kind == "patient_name":
            out.append(Question(kind, {"PatientName": rng.choice(samples.surnames) + "*"}))
        elif kind == "study_date":
            day = rng.randrange(DAYS - 7)
            out.append(Question(kind, {"StudyDate": f"{date_text(day)}-{date_text(day + 6)}"}))
        elif kind == "modality_date":
            day = rng.randrange(DAYS - 31)
            out.append(Question(kind, {"ModalitiesInStudy": rng.choice(("CT", "MR")),
                                       "StudyDate": f"{date_text(day)}-{date_text(day + 30)}"}))
        elif kind == "text_rare":
            out.append(Question(kind, {}, rng.choice(samples.accessions)))
        elif kind == "text_common":
            profile = rng.choice([p for p in PROFILES if p.modality in ("CT", "MR", "CR")])
            out.append(Question(kind, {}, f"{rng.choice(profile.body_parts).lower()} {profile.modality.lower()}"))
        elif kind == "ui_list":
            out.append(Question(kind, {}))
        elif kind == "ui_list_name":
            out.append(Question(kind, {"PatientName": rng.choice(samples.surnames) + "*"}))
        else:
            raise ValueError(kind)
    return out


def timed(run: Callable[[Question], int], items: list[Question], warmup: int) -> dict[str, Any]:
    """Run every question (the first ``warmup`` untimed); latencies in ms, rows returned."""
    for q in items[:warmup]:
        run(q)
    latencies, rows = [], []
    for q in items[warmup:]:
        started = time.perf_counter()
        rows.append(run(q))
        latencies.append((time.perf_counter() - started) * 1000)
    return {"ms": latencies, "rows": rows}


class Http:
    """One keep-alive connection to the query service; ``get`` returns the decoded JSON."""

    def __init__(self, port: int, timeout: float = 60.0) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)

    def get(self, path: str, params: dict[str, Any]) -> Any:
        self.conn.request("GET", f"{path}?{urlencode(params)}")
        response = self.conn.getresponse()
        body = response.read()
        if response.status not in (200, 204):
            raise RuntimeError(f"GET {path} {params}: {response.status} {body[:300]!r}")
        return json.loads(body) if body else []

    def close(self) -> None:
        self.conn.close()


def qido(client: Http) -> Callable[[Question], int]:
    def run(q: Question) -> int:
        return len(client.get("/dicom-web/studies", {**q.keys, "limit": PAGE}))

    return run


def search_api(client: Http, facets: bool = True) -> Callable[[Question], int]:
    """Studies matching the text, 20 per page; with every facet (the default) or none."""
    def run(q: Question) -> int:
        params = {"q": q.text, "limit": 20, **({} if facets else {"facets": ""})}
        return len(client.get("/api/search", params)["hits"])

    return run


def ui_list(client: Http) -> Callable[[Question], int]:
    """The first page of the web UI's study list, with the parameters the page sends."""
    def run(q: Question) -> int:
        params = {**q.keys, "offset": 0, "limit": UI_PAGE, "facets": UI_FACETS}
        return len(client.get("/api/search", params)["hits"])

    return run


# ---- C-FIND (PS3.4 C.4.1, Study Root, STUDY level) -----------------------------------------

class LeanFind:
    """C-FIND over a plain socket, one association kept open: a requestor that costs next to
    nothing, so that its time is the archive's (pynetdicom's requestor adds a few ms a response:
    its reactor and DUL threads poll). Study Root, Explicit VR Little Endian (PS3.7 9.1.2, PS3.8 9.3),
    from the tests' raw requestor (tests/e2e/raw_dimse.py)."""

    MODEL = "1.2.840.10008.5.1.4.1.2.2.1"
    VERIFICATION = "1.2.840.10008.1.1"
    SYNTAX = "1.2.840.10008.1.2.1"

    def __init__(self, port: int, aet: str = "ARCHIVE", timeout: float = 60.0) -> None:
        from tests.e2e.raw_dimse import A_ASSOCIATE_AC, associate_rq, recv_pdu

        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.sendall(associate_rq([(self.MODEL, self.SYNTAX), (self.VERIFICATION, self.SYNTAX)],
                                       calling="BENCHLEAN", called=aet))
        kind = recv_pdu(self.sock)[0]
        if kind != A_ASSOCIATE_AC:
            raise RuntimeError(f"lean C-FIND association to 127.0.0.1:{port} ({aet}) was not accepted (PDU {kind})")
        self.message_id = 0

    def _exchange(self, context_id: int, field: int, identifier: bytes | None) -> int:
        """Send one request; read responses up to the final one; the number of identifiers received."""
        from tests.e2e.raw_dimse import (COMMAND_LAST, DATA_LAST, P_DATA_TF, command, p_data, pdvs, recv_pdu,
                                         response_fields)

        self.message_id = self.message_id % 65535 + 1
        sop_class = self.MODEL if field == 0x0020 else self.VERIFICATION
        out = p_data(context_id, COMMAND_LAST, command(field, self.message_id, sop_class=sop_class,
                                                       has_dataset=identifier is not None))
        if identifier is not None:
            out += p_data(context_id, DATA_LAST, identifier)
        self.sock.sendall(out)
        identifiers, cmd, status = 0, b"", 0
        while True:
            kind, body = recv_pdu(self.sock)
            if kind != P_DATA_TF:
                raise RuntimeError(f"lean C-FIND: PDU {kind} instead of a response")
            for _, control, value in pdvs(body):
                if control & 0x01:  # a command fragment
                    cmd += value
                    if control & 0x02:
                        status, follows = response_fields(cmd)
                        cmd = b""
                        if not follows and status not in (0xFF00, 0xFF01):
                            if status != 0x0000:
                                raise RuntimeError(f"C-FIND failed with status 0x{status:04X}")
                            return identifiers
                elif control & 0x02:  # the last fragment of an identifier
                    identifiers += 1
                    if status not in (0xFF00, 0xFF01):
                        return identifiers

    def __call__(self, q: Question) -> int:
        from tests.factories import dataset_bytes

        return self._exchange(1, 0x0020, dataset_bytes(study_identifier(q)))

    def echo(self, q: Question) -> int:
        return self._exchange(3, 0x0030, None)

    def close(self) -> None:
        from tests.e2e.raw_dimse import A_RELEASE_RQ, recv_pdu

        with contextlib.suppress(OSError):
            self.sock.sendall(struct.pack(">BxI", A_RELEASE_RQ, 4) + bytes(4))
            recv_pdu(self.sock)
        self.sock.close()


FINDSCU_REPEAT = 100


def findscu_mean_ms(port: int, q: Question, aet: str = "ARCHIVE", timeout: float = 120.0) -> float | None:
    """Mean ms of one C-FIND sent by DCMTK findscu, ``--repeat`` times on one association.

    Runs once with 1 and once with 1 + FINDSCU_REPEAT repeats; the difference excludes
    process start and association set-up. None when findscu is not installed.
    """
    import os
    import shutil
    import subprocess

    tool = shutil.which("findscu")
    if tool is None:
        return None
    keys = ["-k", "QueryRetrieveLevel=STUDY", "-k", "StudyInstanceUID", "-k", "PatientID"]
    keys += [a for k in STUDY_RETURN_KEYS if k not in q.keys for a in ("-k", k)]
    keys += [a for k, v in q.keys.items() for a in ("-k", f"{k}={v}")]
    elapsed = []
    for repeat in (1, 1 + FINDSCU_REPEAT):
        started = time.perf_counter()
        done = subprocess.run([tool, "-S", "--repeat", str(repeat), "-aet", "BENCHFIND", "-aec", aet, *keys,
                               "127.0.0.1", str(port)], env={**os.environ, "TCP_NODELAY": "1"},
                              capture_output=True, timeout=timeout)
        elapsed.append(time.perf_counter() - started)
        if done.returncode != 0:
            raise RuntimeError(f"findscu exit {done.returncode}: {done.stderr[-300:]!r}")
    return (elapsed[1] - elapsed[0]) / FINDSCU_REPEAT * 1000

STUDY_RETURN_KEYS = ("StudyDate", "StudyTime", "AccessionNumber", "PatientName", "PatientBirthDate",
                     "PatientSex", "StudyID", "StudyDescription", "ModalitiesInStudy",
                     "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances")


def study_identifier(q: Question) -> Any:
    """The Study Root identifier both C-FIND clients send: the question's keys and the study list's."""
    from pydicom.dataset import Dataset

    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = ""
    ds.PatientID = ""
    for keyword in STUDY_RETURN_KEYS:
        setattr(ds, keyword, "")
    for keyword, value in q.keys.items():
        setattr(ds, keyword, value)
    return ds


class CFind:
    """One association to the query role's C-FIND SCP, kept open for every query."""

    def __init__(self, port: int, aet: str = "ARCHIVE", timeout: float = 60.0) -> None:
        from pynetdicom import AE
        from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind  # type: ignore[attr-defined]

        from archive.compat.pynetdicom import fix_reactor_pause

        fix_reactor_pause()  # plain pynetdicom loses a quick answer now and then (archive/compat)

        self.model = StudyRootQueryRetrieveInformationModelFind
        ae = AE(ae_title="BENCHFIND")
        ae.add_requested_context(self.model)
        ae.add_requested_context("1.2.840.10008.1.1")  # Verification: C-ECHO times the DIMSE floor
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
        self.assoc = ae.associate("127.0.0.1", port, ae_title=aet)
        if not self.assoc.is_established:
            raise RuntimeError(f"C-FIND association to 127.0.0.1:{port} ({aet}) was not accepted")
        # pynetdicom writes the command and the identifier as two PDUs: with Nagle on, the
        # second waits for the SCP's delayed ACK (~40 ms). DCMTK clients set TCP_NODELAY too.
        sock = self.assoc.dul.socket.socket if self.assoc.dul.socket else None
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def __call__(self, q: Question) -> int:
        matches = 0
        for status, identifier in self.assoc.send_c_find(study_identifier(q), self.model):
            if not status:
                raise RuntimeError("C-FIND: no response (association aborted or timed out)")
            code = int(status.Status)
            if code in (0xFF00, 0xFF01):  # PS3.4 C.4.1.1.4: pending, a match follows
                matches += identifier is not None
            elif code != 0x0000:
                raise RuntimeError(f"C-FIND failed with status 0x{code:04X}")
        return matches

    def echo(self, q: Question) -> int:
        status = self.assoc.send_c_echo()
        if not status or int(status.Status) != 0:
            raise RuntimeError(f"C-ECHO failed: {status}")
        return 0

    def close(self) -> None:
        self.assoc.release()
