"""The table of DICOMweb requests sent to our archive and to Orthanc, and every deliberate difference.

Each :class:`Row` is one request, its path written with the corpus items of
:mod:`tests.e2e.dicomweb_data` (``{s1ct0.path}`` is that instance's WADO-RS path,
``{s1ct0.study}`` its study). Rows whose answers differ name a :class:`Difference`;
attribute sets that differ between the two servers are allowed only by an
:class:`AttributeRule`. Both lists are the data behind docs/dicomweb-conformance.md
(a test checks that the document names each of them).

``kind`` says how the two answers are compared (see test_dicomweb_conformance.py):
qido (matched entities, attribute sets, values), metadata, dicom (parts parsed and
compared with the files sent), frames (bytes), image (decoded pixels), bulkdata,
uri-dicom (one Part 10 body), status (status code only).
"""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.datadict import tag_for_keyword

from archive.core.levels import Level
from archive.query.dicomweb.qido import REQUIRED

OCTETS_ANY = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
DICOM_ANY = 'multipart/related; type="application/dicom"; transfer-syntax=*'


@dataclass(frozen=True)
class Difference:
    ours: str
    orthanc: str
    clause: str
    who: str = "deliberate"  # "deliberate": our choice; "orthanc": Orthanc departs from the standard; "gap": not built yet


@dataclass(frozen=True)
class Row:
    id: str
    path: str
    kind: str = "qido"
    accept: str | None = None
    differs: str | None = None  # a key of DIFFERENCES
    expect: int | None = None  # when differs: how many results (qido) or which status (others) we answer


DIFFERENCES: dict[str, Difference] = {
    "unknown-attribute": Difference(
        "400 naming the attribute", "200, the parameter ignored",
        "PS3.18 8.3.4.1 (a query key is an attribute of the matching level, or a keyword/tag), 8.5 (400 for an invalid query)"),
    "fuzzy-person-name": Difference(
        "fuzzymatching=true matches names case- and accent-insensitively, on any name component",
        "fuzzymatching ignored (literal matching, no Warning header)", "PS3.18 8.3.4.2; PS3.4 C.2.2.2.1.2"),
    "non-ascii-case": Difference(
        "PN matching folds case of every letter (Müller matches müller*)", "case folding of ASCII letters only: no match",
        "PS3.4 C.2.2.2.1.1 (PN matching may be case-insensitive; then for every character)", "orthanc"),
    "non-ascii-wildcard": Difference(
        "'?' matches one character (ü)", "'?' matches one byte of the UTF-8 text: no match",
        "PS3.4 C.2.2.2.4 (? matches any single character)", "orthanc"),
    "non-latin-name": Difference(
        "a Greek name matches its own prefix", "no match for non-Latin names",
        "PS3.4 C.2.2.2.4 (wildcard matching of any character)", "orthanc"),
    "rendered-default-window": Difference(
        "without a window parameter, the instance's VOI (WindowCenter/WindowWidth after the Modality LUT)",
        "the full range of stored values", "PS3.18 8.3.5.1.4 (the VOI LUT of the instance is applied by default)"),
    "case-sensitive-lo": Difference(
        "LO values match case-sensitively: t1* does not match 'T1 SAG'", "matches case-insensitively",
        "PS3.4 C.2.2.2.4 (only PN matching may be case-insensitive)", "orthanc"),
    "truncated-warning": Difference(
        "Warning: 299 ... additional results when a page is cut by limit", "no Warning header",
        "PS3.18 8.3.4.4"),
    "frame-out-of-range": Difference(
        "404: the frame does not exist", "400", "PS3.18 10.4.1.1.2 (frame list of the target instance), 8.5 (404 Not Found)"),
    "frames-no-pixels": Difference(
        "404: an instance without Pixel Data has no frames", "500", "PS3.18 8.5", "orthanc"),
    "rendered-no-pixels": Difference(
        "406: nothing renderable in the accepted media types", "400", "PS3.18 8.5, 8.7.4"),
    "rendered-media-type": Difference(
        "406 for a media type we cannot render", "400", "PS3.18 8.7.4, 8.5 (406 Not Acceptable)"),
    "metadata-media-type": Difference(
        "406 for application/xml (metadata is served as DICOM JSON)", "400", "PS3.18 8.7.3, 8.5 (406 Not Acceptable)"),
    "transfer-syntax-unavailable": Difference(
        "406: no accepted transfer syntax can be produced losslessly", "500",
        "PS3.18 8.7.3.5 (406 when no acceptable transfer syntax)", "orthanc"),
    "malformed-uid": Difference(
        "400: a path UID that is not a UID", "404", "PS3.18 8.5 (400 Bad Request); PS3.5 9.1"),
    "thumbnail": Difference(
        "thumbnails of studies, series and instances", "not implemented (404)", "PS3.18 10.4.1.1.4", "orthanc"),
    "rendered-series": Difference(
        "multipart/related, one rendered image per instance of the series", "one image",
        "PS3.18 10.4.1.1.3 (rendered study and series resources), 8.7.4"),
    "wado-uri-window": Difference(
        "windowCenter/windowWidth applied", "ignored (the instance's own window is applied)",
        "PS3.18 9.1.2.1.13", "orthanc"),
    "wado-uri-default": Difference(
        "image/jpeg by default, Content-Type image/jpeg", "JPEG bytes labelled Content-Type image/png",
        "PS3.18 9.1.2.1.6 (contentType defaults to image/jpeg); RFC 9110 8.3", "orthanc"),
}


def _tags(level: Level) -> frozenset[str]:
    return frozenset(f"{tag_for_keyword(k):08X}" for k in REQUIRED[level] if tag_for_keyword(k) is not None)


@dataclass(frozen=True)
class AttributeRule:
    """Attributes only one server returns in a QIDO-RS result, and when."""

    id: str
    side: str  # "ours" or "orthanc": who returns them
    tags: frozenset[str] | None  # None: any attribute
    when: str  # study-level | study-attributes | instance-level | study-or-series-level | scoped-study | scoped-series | include-all
    why: str
    clause: str


ATTRIBUTE_RULES: tuple[AttributeRule, ...] = (
    AttributeRule("instance-availability", "ours", frozenset({"00080056"}), "study-attributes",
                  "InstanceAvailability is required at study level; Orthanc omits it", "PS3.18 Table 10.6.3-3"),
    AttributeRule("instance-availability-instance", "ours", frozenset({"00080056"}), "instance-level",
                  "InstanceAvailability is required at instance level; Orthanc omits it", "PS3.18 Table 10.6.3-5"),
    AttributeRule("study-description", "ours", frozenset({"00081030"}), "study-attributes",
                  "StudyDescription is returned with the study attributes; Orthanc returns it only when included",
                  "PS3.18 Table 10.6.3-3"),
    AttributeRule("modality-at-study-level", "orthanc", frozenset({"00080060"}), "study-level",
                  "includefield=Modality at study level: a study has no single Modality (ModalitiesInStudy is"
                  " returned); Orthanc returns the Modality of one of its series", "PS3.18 8.3.4.3, Table 10.6.3-3"),
    AttributeRule("include-all", "ours", None, "include-all",
                  "includefield=all returns every attribute we index at that level; Orthanc only its main tags",
                  "PS3.18 8.3.4.3 (all: every available attribute)"),
    AttributeRule("character-set", "orthanc", frozenset({"00080005"}), "study-or-series-level",
                  "Orthanc reports its own DefaultEncoding; DICOM JSON is always UTF-8, so we return SpecificCharacterSet"
                  " only at instance level, as stored", "PS3.18 F.2 (DICOM JSON is UTF-8)"),
    AttributeRule("scoped-study", "orthanc", _tags(Level.STUDY) | {"00080061"}, "scoped-study",
                  "a query scoped to one study does not repeat that study's attributes in each result; Orthanc does",
                  "PS3.18 10.6.3.3 (study attributes only when the query is not scoped to a study)"),
    AttributeRule("scoped-series", "orthanc", _tags(Level.SERIES), "scoped-series",
                  "a query scoped to one series does not repeat that series' attributes; Orthanc does",
                  "PS3.18 10.6.3.3 (series attributes only when the query is not scoped to a series)"),
)
# Values that legitimately differ: RetrieveURL names each server (compared after the host),
# SpecificCharacterSet (see the rule above), BulkDataURI values (compared by fetching them).
VALUE_EXEMPT = frozenset({"00080005"})

_S = "/dicom-web/studies"
_W = "window=1000,4000,linear"  # spreads the corpus' random pixels over the output range
ROWS: tuple[Row, ...] = (
    # QIDO-RS: every level and path form
    Row("studies", f"{_S}"),
    Row("series", "/dicom-web/series"),
    Row("instances", "/dicom-web/instances"),
    Row("study-series", f"{_S}/{{s1ct0.study}}/series"),
    Row("study-instances", f"{_S}/{{s1ct0.study}}/instances"),
    Row("series-instances", f"{_S}/{{s1ct0.study}}/series/{{s1ct0.series}}/instances"),
    Row("unknown-study-series", f"{_S}/1.2.3.4/series"),
    # matching: single value, wildcard, range, UID list, tags for keywords
    Row("patient-id", f"{_S}?PatientID=DW-2"),
    Row("patient-id-tag", f"{_S}?00100020=DW-2"),
    Row("no-match", f"{_S}?PatientID=NOPE"),
    Row("name-prefix", f"{_S}?PatientName=M*"),
    Row("name-prefix-lower", f"{_S}?PatientName=m*"),
    Row("name-non-ascii-lower", f"{_S}?PatientName=müller*", differs="non-ascii-case", expect=1),
    Row("name-non-ascii-qmark", f"{_S}?PatientName=*ller^J?rgen", differs="non-ascii-wildcard", expect=1),
    Row("name-greek", f"{_S}?PatientName=Ωμέγα*", differs="non-latin-name", expect=1),
    Row("accession-qmark", f"{_S}?AccessionNumber=DWACC00?"),
    Row("date-range", f"{_S}?StudyDate=20230101-20231231"),
    Row("date-open-start", f"{_S}?StudyDate=-20230105"),
    Row("date-open-end", f"{_S}?StudyDate=20240101-"),
    Row("birth-date-range", f"{_S}?PatientBirthDate=19700101-19800101"),
    Row("time-range", f"{_S}?StudyTime=090000-100000"),
    Row("uid-list", f"{_S}?StudyInstanceUID={{s1ct0.study}},{{s3ct0.study}}"),
    Row("modalities-in-study", f"{_S}?ModalitiesInStudy=MR"),
    Row("modalities-in-study-sr", f"{_S}?ModalitiesInStudy=SR"),
    Row("series-modality", "/dicom-web/series?Modality=CT"),
    Row("series-description-case", "/dicom-web/series?SeriesDescription=t1*", differs="case-sensitive-lo", expect=0),
    Row("instances-sop-class", "/dicom-web/instances?SOPClassUID=1.2.840.10008.5.1.4.1.1.88.11"),
    Row("instances-number", "/dicom-web/instances?InstanceNumber=2"),
    Row("study-instances-modality", f"{_S}/{{s1ct0.study}}/instances?Modality=MR"),
    # fuzzymatching
    Row("fuzzy-false", f"{_S}?PatientName=Gómez&fuzzymatching=false"),
    Row("fuzzy-accent", f"{_S}?PatientName=gomez&fuzzymatching=true", differs="fuzzy-person-name", expect=1),
    Row("fuzzy-given-name", f"{_S}?PatientName=maria&fuzzymatching=true", differs="fuzzy-person-name", expect=1),
    # includefield
    Row("include-tags", f"{_S}?includefield=00081030,00080060"),
    Row("include-keywords", f"{_S}?includefield=PatientName&includefield=StudyDescription"),
    Row("include-all-studies", f"{_S}?includefield=all"),
    Row("include-all-series", f"{_S}/{{s1ct0.study}}/series?includefield=all"),
    Row("include-all-instances", f"{_S}/{{s1ct0.study}}/series/{{s1ct0.series}}/instances?includefield=all"),
    Row("include-series-tags", "/dicom-web/series?Modality=CT&includefield=00081030,00080060"),
    # limit/offset (pages compared by size; which entities is up to each server)
    Row("limit", f"{_S}?limit=2", differs="truncated-warning"),
    Row("limit-offset", f"{_S}?limit=2&offset=2"),
    Row("offset-past-end", f"{_S}?offset=5"),
    # errors
    Row("unknown-attribute", f"{_S}?NotAKeyword=1", "status", differs="unknown-attribute", expect=400),
    Row("bad-limit", f"{_S}?limit=x", "status"),
    Row("bad-fuzzy", f"{_S}?fuzzymatching=maybe", "status"),
    # WADO-RS metadata
    Row("metadata-instance", "{s1ct0.path}/metadata", "metadata"),
    Row("metadata-series", f"{_S}/{{s1mr0.study}}/series/{{s1mr0.series}}/metadata", "metadata"),
    Row("metadata-study", f"{_S}/{{s2sr.study}}/metadata", "metadata"),
    Row("metadata-study-all", f"{_S}/{{s1ct0.study}}/metadata", "metadata"),
    Row("metadata-unknown-study", f"{_S}/1.2.3/metadata", "status"),
    Row("metadata-unknown-series", f"{_S}/{{s1ct0.study}}/series/1.2.3/metadata", "status"),
    Row("metadata-xml", "{s1ct0.path}/metadata", "status", "application/xml", "metadata-media-type", 406),
    Row("metadata-malformed-uid", f"{_S}/{{s1ct0.study}}/series/{{s1ct0.series}}/instances/1.02/metadata", "status",
        differs="malformed-uid", expect=400),
    # WADO-RS retrieve
    Row("retrieve-study", f"{_S}/{{s1ct0.study}}", "dicom"),
    Row("retrieve-series", f"{_S}/{{s1ct0.study}}/series/{{s1ct0.series}}", "dicom"),
    Row("retrieve-instance", "{s1ct0.path}", "dicom"),
    Row("retrieve-instance-any", "{s2mf.path}", "dicom", DICOM_ANY),
    Row("retrieve-instance-implicit", "{s1ct0.path}", "dicom",
        'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2'),
    Row("retrieve-sr", "{s2sr.path}", "dicom"),
    Row("retrieve-jpeg-baseline", "{s1ct0.path}", "status",
        'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.50',
        "transfer-syntax-unavailable", 406),
    Row("retrieve-unknown-instance", f"{_S}/{{s1ct0.study}}/series/{{s1ct0.series}}/instances/1.2.3", "status"),
    Row("retrieve-malformed-uid", f"{_S}/{{s1ct0.study}}/series/{{s1ct0.series}}/instances/1.02", "status",
        differs="malformed-uid", expect=400),
    # frames
    Row("frame", "{s1ct0.path}/frames/1", "frames"),
    Row("frame-any", "{s1ct0.path}/frames/1", "frames", OCTETS_ANY),
    Row("frames-list", "{s2mf.path}/frames/1,3", "frames"),
    Row("frames-all", "{s2mf.path}/frames/1,2,3,4", "frames", OCTETS_ANY),
    Row("frame-out-of-range", "{s2mf.path}/frames/5", "status", differs="frame-out-of-range", expect=404),
    Row("frames-no-pixels", "{s2sr.path}/frames/1", "status", differs="frames-no-pixels", expect=404),
    # bulkdata (the BulkDataURI of Pixel Data in each server's metadata)
    Row("bulkdata-pixel-data", "{s1ct0.path}", "bulkdata"),
    Row("bulkdata-multiframe", "{s2mf.path}", "bulkdata"),
    # rendered
    Row("rendered-default-window", "{s1ct0.path}/rendered", "image", "image/png", "rendered-default-window"),
    Row("rendered-png", f"{{s1ct0.path}}/rendered?{_W}", "image", "image/png"),
    Row("rendered-jpeg", f"{{s1ct0.path}}/rendered?{_W}", "image", "image/jpeg"),
    Row("rendered-window-sigmoid", "{s1ct0.path}/rendered?window=500,3000,sigmoid", "image", "image/png"),
    Row("rendered-viewport", f"{{s1ct0.path}}/rendered?viewport=32,32&{_W}", "image-size", "image/png"),
    Row("rendered-quality", f"{{s1mr0.path}}/rendered?quality=50&{_W}", "image", "image/jpeg"),
    Row("rendered-frame", "{s2mf.path}/frames/2/rendered?window=2048,4096,linear", "image", "image/png"),
    Row("rendered-gif", "{s1ct0.path}/rendered", "status", "image/gif", "rendered-media-type", 406),
    Row("rendered-no-pixels", "{s2sr.path}/rendered", "status", differs="rendered-no-pixels", expect=406),
    Row("rendered-series", f"{_S}/{{s1ct0.study}}/series/{{s1ct0.series}}/rendered", "rendered-group",
        differs="rendered-series", expect=4),
    # thumbnails
    Row("thumbnail-instance", "{s1ct0.path}/thumbnail", "status", differs="thumbnail", expect=200),
    Row("thumbnail-series", f"{_S}/{{s1ct0.study}}/series/{{s1ct0.series}}/thumbnail", "status",
        differs="thumbnail", expect=200),
    Row("thumbnail-study", f"{_S}/{{s1ct0.study}}/thumbnail", "status", differs="thumbnail", expect=200),
    # WADO-URI
    Row("wado-uri-dicom", "/wado?requestType=WADO&studyUID={s1ct0.study}&seriesUID={s1ct0.series}"
        "&objectUID={s1ct0.sop}&contentType=application/dicom", "uri-dicom"),
    Row("wado-uri-multiframe", "/wado?requestType=WADO&studyUID={s2mf.study}&seriesUID={s2mf.series}"
        "&objectUID={s2mf.sop}&contentType=application/dicom", "uri-dicom"),
    Row("wado-uri-png", "/wado?requestType=WADO&studyUID={s1ct0.study}&seriesUID={s1ct0.series}"
        "&objectUID={s1ct0.sop}&contentType=image/png", "image"),
    Row("wado-uri-window", "/wado?requestType=WADO&studyUID={s1ct0.study}&seriesUID={s1ct0.series}"
        "&objectUID={s1ct0.sop}&contentType=image/png&windowCenter=1000&windowWidth=4000", "image", None,
        "wado-uri-window"),
    Row("wado-uri-default", "/wado?requestType=WADO&studyUID={s1ct0.study}&seriesUID={s1ct0.series}"
        "&objectUID={s1ct0.sop}", "uri-default", differs="wado-uri-default"),
    Row("wado-uri-unknown", "/wado?requestType=WADO&studyUID={s1ct0.study}&seriesUID={s1ct0.series}"
        "&objectUID=1.2.3&contentType=application/dicom", "status"),
)
