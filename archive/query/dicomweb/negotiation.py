"""Content negotiation: what a DICOMweb client accepts (PS3.18 8.7.3, 8.7.3.5; RFC 9110 12.5.1).

One Accept parser (:func:`parse_accept`) for every handler, and
:func:`wanted_syntaxes`: the transfer syntaxes a client accepts for the parts of a
multipart/related response (WADO-RS retrieve and bulk data). What can be produced
from a stored instance is decided where it is produced: the frame format in
:mod:`~archive.query.dicomweb.media.frames`, the transfer syntax of an instance in
:mod:`~archive.query.dicomweb.media.transcode`, the rendered media type in
:mod:`~archive.query.dicomweb.pixels`.
"""

from __future__ import annotations

from dataclasses import dataclass

from archive.core.errors import ArchiveError

DEFAULT = "default"  # the media range had no transfer-syntax parameter
ANY = "*"


class NotAcceptable(ArchiveError):
    """None of the accepted media types can be produced for this instance (HTTP 406)."""


@dataclass(frozen=True)
class MediaRange:
    """One entry of an Accept header, with its parameters and quality."""

    media_type: str
    params: dict[str, str]
    quality: float


def parse_accept(header: str) -> list[MediaRange]:
    """Entries of an Accept header, best quality first (RFC 9110 12.5.1)."""
    ranges = []
    for entry in header.split(","):
        fields = [f.strip() for f in entry.split(";")]
        if not fields[0]:
            continue
        params = {}
        for field in fields[1:]:
            key, _, value = field.partition("=")
            params[key.strip().lower()] = value.strip().strip('"')
        try:
            quality = float(params.pop("q", "1"))
        except ValueError:
            quality = 0.0
        if quality > 0:
            ranges.append(MediaRange(fields[0].lower(), params, quality))
    ranges.sort(key=lambda r: -r.quality)  # stable: header order among equals
    return ranges


def wanted_syntaxes(header: str | None, part_type: str) -> list[str]:
    """Acceptable transfer syntaxes for ``part_type`` parts of a multipart/related response.

    Best first; ``DEFAULT`` where a range names none, ``ANY`` for ``*``; empty
    when nothing in the header accepts multipart/related ``part_type``.
    """
    if header is None or not header.strip():
        return [DEFAULT]
    wanted: list[str] = []
    family = part_type.split("/")[0] + "/*"
    for r in parse_accept(header):  # best first, q=0 left out
        if r.media_type in ("*/*", "multipart/*"):
            wanted.append(DEFAULT)
        elif r.media_type == "multipart/related" and r.params.get("type", part_type).lower() in (
            part_type, family, "*/*"
        ):
            wanted.append(r.params.get("transfer-syntax", DEFAULT) or DEFAULT)
    return wanted


def single_part(header: str | None, offered: tuple[str, ...]) -> MediaRange | None:
    """The range of a non-multipart media type in ``offered`` that the client prefers to a
    multipart/related response (PS3.18 8.7.3.5: ``application/zip`` for a study or series,
    ``application/dicom`` too for an instance); None: answer multipart (or 406) as before."""
    for r in parse_accept(header or ""):  # best first
        if r.media_type in offered:
            return r
        if r.media_type in ("*/*", "multipart/*", "multipart/related"):
            return None
    return None
