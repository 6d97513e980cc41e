"""The OpenAPI 3 description of every HTTP route of the query service (``/api/openapi.json``).

DICOMweb (QIDO-RS, WADO-RS, STOW-RS, :mod:`archive.query.dicomweb`), WADO-URI and the
search API (:mod:`archive.query.search.api`). The search part is built from the same
constants its parser uses (levels, sorts, facets, limits), so the document cannot
drift from it.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from archive.auth.policy import required_role
from archive.core.search import FACETS, MAX_TEXT_CHARS, MAX_VALUE_CHARS, MAX_WINDOW
from archive.core.uids import MAX_UID_LENGTH, UID_PATTERN
from archive.query.changes import DEFAULT_LIMIT as CHANGES_DEFAULT_LIMIT
from archive.query.changes import MAX_LIMIT as CHANGES_MAX_LIMIT
from archive.query.context import public_root
from archive.query.dicomweb.bulkdata import PATH_PATTERN
from archive.query.dicomweb.pixels import VIEWPORT_PATTERN, WINDOW_PATTERN
from archive.query.search.api import DEFAULT_LIMIT, LEVELS, MAX_LIMIT, SORTS

OPENAPI_VERSION = "3.0.3"


def _param(name: str, description: str, schema: dict[str, Any], where: str = "query") -> dict[str, Any]:
    return {"name": name, "in": where, "required": where == "path", "description": description, "schema": schema}


def _search_parameters() -> list[dict[str, Any]]:
    return [
        _param("q", "Free text over every indexed attribute (private tags and report text included). "
               "Whitespace-separated terms, all required; a trailing `*` makes a prefix. "
               "Operators and quotes are plain text.", {"type": "string", "maxLength": MAX_TEXT_CHARS}),
        _param("level", "Group results by study, series or instance.",
               {"type": "string", "enum": list(LEVELS), "default": "study"}),
        _param("limit", f"Results per page (at most {MAX_LIMIT}; larger values are lowered).",
               {"type": "integer", "minimum": 1, "default": DEFAULT_LIMIT}),
        _param("offset", f"Results to skip; offset + limit may not exceed {MAX_WINDOW}.",
               {"type": "integer", "minimum": 0, "default": 0}),
        _param("sort", "`relevance` (default with `q`), `StudyDate`/`PatientName` ascending, "
               "`-StudyDate` (default without `q`)/`-PatientName` descending. Relevance ranks a study by its "
               "best matching instance, or, when every instance of each matching study matches (answered from "
               "the study documents on OpenSearch), by the text all of its instances have.",
               {"type": "string", "enum": list(SORTS)}),
        _param("facets", "Comma-separated facets to compute over the whole match (default all; empty: none). "
               "StudyDate buckets by year, or by month when a closed StudyDate range spans less than 24 months.",
               {"type": "string", "example": ",".join(FACETS)}),
        {
            "name": "filters", "in": "query", "style": "form", "explode": True,
            "description": "Any DICOM attribute as `Keyword=value` (or 8-hex tag, or a dotted sequence path such as "
            "`ContentSequence.TextValue`), matched as C-FIND matches (PS3.4 C.2.2.2): single value, `*`/`?` "
            "wildcards, comma-separated UID lists, `\\`-separated value lists, date ranges "
            "`YYYYMMDD-YYYYMMDD` with open ends. Person names match case- and accent-insensitively. "
            "Every filter and every term must hold on one instance.",
            "schema": {"type": "object", "additionalProperties": {"type": "string", "maxLength": MAX_VALUE_CHARS}},
            "example": {"PatientName": "DOE*", "StudyDate": "20240101-", "Modality": "CT"},
        },
    ]


_SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object", "required": ["error"],
        "properties": {"error": {"type": "string"}, "parameter": {"type": "string", "nullable": True}},
    },
    "Highlight": {
        "type": "object", "required": ["field", "fragments"],
        "properties": {
            "field": {"type": "string", "description": "Attribute keyword, sequence path or private tag"},
            "fragments": {"type": "array", "items": {"type": "string"},
                          "description": "HTML-escaped text, matched terms in <em>"},
        },
    },
    "Hit": {
        "type": "object", "required": ["StudyInstanceUID", "instances", "attributes", "highlights"],
        "properties": {
            "StudyInstanceUID": {"type": "string"},
            "SeriesInstanceUID": {"type": "string", "description": "series and instance level"},
            "SOPInstanceUID": {"type": "string", "description": "instance level"},
            "score": {"type": "number", "nullable": True, "description": "relevance; null without q"},
            "instances": {"type": "integer", "description": "matching instances in the group"},
            "modalities": {"type": "array", "items": {"type": "string"}},
            "attributes": {
                "type": "object",
                "description": "a few display attributes (first value of each); at study level also the "
                               "study's NumberOfStudyRelatedSeries and NumberOfStudyRelatedInstances from the "
                               "catalog (the whole study, not only the matching instances)",
                "properties": {"NumberOfStudyRelatedSeries": {"type": "integer"},
                               "NumberOfStudyRelatedInstances": {"type": "integer"}},
                "additionalProperties": {"type": "string"},
            },
            "highlights": {"type": "array", "items": {"$ref": "#/components/schemas/Highlight"}},
        },
    },
    "Change": {
        "type": "object", "required": ["seq", "action", "study", "series", "instance", "time"],
        "properties": {
            "seq": {"type": "integer"},
            "action": {"type": "string",
                       "description": "created | updated | deleted | stable (a study: series and instance are null; "
                                      "more may come)"},
            "study": {"type": "string"}, "series": {"type": "string", "nullable": True},
            "instance": {"type": "string", "nullable": True},
            "time": {"type": "string", "format": "date-time"},
        },
    },
    "Changes": {
        "type": "object", "required": ["changes"],
        "properties": {"changes": {"type": "array", "items": {"$ref": "#/components/schemas/Change"}}},
    },
    "Bucket": {
        "type": "object", "required": ["value", "count"],
        "properties": {"value": {"type": "string"}, "count": {"type": "integer", "description": "results at the level"}},
    },
    "SearchResult": {
        "type": "object", "required": ["level", "total", "offset", "limit", "sort", "hits", "facets"],
        "properties": {
            "level": {"type": "string"},
            "total": {"type": "integer", "description": "results (studies, series or instances) over the whole match"},
            "offset": {"type": "integer"},
            "limit": {"type": "integer"},
            "sort": {"type": "string"},
            "date_interval": {"type": "string", "enum": ["year", "month"]},
            "hits": {"type": "array", "items": {"$ref": "#/components/schemas/Hit"}},
            "facets": {"type": "object", "additionalProperties": {
                "type": "array", "items": {"$ref": "#/components/schemas/Bucket"}}},
        },
    },
}


def _error(description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


# PS3.5 9.1 (archive.core.uids): anything else is 400 before the catalog is asked
_UID_SCHEMA = {"type": "string", "pattern": UID_PATTERN, "maxLength": MAX_UID_LENGTH}
_PATH_SCHEMAS: dict[str, dict[str, Any]] = {
    "study": _UID_SCHEMA, "series": _UID_SCHEMA, "instance": _UID_SCHEMA,
    "frames": {"type": "string", "pattern": "^[0-9]+(,[0-9]+)*$"},
    "path": {"type": "string", "pattern": f"^{PATH_PATTERN}$"},
}
# DICOM JSON (PS3.18 F.2): an array of datasets, each keyed by 8-hex tags
_DICOM_JSON = {"type": "array", "items": {"type": "object"}}


def _path(name: str, description: str) -> dict[str, Any]:
    return _param(name, description, _PATH_SCHEMAS[name], "path")


def _qido(summary: str, path_params: tuple[str, ...] = ()) -> dict[str, Any]:
    return {"get": {
        "summary": summary,
        "description": "QIDO-RS (PS3.18 10.6): attribute matching, includefield, fuzzymatching, limit, offset.",
        "tags": ["DICOMweb"],
        "parameters": [_path(p, _UIDS[p]) for p in path_params],
        "responses": {"200": {"description": "Matches in the DICOM JSON model",
                              "content": {"application/dicom+json": {"schema": _DICOM_JSON}}},
                      "400": _error("A parameter cannot be understood")},
    }}


_UIDS = {"study": "Study Instance UID", "series": "Series Instance UID", "instance": "SOP Instance UID",
         "frames": "Frame numbers, comma-separated, from 1", "path": "Attribute path: tag, or tag/item/tag... inside"
         " sequence items"}
_MULTIPART_DICOM = 'multipart/related; type="application/dicom"'
_MULTIPART_OCTETS = 'multipart/related; type="application/octet-stream"'
_WINDOW = _param("window", "center,width[,function]: overrides the VOI (PS3.18 8.3.5.1.2)",
                 {"type": "string", "pattern": WINDOW_PATTERN})
_VIEWPORT = _param("viewport", "vw,vh[,sx,sy,sw,sh]: output size and source region (PS3.18 8.3.5.1.3)",
                   {"type": "string", "pattern": VIEWPORT_PATTERN})
_ACCEPT = _param("accept", "The media type wanted, in place of the Accept header (PS3.18 8.3.3.1), e.g. "
                 "application/zip for a plain download link", {"type": "string", "maxLength": 200})
_DICOMDIR = _param("dicomdir", "true: the zip laid out as media, PS3.10 file names and a DICOMDIR for a CD, DVD "
                   "or USB stick (with application/zip only)", {"type": "string", "enum": ["true", "false"]})
_QUALITY = _param("quality", "JPEG quality 1-100", {"type": "integer", "minimum": 1, "maximum": 100})


def _get(summary: str, description: str, media: tuple[str, ...], params: tuple[str, ...],
         extra: tuple[dict[str, Any], ...] = ()) -> dict[str, Any]:
    """A DICOMweb GET with path UIDs, its media types, and the errors every one of them has."""
    return {
        "summary": summary, "description": description, "tags": ["DICOMweb"],
        "parameters": [_path(p, _UIDS[p]) for p in params] + list(extra),
        "responses": {
            "200": {"description": "OK", "content": {m: {"schema": _DICOM_JSON if m == "application/dicom+json" else {
                "type": "string", "format": "binary"}} for m in media}},
            "304": {"description": "Not modified (If-None-Match matched the ETag)"},
            "400": _error("A UID or parameter is malformed"),
            "404": _error("No such study, series, instance, frame or attribute"),
            "406": _error("None of the accepted media types or transfer syntaxes can be produced"),
        },
    }


def _dicomweb_paths() -> dict[str, Any]:
    """WADO-RS (PS3.18 10.4), STOW-RS (10.5) and WADO-URI (chapter 9)."""
    levels = {"study": ("/dicom-web/studies/{study}", ("study",)),
              "series": ("/dicom-web/studies/{study}/series/{series}", ("study", "series")),
              "instance": ("/dicom-web/studies/{study}/series/{series}/instances/{instance}",
                           ("study", "series", "instance"))}
    paths: dict[str, Any] = {}
    for level, (base, params) in levels.items():
        paths[base] = {"get": _get(
            f"Retrieve the {level}", "WADO-RS: the instances as stored, or in the transfer syntax the Accept "
            "header's `transfer-syntax` asks for (default Explicit VR Little Endian, `*` as stored). "
            "`application/zip` (header or `accept` parameter): a download, members as stored, streamed "
            "(`dicomdir=true`: as media, with a DICOMDIR)"
            + ("; `application/dicom`: the instance as a .dcm" if level == "instance" else ""),
            (_MULTIPART_DICOM, "application/zip") + (("application/dicom",) if level == "instance" else ()),
            params, (_ACCEPT, _DICOMDIR))}
        paths[f"{base}/metadata"] = {"get": _get(
            f"Metadata of the {level}", "From the catalog, with BulkDataURIs; ETag and If-None-Match",
            ("application/dicom+json",), params)}
        paths[f"{base}/rendered"] = {"get": _get(
            f"Rendered {level}", "Consumer-ready images (PS3.18 10.4.1.1.3)",
            ("image/jpeg", "image/png") if level == "instance" else ('multipart/related; type="image/jpeg"',),
            params, (_WINDOW, _VIEWPORT, _QUALITY))}
        paths[f"{base}/thumbnail"] = {"get": _get(
            f"Thumbnail of the {level}", "A small rendering of a representative image (PS3.18 10.4.1.1.4)",
            ("image/jpeg", "image/png"), params, (_VIEWPORT, _QUALITY))}
    instance, params = levels["instance"]
    frames = (*params, "frames")
    paths[f"{instance}/frames/{{frames}}"] = {"get": _get(
        "Frames", "Uncompressed (default) or as stored (`transfer-syntax=*` or the stored syntax's media type)",
        (_MULTIPART_OCTETS, 'multipart/related; type="image/jls"', 'multipart/related; type="image/jp2"'), frames)}
    paths[f"{instance}/frames/{{frames}}/rendered"] = {"get": _get(
        "Rendered frame", "One frame as an image", ("image/jpeg", "image/png"), frames, (_WINDOW, _VIEWPORT, _QUALITY))}
    paths[f"{instance}/frames/{{frames}}/thumbnail"] = {"get": _get(
        "Thumbnail of a frame", "A small rendering of one frame", ("image/jpeg", "image/png"), frames, (_VIEWPORT,))}
    paths[f"{instance}/bulkdata/{{path}}"] = {"get": _get(
        "Bulk data", "The value a BulkDataURI names", (_MULTIPART_OCTETS,), (*params, "path"))}
    stow = {
        "summary": "Store instances (STOW-RS)", "tags": ["DICOMweb"],
        "description": "PS3.18 10.5: multipart/related application/dicom parts, through the same ingest path as "
                       "C-STORE. 200 all stored, 202 some failed or warned, 409 none stored.",
        "requestBody": {"required": True, "content": {_MULTIPART_DICOM: {"schema": {"type": "string",
                                                                                       "format": "binary"}}}},
        "responses": {s: {"description": d, "content": {"application/dicom+json": {"schema": {"type": "object"}}}}
                      for s, d in (("200", "Stored"), ("202", "Some stored"), ("409", "None stored"))}
        | {"400": _error("Malformed multipart body"), "413": _error("Larger than ARCHIVE_STOW_MAX_BYTES"),
           "415": _error("Not multipart/related application/dicom")},
    }
    paths["/dicom-web/studies"] = {"post": stow}
    paths[levels["study"][0]]["post"] = {**stow, "parameters": [_path("study", _UIDS["study"])]}
    wado_uri = {"get": {
        "summary": "WADO-URI", "tags": ["DICOMweb"],
        "description": "Legacy single-instance retrieval: requestType=WADO&studyUID=&seriesUID=&objectUID=, "
                       "contentType application/dicom, image/jpeg or image/png, with frameNumber, rows, columns, "
                       "region, windowCenter, windowWidth, imageQuality, transferSyntax",
        "parameters": [{**_param("requestType", "WADO (PS3.18 9.1.2.1.1)", {"type": "string", "enum": ["WADO"]}),
                        "required": True}]
        + [{**_param(n, _UIDS[level], _UID_SCHEMA), "required": True}
           for n, level in (("studyUID", "study"), ("seriesUID", "series"), ("objectUID", "instance"))]
        + [_param("contentType", "application/dicom, image/jpeg (default) or image/png; a comma-separated list",
                  {"type": "string"})],
        "responses": _get("", "", ("application/dicom", "image/jpeg", "image/png"), ())["responses"],
    }}
    paths["/wado"] = paths["/dicom-web/wado"] = wado_uri
    for level, (base, params) in levels.items():
        paths[base]["delete"] = {
            "summary": f"Delete the {level}", "tags": ["DICOMweb"],
            "description": "Not in PS3.18 (as Microsoft's DICOM service offers it): removed from the catalog "
                           "(tombstoned, a `deleted` entry in the change feed), the search index and the object "
                           "store; audited as DICOM Study Deleted. A re-send afterwards is stored again.",
            "parameters": [_path(p, _UIDS[p]) for p in params],
            "responses": {"204": {"description": "Deleted"}, "400": _error("A UID is malformed"),
                          "404": _error("No such instances in the archive"),
                          "503": _error("A backend is unavailable; retry later")},
        }
    return paths


def _changes() -> dict[str, Any]:
    """The change feed (archive.query.changes)."""
    return {"get": {
        "summary": "The change feed", "tags": ["Changes"],
        "description": "Created, updated and deleted instances and stable studies (more actions may come: ignore "
                       "those you do not "
                       "know) after `since`, in increasing `seq`, numbered in commit order without gaps: ask again "
                       "with the last `seq` seen to follow the archive without missing or repeating an entry.",
        "parameters": [
            _param("since", "Entries after this seq (0: from the start)",
                   {"type": "integer", "minimum": 0, "maximum": 10**18 - 1, "default": 0}),
            _param("limit", f"Most entries to answer (at most {CHANGES_MAX_LIMIT})",
                   {"type": "integer", "minimum": 1, "maximum": CHANGES_MAX_LIMIT, "default": CHANGES_DEFAULT_LIMIT}),
        ],
        "responses": {
            "200": {"description": "The entries", "content": {"application/json": {"schema": {
                "$ref": "#/components/schemas/Changes"}}}},
            "400": _error("since or limit is not an integer in range"),
            "503": _error("The catalog is unavailable; retry later"),
        },
    }}


def _forwarding() -> dict[str, Any]:
    """Forwarding (archive.query.forwarding): the ledger and queues, and manual send."""
    forward = {"type": "object", "properties": {
        "destination": {"type": "string"}, "study": {"type": "string"}, "series": {"type": "string"},
        "instance": {"type": "string"}, "rule": {"type": "string", "description": "the rule's name, or `manual`"},
        "outcome": {"type": "string", "enum": ["sent", "failed", "gone"]},
        "detail": {"type": "string", "description": "the peer's status, or why it was not sent"},
        "attempts": {"type": "integer"}, "time": {"type": "string", "format": "date-time"}}}
    queue = {"type": "object", "properties": {
        "destination": {"type": "string"}, "ready": {"type": "integer", "nullable": True},
        "dead": {"type": "integer", "nullable": True}}}
    return {
        "/api/forwarding": {"get": {
            "summary": "What was forwarded where", "tags": ["Forwarding"],
            "description": "The forwarding ledger, newest first (the last outcome per destination and instance), "
                           "and each destination's queue: jobs waiting and dead-lettered.",
            "parameters": [
                _param("study", "Only this study", _UID_SCHEMA),
                _param("limit", "Most ledger rows", {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}),
            ],
            "responses": {
                "200": {"description": "Destinations and ledger", "content": {"application/json": {"schema": {
                    "type": "object", "required": ["destinations", "forwards"],
                    "properties": {"destinations": {"type": "array", "items": queue},
                                   "forwards": {"type": "array", "items": forward}}}}}},
                "400": _error("study or limit is malformed"),
                "503": _error("The catalog is unavailable; retry later"),
            },
        }},
        "/api/studies/{study}/send": {"post": {
            "summary": "Send a study or a series to a configured peer", "tags": ["Forwarding"],
            "description": "Queues a forward job per stored instance (rule `manual`); the forwarder sends them "
                           "and `GET /api/forwarding?study=` shows the outcome.",
            "parameters": [_param("study", "Study Instance UID", _UID_SCHEMA, "path")],
            "requestBody": {"required": True, "content": {"application/json": {"schema": {
                "type": "object", "required": ["destination"], "additionalProperties": False,
                "properties": {"destination": {"type": "string", "description": "AE title of a configured peer"},
                               "series": {**_UID_SCHEMA, "description": "only this series"}}}}}},
            "responses": {
                "202": {"description": "Queued", "content": {"application/json": {"schema": {
                    "type": "object", "properties": {"destination": {"type": "string"},
                                                     "queued": {"type": "integer"}}}}}},
                "400": _error("Not a UID, not JSON, or not a configured peer"),
                "404": _error("No such study or series"),
                "413": _error("The body is too large"),
                "503": _error("The catalog or the queue is unavailable; retry later"),
            },
        }},
    }


_SECURITY_SCHEMES = {
    "bearer": {
        "type": "http", "scheme": "bearer", "bearerFormat": "JWT or API key",
        "description": "`Authorization: Bearer <token>` (RFC 6750): an OpenID Connect access token of "
                       "ARCHIVE_OIDC_ISSUER naming ARCHIVE_OIDC_AUDIENCE, its roles in ARCHIVE_OIDC_ROLES_CLAIM, or an "
                       "API key (`dka_...`, `dicom-archive api-key create`). Roles are cumulative: admin > writer > "
                       "reader. Without ARCHIVE_OIDC_ISSUER, clients on the server's own machine need no token.",
    },
}


def _secured(paths: dict[str, Any]) -> dict[str, Any]:
    """Each operation's security from the route table (archive.auth.policy), so they cannot differ."""
    for path, operations in paths.items():
        for method, operation in operations.items():
            if "security" in operation:  # one operation under two paths (WADO-URI)
                continue
            role = required_role(method.upper(), path)
            if role is None:
                operation["security"] = []
                continue
            operation["security"] = [{"bearer": []}]
            operation["x-required-role"] = role.value
            operation["description"] = (operation.get("description", "") + f" Needs the `{role.value}` role.").strip()
            operation["responses"] = {
                **operation["responses"],
                "401": _error("No token, or a token that is not valid (WWW-Authenticate: Bearer)"),
                "403": _error(f"The token's holder lacks the {role.value} role (or, without sign-in configured, "
                              "the client is not on this machine)"),
            }
    return paths


def spec(server_url: str = "/") -> dict[str, Any]:
    return {
        "openapi": OPENAPI_VERSION,
        "info": {"title": "dicom-archive query service", "version": "1",
                 "description": "Free-text and faceted search over every attribute, and DICOMweb: "
                                "QIDO-RS, WADO-RS, STOW-RS and WADO-URI."},
        "servers": [{"url": server_url}],
        "security": [{"bearer": []}],
        "paths": _secured({
            "/api/search": {"get": {
                "summary": "Free-text and faceted search",
                "tags": ["Search"],
                "parameters": _search_parameters(),
                "responses": {
                    "200": {"description": "One page of results, the total and the facets",
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/SearchResult"}}}},
                    "400": _error("A parameter is malformed; `parameter` names it"),
                    "503": _error("The search index is unavailable; retry later"),
                },
            }},
            "/api/openapi.json": {"get": {
                "summary": "This document", "tags": ["Search"],
                "responses": {"200": {"description": "OpenAPI 3 document",
                                      "content": {"application/json": {"schema": {"type": "object"}}}}},
            }},
            "/api/changes": _changes(),
            **_forwarding(),
            **_dicomweb_paths(),
            "/dicom-web/studies": _qido("Search for studies") | _dicomweb_paths()["/dicom-web/studies"],
            "/dicom-web/series": _qido("Search for series"),
            "/dicom-web/instances": _qido("Search for instances"),
            "/dicom-web/studies/{study}/series": _qido("Series of a study", ("study",)),
            "/dicom-web/studies/{study}/instances": _qido("Instances of a study", ("study",)),
            "/dicom-web/studies/{study}/series/{series}/instances": _qido("Instances of a series",
                                                                         ("study", "series")),
        }),
        "components": {"schemas": _SCHEMAS, "securitySchemes": _SECURITY_SCHEMES},
    }


async def openapi_json(request: web.Request) -> web.Response:
    return web.json_response(spec(public_root(request)))
