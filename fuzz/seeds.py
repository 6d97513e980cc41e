"""Write the seed inputs of every target into ``fuzz/corpus/<target>/``: ``python -m fuzz.seeds``.

Real inputs, small: PDUs encoded by pynetdicom (A-ASSOCIATE-RQ with the sub-items it
negotiates, C-ECHO and C-STORE messages, release, abort), Part 10 headers of pydicom's
test files (cut after the start of the pixel data), multipart/related bodies as a STOW-RS
client sends them, and query strings as viewers and the README send them. Idempotent:
each seed's file name is its content's SHA-1, as libFuzzer names corpus files.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from typing import Any
from pathlib import Path

from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import pdu_primitives
from pynetdicom.dimse_messages import C_ECHO_RQ, C_STORE_RQ
from pynetdicom.dimse_primitives import C_ECHO, C_STORE
from pynetdicom.pdu import A_ABORT_RQ, A_ASSOCIATE_RQ, A_RELEASE_RQ, P_DATA_TF
from pynetdicom.presentation import build_context

HERE = Path(__file__).resolve().parent
PART10_FILES = ("CT_small.dcm", "MR_small.dcm", "MR_small_bigendian.dcm", "MR_small_implicit.dcm",
                "MR_small_RLE.dcm", "image_dfl.dcm", "test-SR.dcm", "rtplan.dcm", "nested_priv_SQ.dcm",
                "UN_sequence.dcm", "no_meta.dcm", "ExplVR_BigEndNoMeta.dcm", "meta_missing_tsyntax.dcm",
                "reportsi.dcm", "empty_charset_LEI.dcm", "SC_rgb_rle_2frame.dcm", "waveform_ecg.dcm")
HEADER_BYTES = 6144  # a Part 10 seed is cut here (the pixel data is never parsed)


def _dataset(uid: str = "1.2.826.0.1.3680043.10.1437.77.9") -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = uid
    ds.StudyInstanceUID = uid + ".1"
    ds.SeriesInstanceUID = uid + ".2"
    ds.PatientName = "Doe^Jane"
    ds.PatientID = "PAT-1"
    ds.Rows = ds.Columns = 2
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.SamplesPerPixel, ds.PixelRepresentation = 1, 0
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = bytes(8)
    return ds


def part10(ds: Dataset, syntax: str = ExplicitVRLittleEndian) -> bytes:
    ds = ds.copy()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = UID(syntax)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True, implicit_vr=syntax == ImplicitVRLittleEndian, little_endian=True)
    return out.getvalue()


def _associate_rq(*, identity: bool = False) -> bytes:
    primitive = pdu_primitives.A_ASSOCIATE()
    primitive.application_context_name = "1.2.840.10008.3.1.1.1"
    primitive.calling_ae_title, primitive.called_ae_title = "STORESCU", "ARCHIVE"
    contexts = [build_context("1.2.840.10008.1.1"), build_context(CTImageStorage, [ExplicitVRLittleEndian,
                                                                                  ImplicitVRLittleEndian])]
    for n, cx in enumerate(contexts):
        cx.context_id = 2 * n + 1
    primitive.presentation_context_definition_list = contexts
    max_length = pdu_primitives.MaximumLengthNotification()
    max_length.maximum_length_received = 16382
    uid = pdu_primitives.ImplementationClassUIDNotification()
    uid.implementation_class_uid = "1.2.826.0.1.3680043.9.3811.2.0.0"
    version = pdu_primitives.ImplementationVersionNameNotification()
    version.implementation_version_name = "PYNETDICOM_200"
    user: list[Any] = [max_length, uid, version]
    if identity:
        role = pdu_primitives.SCP_SCU_RoleSelectionNegotiation()
        role.sop_class_uid, role.scu_role, role.scp_role = CTImageStorage, True, True
        ident = pdu_primitives.UserIdentityNegotiation()
        ident.user_identity_type, ident.primary_field = 2, b"user"
        ident.secondary_field = b"secret"
        asyncs = pdu_primitives.AsynchronousOperationsWindowNegotiation()
        user += [role, ident, asyncs]
    primitive.user_information = user
    rq = A_ASSOCIATE_RQ()
    rq.from_primitive(primitive)
    return bytes(rq.encode())


def _p_data(message: object, context_id: int, max_pdu: int = 16382) -> bytes:
    out = b""
    for primitive in message.encode_msg(context_id, max_pdu):  # type: ignore[attr-defined]
        pdu = P_DATA_TF()
        pdu.from_primitive(primitive)
        out += bytes(pdu.encode())
    return out


def _echo() -> bytes:
    primitive = C_ECHO()
    primitive.MessageID = 1
    primitive.AffectedSOPClassUID = "1.2.840.10008.1.1"
    message = C_ECHO_RQ()
    message.primitive_to_message(primitive)
    return _p_data(message, 1)


def _store(syntax: str = ImplicitVRLittleEndian, max_pdu: int = 16382) -> bytes:
    ds = _dataset()
    primitive = C_STORE()
    primitive.MessageID = 2
    primitive.AffectedSOPClassUID = ds.SOPClassUID
    primitive.AffectedSOPInstanceUID = ds.SOPInstanceUID
    primitive.Priority = 0
    out = io.BytesIO()
    ds.save_as(out, implicit_vr=syntax == ImplicitVRLittleEndian, little_endian=True)
    primitive.DataSet = io.BytesIO(out.getvalue())
    message = C_STORE_RQ()
    message.primitive_to_message(primitive)
    return _p_data(message, 3, max_pdu)


def _release() -> bytes:
    rq = A_RELEASE_RQ()
    rq.from_primitive(pdu_primitives.A_RELEASE())
    return bytes(rq.encode())


def _abort() -> bytes:
    primitive = pdu_primitives.A_ABORT()
    primitive.abort_source = 0
    rq = A_ABORT_RQ()
    rq.from_primitive(primitive)
    return bytes(rq.encode())


def pdu_seeds() -> Iterator[bytes]:
    rq = _associate_rq()
    yield rq
    yield _associate_rq(identity=True)
    yield rq + _echo() + _release()
    yield rq + _store() + _release()
    yield rq + _store(max_pdu=64) + _echo() + _release()  # many fragments
    yield rq + _store()[:-20]  # peer gone mid-dataset
    yield rq + _echo() + _abort()
    yield _echo()  # P-DATA-TF before association
    yield rq[:6] + b"\x00" * 4  # truncated request


def _header(name: str) -> bytes:
    path = get_testdata_file(name)
    assert path is not None, name
    data = Path(str(path)).read_bytes()
    return data[:HEADER_BYTES]


def describe_seeds() -> Iterator[bytes]:
    for name in PART10_FILES:
        yield _header(name)
    yield part10(_dataset())
    yield part10(_dataset(), ImplicitVRLittleEndian)
    ds = dcmread(str(get_testdata_file("CT_small.dcm")), stop_before_pixels=True)
    del ds.file_meta
    out = io.BytesIO()  # a C-STORE dataset (no File Meta), Implicit VR LE
    ds.save_as(out, implicit_vr=True, little_endian=True)
    yield out.getvalue()


def multipart(parts: list[bytes], boundary: str = "b0undary", part_type: bool = True) -> bytes:
    head = f'multipart/related; type="application/dicom"; boundary={boundary}\n'.encode()
    body = b""
    for part in parts:
        body += f"--{boundary}\r\n".encode()
        if part_type:
            body += b"Content-Type: application/dicom\r\n"
        body += b"\r\n" + part + b"\r\n"
    return head + body + f"--{boundary}--\r\n".encode()


def stow_seeds() -> Iterator[bytes]:
    one, two = part10(_dataset()), part10(_dataset("1.2.826.0.1.3680043.10.1437.77.10"), ImplicitVRLittleEndian)
    yield multipart([one])
    yield multipart([one, two], boundary="3f2a9c0e-5b1d-4c7e-9a2b-1d0e8f6a7b5c")
    yield multipart([one], part_type=False)
    yield multipart([_header("CT_small.dcm")[:2048]])
    yield multipart([b"not dicom"])
    yield b'multipart/related; type="application/dicom"; boundary="quoted b"\n--quoted b\r\n\r\n' + one + b"\r\n--quoted b--\r\n"
    yield b"application/dicom\n" + one


QIDO_SEEDS = (
    "", "PatientID=PAT-1", "PatientName=DOE*&StudyDate=20240101-", "PatientName=Doe^Jane&fuzzymatching=true",
    "StudyDate=20240101-20241231&ModalitiesInStudy=CT", "StudyInstanceUID=1.2.3,1.2.4",
    "includefield=all&limit=10&offset=0", "includefield=00081030,StudyDescription&00100020=PAT-1",
    "Modality=MR&SeriesNumber=1", "SOPClassUID=1.2.840.10008.5.1.4.1.1.2&limit=1",
    "AccessionNumber=ACC?1&StudyTime=1015-", "PatientName=M%C3%BCller*", "StudyDescription=*nodule*",
)
SEARCH_SEEDS = (
    "q=nodule&facets=Modality", "q=nodule&Modality=SR&StudyDate=20230101-&facets=Modality,StudyDate",
    "PatientName=DOE*&level=series&sort=-StudyDate&limit=50", "q=script&level=instance",
    "q=nod*&sort=relevance&offset=20", "ContentSequence.TextValue=*nodule*", "00100010=Doe*&facets=",
    "q=%22quoted%22+OR+1%3D1", "StudyDate=20240101-20240301&facets=StudyDate", "q=M%C3%BCller",
    "InstitutionName=General*&BodyPartExamined=CHEST&sort=PatientName",
)


def write(target: str, seeds: Iterator[bytes] | tuple[bytes, ...]) -> int:
    directory = HERE / "corpus" / target
    directory.mkdir(parents=True, exist_ok=True)
    count = 0
    for seed in seeds:
        (directory / hashlib.sha1(seed).hexdigest()).write_bytes(seed)
        count += 1
    return count


def main() -> None:
    counts = {
        "pdu": write("pdu", pdu_seeds()),
        "describe": write("describe", describe_seeds()),
        "stow": write("stow", stow_seeds()),
        "qido": write("qido", tuple(bytes([n % 6]) + s.encode() for n, s in enumerate(QIDO_SEEDS))),
        "search": write("search", tuple(s.encode() for s in SEARCH_SEEDS)),
    }
    print(counts)


if __name__ == "__main__":
    main()
