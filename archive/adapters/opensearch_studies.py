"""Study documents in OpenSearch: one per study, what a study list without free text reads.

The search index holds one document per instance, so the web UI's opening study list (the newest
studies, four facets counting studies) aggregated over every instance: 1.5 s at 10M instances
(docs/benchmarks.md). Beside the instance index, ``<index>.studies`` holds one document per study
with its *combinations*: a nested entry for each distinct combination of the values of
:data:`~archive.core.search.STUDY_GROUP_ATTRIBUTES` among the study's instances, with their
instance count, as the embedded index's ``search_study_groups`` rows. A study-level request without
free text whose filters are all on those attributes (:func:`~archive.core.search.by_study_groups`)
reads them (:mod:`archive.adapters.opensearch_query`, "the study path"): a study matches when one
combination meets every filter, which is when one instance does; a facet counts the studies of the
matching combinations; the study count is the number of matching documents, exact.

Keeping them right, under any number of indexers at once:
- Every instance document carries ``group_key``, its combination as one JSON keyword (doc values
  only, not searchable).
- After each write to the instance index (upsert, delete: both wait for the refresh, so the write
  is visible), the adapter recomputes the document of every study the write touched, the study an
  instance left included, from the instance index: a composite aggregation of (study_uid,
  group_key) gives the combinations and their counts.
- It writes each with optimistic concurrency: ``if_seq_no``/``if_primary_term`` of the study
  document as read (real-time) just before the aggregation, or ``create`` when there was none; a
  study left without instances keeps a document with none (never deleted: an absent document has
  no version to guard a write with), which no list shows. A conflict means that
  another writer wrote the study in between: read and recompute again. So a successful write
  follows a read that came after every earlier successful write, and its aggregation came after
  that read: the last write of a study saw every instance write that had returned before it.
- The study index is refreshed by each write (``refresh=true``: it is small), so a study list is
  up to date when ``upsert`` returns, as the instance documents are.

The path is used once the study index is *complete*: made with an empty instance index (a new
deployment), or rebuilt (:meth:`StudyDocuments.rebuild`, run by ``dicom-archive reindex`` at its
end), and no instance document is older than the schema that carries ``group_key``. Until then
the instance path answers, as before.

Schema 3 adds the *common text* (:mod:`archive.adapters.opensearch_common`): ``common``, lines
every instance of the study has in its text, and ``common_complete``, whether ``common`` covers
every instance of the study (a document made for a study the index had no instance of, or by a
rebuild) or only those written since it began (narrowed on a document that had none: one made
by a release before this schema). Keeping it sound under any number of writers:
- Before an instance write, the writer *narrows* the documents of the batch's studies: the
  stored lines intersected with each instance's, written under the document's
  ``if_seq_no``/``if_primary_term`` (``create`` for a study without a document: every line of the
  batch, complete when the instance index has no instance of the study). So a crash between the
  two leaves ``common`` too small, never too large; nothing is written when nothing narrows.
- Every recomputation of the counts carries ``common`` over from the document it read (under the
  same version). A rebuild makes the common text of a study whose document has no complete one
  from the lines it reads from the instance documents' stored fields (the text is not stored),
  intersected with what writers narrowed since, and marks it complete; a complete one it keeps
  (every write since it was made narrowed it: reading 1M instances' fields takes a minute and a
  half, docs/benchmarks.md).
- A role of the release before writes study documents without ``common``: the study then has
  none until the next rebuild, and its documents of the older instance schema turn the text path
  off (:meth:`StudyDocuments.text_ready`) until they are indexed again.
Free text on a study list takes the study path only when the study index is *text complete*
(``_meta.text_complete``: made empty, or rebuilt when every instance document was of this
release's schema) and no older instance document is left.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import random
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any

from opensearchpy import AsyncOpenSearch
from opensearchpy.exceptions import RequestError

from archive.adapters.opensearch_common import common_lines, common_text, field_lines, text_lines
from archive.adapters.opensearch_query import ANALYSIS, FACET_PROPERTIES, facet_source
from archive.core.errors import ArchiveError, BackendUnavailable
from archive.core.models import SearchDocument
from archive.core.search import STUDY_GROUP_ATTRIBUTES

log = logging.getLogger(__name__)

Call = Callable[[str, Awaitable[Any]], Awaitable[Any]]
# Instance documents of schemas older than this: (schema) -> how many the instance index has
Older = Callable[[int], Awaitable[int]]

STUDY_SCHEMA = 3  # 2: combos.date_key; 3: common, common_complete
GROUP_KEY_SCHEMA = 3  # the instance schema that carries group_key: the study list's path needs it
COMMON_SCHEMA = 4  # the instance schema whose writers narrow common: the free-text path needs it
# group_key: at most this many values of an attribute, each cut as the instance document cuts it,
# and the key kept under Lucene's 32,766 bytes of a doc value: a longer key loses values from the
# end of its longest attribute (valid values of these attributes are at most 64 characters).
KEY_VALUES = 16
KEY_VALUE_CHARS = 1024  # as the instance document's fields (opensearch_search.MAX_FIELD_VALUE_CHARS)
MAX_KEY_BYTES = 30_000
GROUP_KEY_PROPERTY = {"group_key": {"type": "keyword", "index": False, "doc_values": True}}
STUDIES_AT_ONCE = 500  # studies recomputed in one round of requests
COMPOSITE_PAGE = 1000
FIELDS_PAGE = 1000  # instance documents' fields read in one request by a rebuild
ATTEMPTS = 20  # recomputations of a study that keeps changing under other writers before giving up
READY_RECHECK_SECONDS = 30.0
NESTED_LIMIT = 1_000_000  # combinations a study may have (OpenSearch's default: 10,000)

_COMBINATION = {
    **{keyword: {"type": "keyword"} for keyword in STUDY_GROUP_ATTRIBUTES},
    **{name: spec for name, spec in FACET_PROPERTIES.items() if name != "schema_version"},
    "n": {"type": "integer"},
    # The combination's study date as a keyword (a valid yyyyMMdd, as the date field reads it), which
    # study pages sort on: a nested sort on the date field fails in OpenSearch 2.19 for a page ending
    # in a study without a date (it formats the last sort value, Long.MIN) or, with an explicit
    # "missing", throws UnsupportedOperationException on some segments.
    "date_key": {"type": "keyword"},
}
# The facet fields of every combination, on the study document itself (each distinct value once):
# a request without a filter on a combination counts them as plain document counts, which at 150,000
# studies takes a tenth of counting the studies of the nested entries (docs/benchmarks.md).
STUDY_FACET_FIELDS = ("study_date", "modality", "institution", "body_part")
STUDY_MAPPINGS: dict[str, Any] = {
    "dynamic": "strict",
    "properties": {
        "study_uid": {"type": "keyword"},
        "instances": {"type": "integer"},
        "schema_version": {"type": "integer"},
        **{name: FACET_PROPERTIES[name] for name in STUDY_FACET_FIELDS},
        "combos": {"type": "nested", "properties": _COMBINATION},
        "common": {"type": "text", "analyzer": "folded"},  # analysed as the instance documents' text
        "common_complete": {"type": "boolean"},
    },
}
COMMON_FIELDS = ("common", "common_complete")


LISTED = {"range": {"instances": {"gte": 1}}}  # the study documents of studies with instances


class StudyDocumentRejected(ArchiveError):
    """OpenSearch refused a study document (a permanent error: a mapping it breaks, say)."""


def group_key(fields: Mapping[str, Sequence[str]]) -> str:
    """An instance's combination of group attribute values, as one keyword."""
    values = [[str(v)[:KEY_VALUE_CHARS] for v in fields.get(k, ())[:KEY_VALUES]] for k in STUDY_GROUP_ATTRIBUTES]
    while True:
        key = json.dumps(values, ensure_ascii=False, separators=(",", ":"))
        if len(key.encode()) <= MAX_KEY_BYTES:
            return key
        longest = max(values, key=lambda vs: sum(len(v) for v in vs))
        longest.pop()


def combination(key: str | None, count: int) -> dict[str, Any]:
    """A nested entry of a study document from an instance's group_key (None: a document written
    before group_key existed, which counts but matches no filter)."""
    entry: dict[str, Any] = {"n": count}
    if key is None:
        return entry
    fields = {k: vs for k, vs in zip(STUDY_GROUP_ATTRIBUTES, json.loads(key), strict=True) if vs}
    facets = {k: v for k, v in facet_source(fields).items() if v is not None}
    date_key = {"date_key": facets["study_date"]} if _valid_date(facets.get("study_date")) else {}
    return {**fields, **facets, **date_key, **entry}


def _valid_date(value: str | None) -> bool:
    """A date OpenSearch's basic_date reads (an instance's study_date, ignore_malformed otherwise);
    year 0000, which it reads and Python does not, aside."""
    if value is None or len(value) != 8 or not value.isascii() or not value.isdigit():
        return False
    try:
        datetime.datetime.strptime(value, "%Y%m%d")
    except ValueError:
        return False
    return True


def study_source(study: str, entries: list[dict[str, Any]]) -> dict[str, Any]:
    """A study document: its combinations, and each facet value of theirs once."""
    facets = {name: sorted({e[name] for e in entries if e.get(name) is not None}) for name in STUDY_FACET_FIELDS}
    return {"study_uid": study, "instances": sum(e["n"] for e in entries), **facets, "combos": entries,
            "schema_version": STUDY_SCHEMA}


class StudyDocuments:
    """The study index beside an instance index: kept by the adapter's writes, read by study lists."""

    def __init__(self, client: AsyncOpenSearch, call: Call, instances: str, *, refresh_interval: str) -> None:
        self._client = client
        self._call = call
        self.instances = instances
        self.index = f"{instances}.studies"  # outside the instance template's "<index>-*" pattern
        self.refresh_interval = refresh_interval
        self._ready = False
        self._text_ready = False
        self._next_check = 0.0

    async def migrate(self, instances_empty: bool) -> None:
        """Create the study index when missing: complete when the instance index is still empty."""
        if await self._call("study index exists", self._client.indices.exists(index=self.index)):
            await self._upgrade()
            return
        meta = {"schema_version": STUDY_SCHEMA, "complete": instances_empty, "text_complete": instances_empty}
        body = {
            "settings": {"index": {
                "number_of_shards": 1, "auto_expand_replicas": "0-1", "refresh_interval": self.refresh_interval,
                "mapping.nested_objects.limit": NESTED_LIMIT,
            }, "analysis": ANALYSIS},
            "mappings": {**STUDY_MAPPINGS, "_meta": meta},
        }
        try:
            await self._call("create study index", self._client.indices.create(index=self.index, body=body))
        except RequestError as exc:  # another role created it in the meantime
            if "resource_already_exists_exception" not in str(exc.error):
                raise
            return
        if instances_empty:
            log.info("study index %s created", self.index)
        else:
            log.warning("study index %s created beside a filled instance index: study lists read the instance "
                        "documents until `dicom-archive reindex` has rebuilt it", self.index)

    async def _upgrade(self) -> None:
        """A study index of an older schema gets this one's fields and waits for a rebuild (reindex):
        study lists without free text only when it lacks their fields (schema 1), free text always."""
        meta = await self._meta()
        schema = int(meta.get("schema_version", 0))
        if schema >= STUDY_SCHEMA:
            return
        await self._add_analysis()
        complete = bool(meta.get("complete")) and schema >= 2
        body = {"_meta": {"schema_version": STUDY_SCHEMA, "complete": complete, "text_complete": False},
                "properties": {"combos": {"type": "nested", "properties": _COMBINATION},
                               **{name: STUDY_MAPPINGS["properties"][name] for name in COMMON_FIELDS}}}
        await self._call("put study mapping", self._client.indices.put_mapping(index=self.index, body=body))
        log.warning("study index %s is of an older schema: %s until `dicom-archive reindex` has rebuilt it",
                    self.index, "free text on study lists reads the instance documents" if complete
                    else "study lists read the instance documents")

    async def _add_analysis(self) -> None:
        """The free-text analyser on a study index made without it: an analyser can only be added to
        a closed index, so the index is closed for a moment (writes and reads meanwhile fail as with an
        outage: writes are retried, a query answers 503). Several roles may do it at once: one that
        finds the index opened again under it fails its start-up and does it again when restarted."""
        indices = self._client.indices
        settings = await self._call("study index settings", indices.get_settings(index=self.index))
        if "analysis" not in settings[self.index]["settings"]["index"]:
            await self._call("close study index", indices.close(index=self.index))
            try:
                await self._call("put study analysis", indices.put_settings(index=self.index,
                                                                            body={"analysis": ANALYSIS}))
            except RequestError:  # another role opened it again in between: it put the analyser, or will again
                pass
            finally:
                await self._open()
            log.info("study index %s: free-text analyser added", self.index)
        else:  # open it whatever its state: a role that died between the close and the open left it closed
            await self._open()

    async def _open(self) -> None:
        await self._call("open study index", self._client.indices.open(index=self.index))
        await self._call("study index health", self._client.cluster.health(
            index=self.index, wait_for_status="yellow"))  # 30 s at most

    async def _meta(self) -> dict[str, Any]:
        """The study index's ``_meta``: its schema, and whether it is complete."""
        mapping = await self._call("study index mapping", self._client.indices.get_mapping(index=self.index))
        return dict(mapping[self.index]["mappings"].get("_meta", {}))

    async def drop(self) -> None:
        await self._call("delete study index", self._client.indices.delete(index=self.index, ignore_unavailable=True))

    async def ready(self, older_documents: Older) -> bool:
        """Whether study lists without free text may read the study documents (checked again every
        30 s: documents of an older schema written since, by a role of the release before during an
        upgrade, turn it off)."""
        await self._look(older_documents)
        return self._ready

    async def text_ready(self, older_documents: Older) -> bool:
        """Whether study lists with free text may read the study documents' common text (as ready)."""
        await self._look(older_documents)
        return self._text_ready

    async def _look(self, older_documents: Older) -> None:
        now = time.monotonic()
        if now < self._next_check:
            return
        self._next_check = now + READY_RECHECK_SECONDS
        try:
            meta = await self._meta()
            older = await older_documents(COMMON_SCHEMA)  # of the two schemas the later one
            self._text_ready = bool(meta.get("complete")) and bool(meta.get("text_complete")) and older == 0
            self._ready = bool(meta.get("complete")) and (older == 0 or await older_documents(GROUP_KEY_SCHEMA) == 0)
        except Exception as exc:  # the instance path answers meanwhile
            self._ready = self._text_ready = False
            log.warning("study index %s not usable", self.index, extra={"error": type(exc).__name__})

    async def studies_of(self, sop_instance_uids: Sequence[str]) -> set[str]:
        """The studies the instance index has these instances in now (real-time)."""
        if not sop_instance_uids:
            return set()
        found = await self._call("mget", self._client.mget(
            index=self.instances, body={"ids": list(sop_instance_uids)}, _source_includes="study_uid"))
        return {doc["_source"]["study_uid"] for doc in found["docs"] if doc.get("found")}

    async def refresh(self, studies: Iterable[str], with_text: bool = False) -> None:
        """Recompute the documents of these studies from the instance index (after a write to it);
        ``with_text``: their common text too, from the instance documents' fields (a rebuild)."""
        # the fields read once a study, whatever the rounds (a study being written to keeps conflicting,
        # and its fields may take seconds to read): what writers narrowed since is in its document
        texts: dict[str, set[str]] | None = {} if with_text else None
        await self._rounds(sorted(set(studies)), lambda chunk: self._recompute(chunk, texts))

    async def narrow(self, documents: Sequence[SearchDocument]) -> None:
        """Narrow the common text of the documents' studies to what these instances have too: before
        they are written (module docstring)."""
        lines: dict[str, set[str]] = {}
        for doc in documents:
            mine = text_lines(doc.text)
            lines[doc.study_uid] = lines[doc.study_uid] & mine if doc.study_uid in lines else mine
        await self._rounds(sorted(lines), lambda chunk: self._narrow(chunk, lines))

    async def _narrow(self, studies: list[str], lines: Mapping[str, set[str]]) -> list[str]:
        found = await self._call("mget studies", self._client.mget(
            index=self.index, body={"ids": studies}, _source_includes=list(COMMON_FIELDS)))
        stored = {doc["_id"]: doc for doc in found["docs"] if doc.get("found")}
        absent = [study for study in studies if study not in stored]
        occupied = await self._with_instances(absent) if absent else set()
        body: list[dict[str, Any]] = []
        for study in studies:
            doc = stored.get(study)
            if doc is None:  # a new study (complete), or one whose document went missing (not complete)
                body.append({"create": {"_index": self.index, "_id": study}})
                body.append({**study_source(study, []), "common": common_text(lines[study]),
                             "common_complete": study not in occupied})
                continue
            have = doc.get("_source") or {}
            if "common" in have:
                before = common_lines(have["common"])
                if before <= lines[study]:
                    continue  # nothing to narrow: no write
                update: dict[str, Any] = {"common": common_text(before & lines[study])}
            else:  # a document without common (written by a release before): these instances' lines
                update = {"common": common_text(lines[study]), "common_complete": False}
            guard = {"if_seq_no": doc["_seq_no"], "if_primary_term": doc["_primary_term"]}
            body.append({"update": {"_index": self.index, "_id": study, **guard}})
            body.append({"doc": update})
        return await self._bulk(body, refresh="false") if body else []

    async def _with_instances(self, studies: list[str]) -> set[str]:
        """Those of ``studies`` the instance index has an instance of."""
        body = {"size": 0, "query": {"terms": {"study_uid": studies}},
                "aggs": {"s": {"terms": {"field": "study_uid", "size": len(studies)}}}}
        result = await self._call("studies with instances", self._client.search(
            index=self.instances, body=body, request_cache=False))
        return {bucket["key"] for bucket in result["aggregations"]["s"]["buckets"]}

    async def _rounds(self, studies: Sequence[str], round: Callable[[list[str]], Awaitable[list[str]]]) -> None:
        """``round`` over ``studies``, STUDIES_AT_ONCE at a time, again for those another writer changed."""
        for start in range(0, len(studies), STUDIES_AT_ONCE):
            chunk = list(studies[start:start + STUDIES_AT_ONCE])
            for attempt in range(ATTEMPTS):
                chunk = await round(chunk)
                if not chunk:
                    break
                await asyncio.sleep(random.uniform(0, 0.01 * (attempt + 1)))  # let the other writer finish
            else:
                raise BackendUnavailable("search", f"study documents: {len(chunk)} kept changing under other writers")

    async def _recompute(self, studies: list[str], texts: dict[str, set[str]] | None = None) -> list[str]:
        """One round for ``studies``: the ones another writer changed in between, to do again. The
        common text is carried over; with ``texts`` (a rebuild: each study's lines read from its
        instance documents' fields, filled here for those not read yet) a study's that is not complete
        is made from them, narrowed by what writers narrowed since."""
        found = await self._call("mget studies", self._client.mget(
            index=self.index, body={"ids": studies}, _source_includes=list(COMMON_FIELDS)))
        seen = {doc["_id"]: doc for doc in found["docs"] if doc.get("found")}
        combos = await self._combinations(studies)
        # a complete common text is kept by every write since it was made: read the fields of the rest
        unknown = [study for study in studies
                   if not ((seen.get(study) or {}).get("_source") or {}).get("common_complete")]
        if texts is None:
            texts = {}
        else:
            unread = [study for study in unknown if study not in texts]
            texts.update(await self._field_lines(unread) if unread else {})
        body: list[dict[str, Any]] = []
        for study in studies:
            doc = seen.get(study)
            guard = {"if_seq_no": doc["_seq_no"], "if_primary_term": doc["_primary_term"]} if doc else {}
            have = (doc or {}).get("_source") or {}
            common = {name: have[name] for name in COMMON_FIELDS if name in have}
            if study in texts and study in unknown:  # every instance's lines as read, and what writers narrowed since
                lines = texts[study] & common_lines(have["common"]) if "common" in have else texts[study]
                common = {"common": common_text(lines), "common_complete": True}
            # Every recomputation writes, and no study document is ever deleted (a study without
            # instances keeps one with none, which no list shows): "absent" has no version to guard.
            body.append({"index" if doc else "create": {"_index": self.index, "_id": study, **guard}})
            body.append({**study_source(study, combos.get(study, [])), **common})
        return await self._bulk(body, refresh="true")

    async def _bulk(self, body: list[dict[str, Any]], refresh: str) -> list[str]:
        """A bulk write of study documents; the studies another writer wrote since they were read."""
        only = "errors,items.*.error,items.*._id,items.*.status"
        result = await self._call("bulk studies", self._client.bulk(body=body, refresh=refresh, filter_path=only))
        if not result.get("errors"):
            return []
        again: list[str] = []
        for item in result.get("items", []):
            outcome = next(iter(item.values()))
            status = outcome.get("status")
            if "error" not in outcome:
                continue
            error = outcome["error"]
            if status == 409:  # written by another writer since it was read
                again.append(str(outcome["_id"]))
            elif (isinstance(status, int) and (status == 429 or status >= 500)) or (
                    isinstance(error, dict) and error.get("type") == "index_closed_exception"):  # _add_analysis
                raise BackendUnavailable("search", f"bulk studies: {error}")
            else:
                raise StudyDocumentRejected(f"study document {outcome.get('_id')} rejected: {error}")
        return again

    async def _field_lines(self, studies: list[str]) -> dict[str, set[str]]:
        """Each study's lines that every instance document's stored fields give (opensearch_common)."""
        out: dict[str, set[str]] = {}
        after: list[Any] | None = None
        while True:
            body: dict[str, Any] = {"query": {"terms": {"study_uid": studies}}, "sort": [{"sop_instance_uid": "asc"}],
                                    "_source": ["study_uid", "fields"], "size": FIELDS_PAGE, "track_total_hits": False}
            if after is not None:
                body["search_after"] = after
            result = await self._call("instance fields", self._client.search(index=self.instances, body=body))
            hits = result["hits"]["hits"]
            for hit in hits:
                study, mine = hit["_source"]["study_uid"], field_lines(hit["_source"].get("fields") or {})
                out[study] = out[study] & mine if study in out else mine
            if len(hits) < FIELDS_PAGE:
                return out
            after = hits[-1]["sort"]

    async def _combinations(self, studies: list[str]) -> dict[str, list[dict[str, Any]]]:
        out: dict[str, list[dict[str, Any]]] = defaultdict(list)
        composite: dict[str, Any] = {"size": COMPOSITE_PAGE, "sources": [
            {"study": {"terms": {"field": "study_uid"}}},
            {"key": {"terms": {"field": "group_key", "missing_bucket": True}}},
        ]}
        while True:
            body = {"size": 0, "query": {"terms": {"study_uid": studies}}, "aggs": {"c": {"composite": composite}}}
            result = await self._call("study combinations", self._client.search(
                index=self.instances, body=body, request_cache=False))
            found = result["aggregations"]["c"]
            for bucket in found["buckets"]:
                out[bucket["key"]["study"]].append(combination(bucket["key"]["key"], int(bucket["doc_count"])))
            if len(found["buckets"]) < COMPOSITE_PAGE or "after_key" not in found:
                return out
            composite = {**composite, "after": found["after_key"]}

    async def rebuild(self, older_documents: Older) -> int:
        """Recompute every study's document, its common text included (those of studies without
        instances left to none); mark the index complete when every instance document carries its
        group_key, text complete when every one was written by a writer that narrows common (this
        schema). Returns the studies."""
        listed: set[str] = set()
        async for page in self._study_pages():
            await self.refresh(page, with_text=True)
            listed.update(page)
        stale = [study async for study in self._documents() if study not in listed]  # to 0 instances
        await self.refresh(stale)
        text_older = await older_documents(COMMON_SCHEMA)
        older = await older_documents(GROUP_KEY_SCHEMA) if text_older else 0
        if older:
            log.warning("study index %s rebuilt, but %d instance documents predate group_key: study lists read "
                        "the instance documents until they are indexed again", self.index, older)
        elif text_older:
            log.warning("study index %s rebuilt, but %d instance documents predate schema %d: free text on study "
                        "lists reads the instance documents until they are indexed again", self.index, text_older,
                        COMMON_SCHEMA)
        meta = {"schema_version": STUDY_SCHEMA, "complete": not older, "text_complete": not text_older}
        await self._call("put study meta", self._client.indices.put_mapping(index=self.index, body={"_meta": meta}))
        self._next_check = 0.0  # this process need not wait for its next look
        return len(listed)

    async def behind(self) -> list[str]:
        """Studies whose document differs from a recomputation from the instance documents as they
        are (looked at twice: a study written between the two reads of the first look is not one)."""
        candidates: list[str] = []
        listed: set[str] = set()
        async for page in self._study_pages():
            candidates += await self._differing(page)
            listed.update(page)
        candidates += [study async for study in self._documents() if study not in listed]  # listed, no instance
        second = []
        for start in range(0, len(candidates), STUDIES_AT_ONCE):
            second += await self._differing(candidates[start:start + STUDIES_AT_ONCE])
        return second

    async def _differing(self, studies: list[str]) -> list[str]:
        if not studies:
            return []
        combos = await self._combinations(studies)
        found = await self._call("mget studies", self._client.mget(index=self.index, body={"ids": studies}))
        stored = {doc["_id"]: doc["_source"] for doc in found["docs"] if doc.get("found")}
        differing = []
        for study in studies:
            have = stored.get(study)
            counts = {k: v for k, v in have.items() if k not in COMMON_FIELDS} if have is not None else None
            # a study without instances needs no document (none is listed), and one with none is right
            needed = study in combos or (have or {}).get("instances")
            if needed and counts != study_source(study, combos.get(study, [])):
                differing.append(study)
        return differing

    async def _study_pages(self) -> AsyncIterator[list[str]]:
        """Every study the instance index has, a page of STUDIES_AT_ONCE at a time (composite aggregation)."""
        composite: dict[str, Any] = {"size": STUDIES_AT_ONCE, "sources": [{"study": {"terms": {"field": "study_uid"}}}]}
        while True:
            body = {"size": 0, "aggs": {"c": {"composite": composite}}}
            result = await self._call("studies", self._client.search(index=self.instances, body=body,
                                                                     request_cache=False))
            found = result["aggregations"]["c"]
            page = [bucket["key"]["study"] for bucket in found["buckets"]]
            if page:
                yield page
            if len(page) < STUDIES_AT_ONCE or "after_key" not in found:
                return
            composite = {**composite, "after": found["after_key"]}

    def _documents(self) -> AsyncIterator[str]:
        return ids_in_order(self._call, self._client, self.index, LISTED, "study_uid", STUDIES_AT_ONCE)


async def ids_in_order(call: Call, client: AsyncOpenSearch, index: str, query: dict[str, Any], field: str,
                       page_size: int) -> AsyncIterator[str]:
    """The ids of the documents ``query`` matches, in ``field`` order, one page at a time (search_after)."""
    after: list[Any] | None = None
    while True:
        body: dict[str, Any] = {"query": query, "sort": [{field: "asc"}], "_source": False, "size": page_size,
                                "track_total_hits": False}
        if after is not None:
            body["search_after"] = after
        result = await call(f"{index} ids", client.search(index=index, body=body))
        hits = result["hits"]["hits"]
        for hit in hits:
            yield hit["_id"]
        if len(hits) < page_size:
            return
        after = hits[-1]["sort"]
