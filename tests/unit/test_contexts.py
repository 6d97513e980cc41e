"""Which transfer syntax the pynetdicom receiver accepts when a context offers several."""

from __future__ import annotations

import pytest
from pynetdicom.presentation import build_context, negotiate_as_acceptor

from archive.scp.pynetdicom_engine.contexts import storage_contexts

CT = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT, IMPLICIT, BIG = "1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.2"
JPEG_LS_LOSSLESS, JPEG_BASELINE, RLE = "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.5"


@pytest.mark.parametrize(
    "offered, accepted",
    [
        ([EXPLICIT, BIG, IMPLICIT], EXPLICIT),  # DCMTK storescu's default proposal: private tags keep their VR
        ([IMPLICIT, EXPLICIT], EXPLICIT),
        ([IMPLICIT], IMPLICIT),
        ([JPEG_LS_LOSSLESS, EXPLICIT, IMPLICIT], JPEG_LS_LOSSLESS),  # compressed data stays as sent
        ([EXPLICIT, IMPLICIT, JPEG_BASELINE], EXPLICIT),  # never make a sender compress lossily
        ([JPEG_BASELINE], JPEG_BASELINE),  # lossy data as it is
        ([RLE, EXPLICIT], RLE),
    ],
)
def test_receiver_prefers_lossless_then_explicit(offered: list[str], accepted: str) -> None:
    proposed = build_context(CT, offered)
    proposed.context_id = 1
    [result], _ = negotiate_as_acceptor([proposed], storage_contexts())
    assert result.result == 0x00 and result.transfer_syntax == [accepted]
