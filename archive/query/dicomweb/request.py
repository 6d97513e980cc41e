"""What every DICOMweb handler reads from a request: validated path UIDs, the base URL, errors."""

from __future__ import annotations

import json

from aiohttp import web

from archive.core.errors import InvalidUID
from archive.core.levels import Level
from archive.core.query import Matcher, SingleValue
from archive.core.uids import validate_uid
from archive.query.context import public_root

# path parameter -> (attribute, level of a resource that names it last)
PATH_UIDS = (
    ("study", "StudyInstanceUID", Level.STUDY),
    ("series", "SeriesInstanceUID", Level.SERIES),
    ("instance", "SOPInstanceUID", Level.IMAGE),
)


def http_error(kind: type[web.HTTPError], message: str) -> web.HTTPError:
    """An aiohttp HTTP error with the JSON body the error middleware also answers with."""
    return kind(text=json.dumps({"error": message}), content_type="application/json")


def scope(request: web.Request) -> tuple[Level, tuple[Matcher, ...]]:
    """The resource's level and a UID matcher per path UID; 400 for a UID that is not one."""
    level = Level.STUDY
    matchers: list[Matcher] = []
    for name, keyword, named_level in PATH_UIDS:
        if name not in request.match_info:
            continue
        try:  # PS3.5 9.1: nothing else reaches the catalog
            uid = validate_uid(request.match_info[name], keyword)
        except InvalidUID as exc:
            raise http_error(web.HTTPBadRequest, str(exc)) from None
        matchers.append(SingleValue(keyword, uid))
        level = named_level
    return level, tuple(matchers)


def describe_scope(matchers: tuple[Matcher, ...]) -> str:
    return ", ".join(f"{m.keyword} {getattr(m, 'value', '')}" for m in matchers)


def base_url(request: web.Request) -> str:
    """The base of the DICOMweb URLs we hand out (RetrieveURL, BulkDataURI, STOW-RS's answer)."""
    return f"{public_root(request)}/dicom-web"
