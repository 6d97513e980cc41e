"""Hostile instances the attack suite stores or sends: decompression bombs, markup in names."""

from __future__ import annotations

import io
import struct

from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import UID, JPEGBaseline8Bit, RLELossless, SecondaryCaptureImageStorage

from tests.factories import make_ct, new_uid

BOMB_SIDE = 40_000  # declared Rows and Columns: 40000 x 40000 x 16 bits = 3.2 GB decoded, from ~100 bytes
BIG_STUDY = 100  # instances
XSS_NAME = "<script>alert(1)</script>^Evil"
XSS_TEXT = "<img src=x onerror=alert(1)> </em><b>bold</b> nodule"


def _pixels(ds: Dataset, rows: int, columns: int, bits: int, samples: int = 1) -> None:
    ds.Rows, ds.Columns = rows, columns
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits, bits, bits - 1
    ds.SamplesPerPixel, ds.PixelRepresentation = samples, 0
    ds.PhotometricInterpretation = "MONOCHROME2" if samples == 1 else "YBR_FULL_422"
    if samples == 3:
        ds.PlanarConfiguration = 0


def _syntax(ds: Dataset, syntax: UID) -> Dataset:
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    return ds


def rle_bomb(study: str) -> Dataset:
    """RLE Lossless (PS3.5 G): two segments of one replicate run each, declaring 40000 x 40000 x 16 bits."""
    ds = make_ct(study_uid=study, size=2)
    _pixels(ds, BOMB_SIDE, BOMB_SIDE, 16)
    segment = b"\x81\x00"  # PS3.5 G.3.1: -127 -> the next byte 128 times
    header = struct.pack("<16L", 2, 64, 64 + len(segment), *([0] * 13))
    ds.PixelData = encapsulate([header + segment + segment])
    ds["PixelData"].VR = "OB"
    return _syntax(ds, RLELossless)


def jpeg_bomb(study: str) -> Dataset:
    """JPEG Baseline whose SOF0 (ITU T.81 B.2.2) declares 60000 x 60000 for an 8 x 8 scan."""
    out = io.BytesIO()
    Image.new("L", (8, 8), 128).save(out, format="JPEG")
    data = bytearray(out.getvalue())
    sof = data.index(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, 60_000, 60_000)  # marker, length, precision, then Y and X
    ds = make_ct(study_uid=study, size=2)
    ds.SOPClassUID = SecondaryCaptureImageStorage
    _pixels(ds, 60_000, 60_000, 8)
    ds.PixelData = encapsulate([bytes(data)])
    ds["PixelData"].VR = "OB"
    return _syntax(ds, JPEGBaseline8Bit)


def baseline_datasets() -> dict[str, Dataset]:
    """What the suite's archive holds before any case runs (name -> dataset)."""
    study = new_uid()
    out = {f"ct{n}": make_ct(study_uid=study, instance_number=n, size=8, seed=n) for n in range(3)}
    bombs = new_uid()
    out["rle_bomb"] = rle_bomb(bombs)
    out["jpeg_bomb"] = jpeg_bomb(bombs)
    big, big_series = new_uid(), new_uid()  # a study for retrieve storms
    out.update({f"big{n}": make_ct(study_uid=big, series_uid=big_series, instance_number=n, size=4, seed=n)
                for n in range(BIG_STUDY)})
    xss = make_ct(size=8, patient_name=XSS_NAME, patient_id="<b>ID</b>")
    xss.StudyDescription = XSS_TEXT
    xss.InstitutionName = "<svg onload=alert(1)>"
    out["xss"] = xss
    return out
