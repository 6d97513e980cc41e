"""Free-text search index in OpenSearch (the distributed adapter).

One document per instance, ``_id`` = SOP Instance UID. The mapping is fixed
and strict so that thousands of distinct tags (private ones included) never
grow it: the flattened attributes live in one ``flat_object`` field (OpenSearch
>= 2.7), which indexes every leaf as a keyword under its path, so an exact
filter on any attribute is a term query (``fields.PatientID``,
``fields.ContentSequence.TextValue``, ``fields.00091001``) while the mapping
stays at a handful of fields. ``text`` carries every value for full text,
folded (lowercase + ASCII folding) so "muller" finds "Müller".

Writes use ``refresh=wait_for``: a document is searchable when ``upsert``
returns (read-your-writes), at the cost of waiting up to one refresh interval.
User text is only ever given to ``simple_query_string`` with the PREFIX and
WHITESPACE operators enabled, so input cannot inject query syntax.

flat_object fields cannot be aggregated or sorted on, so schema 2 adds a few
dedicated fields for facets and sorting (``study_date``, ``modality``,
``institution``, ``body_part``, folded ``patient_name``), derived from the
flattened attributes when a document is written. ``migrate()`` adds them to an
existing index (put_mapping, idempotent); documents written before schema 2
lack them (free text and filters still find them, facets and sorts do not)
until they are indexed again. ``query()`` translates a SearchRequest with
:mod:`archive.adapters.opensearch_query` into requests sent at once, the page and
the aggregations (total, facets; shared out over two requests), which may each see
a different refresh.

Schema 3 adds ``group_key`` (a document's combination of the study-list attributes) and, beside
the index, one document per study that every write keeps and study lists without free text read
(:mod:`archive.adapters.opensearch_studies`). Schema 4 changes no field: its writers keep the study
documents' common text (:mod:`archive.adapters.opensearch_common`), which free text on a study list
reads first (``_query_studies``): when the studies whose common text matches hold every instance
the text matches (one count of the instance documents, sent at the same time, says so), they are
the answer; else the instance documents answer, as for every other request.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Collection, Sequence
from typing import Any, TypeVar

from opensearchpy import AsyncOpenSearch
from opensearchpy.exceptions import ConnectionError as OSConnectionError
from opensearchpy.exceptions import RequestError, TransportError

from archive.adapters.opensearch_query import (
    ANALYSIS,
    FACET_PROPERTIES,
    GROUP_FIELD,
    bool_query,
    facet_source,
    page_body,
    page_stats_body,
    split_aggregations,
    study_facet_buckets,
    study_instances,
    study_page_body,
    study_totals_body,
    text_clause,
    totals_body,
)
from archive.adapters.opensearch_studies import GROUP_KEY_PROPERTY, StudyDocuments, group_key, ids_in_order
from archive.core.errors import ArchiveError, BackendUnavailable
from archive.core.levels import Level
from archive.core.models import SearchDocument
from archive.core.ports import SearchHit
from archive.core.query import InvalidQuery
from archive.core.retry import Backoff, retrying
from archive.core.search import FacetBucket, SearchRequest, SearchResult, by_study_groups, make_hit, query_terms

log = logging.getLogger(__name__)

T = TypeVar("T")

SCHEMA_VERSION = 4  # 3: group_key; 4: written by a writer that narrows the study documents' common text
# An index another process has just created answers 503 for a moment, even at yellow health
NOT_SEARCHABLE_YET = Backoff(first=0.1, cap=2.0, attempts=15)
STUDIES_AFTER_WRITE = Backoff(first=0.2, cap=2.0, attempts=6)  # about 5 s
MAX_RESULT_WINDOW = 10_000  # OpenSearch's index.max_result_window default
# flat_object indexes "path=value" as one Lucene term (at most 32,766 bytes);
# exact filters on longer values are not useful, full text keeps them whole.
MAX_FIELD_VALUE_CHARS = 1024

MAPPINGS: dict[str, Any] = {
    "dynamic": "strict",
    "_meta": {"schema_version": SCHEMA_VERSION},
    # The object store is the source of truth: the text is indexed, not stored twice.
    "_source": {"excludes": ["text"]},
    "properties": {
        "sop_instance_uid": {"type": "keyword"},
        "study_uid": {"type": "keyword"},
        "series_uid": {"type": "keyword"},
        "indexed_at": {"type": "date", "format": "epoch_millis"},
        "text": {"type": "text", "analyzer": "folded"},
        "fields": {"type": "flat_object"},
        **FACET_PROPERTIES,
        **GROUP_KEY_PROPERTY,
    },
}


class SearchWriteRejected(ArchiveError):
    """OpenSearch refused some documents of a bulk write (a permanent, per-document error)."""

    def __init__(self, failures: dict[str, str]) -> None:
        sample = "; ".join(f"{uid}: {reason}" for uid, reason in list(failures.items())[:3])
        super().__init__(f"search index rejected {len(failures)} document(s): {sample}")
        self.failures = failures


def _transient(status: object) -> bool:
    return isinstance(status, int) and (status == 429 or status >= 500)


def _source(doc: SearchDocument) -> dict[str, Any]:
    return {
        "sop_instance_uid": doc.sop_instance_uid,
        "study_uid": doc.study_uid,
        "series_uid": doc.series_uid,
        "indexed_at": int(doc.indexed_at * 1000),
        "text": doc.text,
        "fields": {k: [v[:MAX_FIELD_VALUE_CHARS] for v in vs] for k, vs in doc.fields.items()},
        **facet_source(doc.fields),
        "group_key": group_key(doc.fields),
        "schema_version": SCHEMA_VERSION,
    }


class OpenSearchIndex:
    name = "opensearch"

    def __init__(
        self,
        url: str,
        index: str = "archive-instances",
        *,
        page_size: int = 1000,
        shards: int = 1,
        refresh_interval: str = "250ms",
        timeout: float = 30.0,
    ) -> None:
        self.url = url
        self.index = index
        self.template = f"{index}-template"
        self.page_size = page_size
        self.shards = shards
        self.refresh_interval = refresh_interval
        self._client = AsyncOpenSearch(
            hosts=[url], timeout=timeout, max_retries=2, retry_on_timeout=True, http_compress=True
        )
        self.studies = StudyDocuments(self._client, self._call, index, refresh_interval=refresh_interval)

    async def _call(self, what: str, call: Awaitable[T]) -> T:
        """Await a client call; unreachable, timed out, overloaded or 5xx -> BackendUnavailable."""
        try:
            return await call
        except OSConnectionError as exc:  # includes ConnectionTimeout
            raise BackendUnavailable("search", f"{what}: {exc}") from exc
        except TransportError as exc:
            if _transient(exc.status_code) or exc.error == "index_closed_exception":  # StudyDocuments._add_analysis
                raise BackendUnavailable("search", f"{what}: {exc}") from exc
            raise

    # Backend

    def _template_body(self) -> dict[str, Any]:
        settings = {
            "index": {
                "number_of_shards": self.shards,
                "auto_expand_replicas": "0-1",  # no replica on one node, one on a cluster
                "refresh_interval": self.refresh_interval,
                "mapping.total_fields.limit": 100,  # the strict mapping needs ~10
                "max_result_window": MAX_RESULT_WINDOW,
            },
            "analysis": ANALYSIS,
        }
        return {
            "index_patterns": [self.index, f"{self.index}-*"],
            "priority": 100,
            "template": {"settings": settings, "mappings": MAPPINGS},
            "_meta": {"schema_version": SCHEMA_VERSION, "owner": "dicom-archive"},
        }

    async def migrate(self) -> None:
        """Put the composable index template and create the index when missing (idempotent)."""
        await self._call(
            "put template",
            self._client.indices.put_index_template(name=self.template, body=self._template_body()),
        )
        if await self._call("index exists", self._client.indices.exists(index=self.index)):
            await self._upgrade()
        else:
            try:
                await self._call("create index", self._client.indices.create(index=self.index))
                log.info("search index %s created", self.index)
            except RequestError as exc:  # another replica created it in the meantime
                if "resource_already_exists_exception" not in str(exc.error):
                    raise
        count: int = await retrying(NOT_SEARCHABLE_YET, BackendUnavailable)(self.count)
        await self.studies.migrate(instances_empty=count == 0)

    async def _older_documents(self, schema: int = SCHEMA_VERSION) -> int:
        """Documents written by an older schema than ``schema`` (this one)."""
        older = {"query": {"bool": {"must_not": {"range": {"schema_version": {"gte": schema}}}}}}
        result = await self._call("count", self._client.count(index=self.index, body=older))
        return int(result["count"])

    async def rebuild_study_documents(self) -> int:
        """Recompute every study document from the instance documents (after a reindex, or a bulk
        load that went around ``upsert`` into studies without a document: it does not narrow a
        study's complete common text); the studies."""
        return await self.studies.rebuild(self._older_documents)

    async def verify_study_documents(self, repair: bool) -> list[str]:
        """The studies whose document is behind their instance documents (a crash, or an outage
        longer than the retry, between an instance write and its study's recomputation);
        ``repair`` recomputes them."""
        behind = await self.studies.behind()
        if repair:
            await self.studies.refresh(behind)
        return behind

    async def _upgrade(self) -> None:
        """Add the fields of this schema to an index made by an older one (idempotent)."""
        body = {"_meta": {"schema_version": SCHEMA_VERSION}, "properties": {**FACET_PROPERTIES, **GROUP_KEY_PROPERTY}}
        await self._call("put mapping", self._client.indices.put_mapping(index=self.index, body=body))
        # An index another process has just created answers searches with 503 for a moment
        # (even once its health is yellow); the count only feeds a log line, so it may wait.
        try:
            older: int = await retrying(NOT_SEARCHABLE_YET, BackendUnavailable)(self._older_documents)
        except BackendUnavailable:
            log.warning("search index %s: documents of older schemas not counted (index not searchable yet)",
                        self.index)
            return
        if older:
            log.warning(
                "search index %s: %d documents predate schema %d; facets and sorting may omit them, and study "
                "lists (those with free text at least) read every instance, until they are indexed again "
                "(dicom-archive reindex)",
                self.index, older, SCHEMA_VERSION,
            )

    async def drop(self) -> None:
        """Delete the index and its template (tests, and rebuilding from scratch)."""
        indices = self._client.indices
        await self.studies.drop()
        await self._call("delete index", indices.delete(index=self.index, ignore_unavailable=True))
        await self._call("delete template", indices.delete_index_template(name=self.template, ignore=[404]))

    async def ping(self) -> None:
        health = await self._call("cluster health", self._client.cluster.health())
        if health.get("status") == "red":
            raise BackendUnavailable("search", "cluster health is red")

    async def close(self) -> None:
        await self._client.close()

    # SearchIndex

    async def upsert(self, documents: Sequence[SearchDocument]) -> None:
        if not documents:
            return
        # the studies these instances are in now: one they leave needs its study document again too
        studies = await self.studies.studies_of([doc.sop_instance_uid for doc in documents])
        studies |= {doc.study_uid for doc in documents}
        await self.studies.narrow(documents)  # before the write: a crash in between leaves common too small
        try:
            await self._upsert(documents)
        finally:  # also after a partial failure: the documents written count
            await self._refresh_studies(studies)

    async def _upsert(self, documents: Sequence[SearchDocument]) -> None:
        body: list[dict[str, Any]] = []
        for doc in documents:
            body.append({"index": {"_index": self.index, "_id": doc.sop_instance_uid}})
            body.append(_source(doc))
        # refresh=wait_for: searchable on return (read-your-writes) without forcing a refresh.
        only = "errors,items.*.error,items.*._id,items.*.status"
        result = await self._call("bulk", self._client.bulk(body=body, refresh="wait_for", filter_path=only))
        if not result.get("errors"):
            log.debug("search upsert: %d documents into %s", len(documents), self.index)
            return
        failures: dict[str, str] = {}
        transient = True
        for item in result.get("items", []):
            outcome = next(iter(item.values()))
            if "error" not in outcome:
                continue
            error = outcome["error"]
            reason = f"{error.get('type')}: {error.get('reason')}" if isinstance(error, dict) else str(error)
            failures[str(outcome.get("_id"))] = reason
            transient = transient and _transient(outcome.get("status"))
        if transient:  # every failure is back-pressure or a node problem: retry the batch later
            first = next(iter(failures.values()))
            raise BackendUnavailable("search", f"bulk: {len(failures)} document(s) failed: {first}")
        raise SearchWriteRejected(failures)

    async def delete(self, sop_instance_uids: Sequence[str], study_uids: Collection[str] = ()) -> None:
        if not sop_instance_uids:
            return
        # the caller's studies too: a delete retried after its study recomputation failed finds the
        # documents gone, and with them the studies they were in
        studies = await self.studies.studies_of(sop_instance_uids) | set(study_uids)
        try:
            await self._delete(sop_instance_uids)
        finally:  # also after a partial failure: the documents deleted count
            await self._refresh_studies(studies)

    async def _refresh_studies(self, studies: set[str]) -> None:
        """Recompute these studies' documents, waiting out a short outage: once the instance write is
        done, a retry of the whole call would no longer know which studies it touched."""
        await retrying(STUDIES_AFTER_WRITE, BackendUnavailable)(self.studies.refresh, studies)

    async def _delete(self, sop_instance_uids: Sequence[str]) -> None:
        body = [{"delete": {"_index": self.index, "_id": uid}} for uid in sop_instance_uids]
        # refresh=wait_for: gone from searches on return, as upserts are searchable on return
        only = "errors,items.*.error,items.*._id,items.*.status"
        result = await self._call("bulk", self._client.bulk(body=body, refresh="wait_for", filter_path=only))
        failures: dict[str, str] = {}
        for item in result.get("items", []):
            outcome = next(iter(item.values()))
            if "error" in outcome and outcome.get("status") != 404:  # 404: not there, nothing to do
                failures[str(outcome.get("_id"))] = str(outcome["error"])
        if failures:
            raise BackendUnavailable("search", f"bulk delete: {len(failures)} document(s) failed")

    async def search(self, text: str, limit: int = 20) -> list[SearchHit]:
        terms = query_terms(text)
        if not terms or limit <= 0:
            return []
        body = {
            "query": text_clause(terms),
            "_source": ["study_uid", "series_uid"],
            "size": min(limit, MAX_RESULT_WINDOW),
            "track_total_hits": False,
        }
        result = await self._call("search", self._client.search(index=self.index, body=body))
        return [
            SearchHit(
                sop_instance_uid=hit["_id"],
                study_uid=hit["_source"]["study_uid"],
                series_uid=hit["_source"]["series_uid"],
                score=float(hit["_score"]),
            )
            for hit in result["hits"]["hits"]
        ]

    async def query(self, request: SearchRequest) -> SearchResult:
        terms = query_terms(request.text)
        if request.text.strip() and not terms:  # text without a searchable term
            return SearchResult(total=0, hits=(), facets={facet: () for facet in request.facets})
        if by_study_groups(request):
            ready = self.studies.text_ready if terms else self.studies.ready
            if await ready(self._older_documents):
                found = await self._query_studies(request, terms)
                if found is not None:
                    return found
        return await self._query_instances(request, terms)

    async def _query_studies(self, request: SearchRequest, terms: Sequence[str]) -> SearchResult | None:
        """A study list from the study documents (opensearch_studies); each page study's matching
        instances, modalities and shown attributes from its instance documents. With free text, the
        studies whose common text matches (each instance of theirs matches); None when they do not
        hold every instance the text matches (a study where only some do, or the two indexes a
        refresh apart during writes): then the instance documents answer."""
        requests = [self._search(study_page_body(request, terms), self.studies.index),
                    self._search(study_totals_body(request, terms), self.studies.index)]
        if terms:  # every instance the text and the filters match: counted, at the same time
            requests.append(self._search({"query": bool_query(request, terms), "size": 0, "track_total_hits": True}))
        page_result, totals, *counted = await asyncio.gather(*requests)
        if counted and int(counted[0]["hits"]["total"]["value"]) != study_instances(totals.get("aggregations", {})):
            return None
        scores = {hit["_source"]["study_uid"]: hit.get("_score") for hit in page_result["hits"]["hits"]}
        keys = list(scores)
        stats: dict[str, Any] = {}
        if keys:
            found = await self._aggregations(page_stats_body(request, terms, keys, best=True))
            stats = {bucket["key"]: bucket for bucket in found["page"]["buckets"]}
        hits = []
        for key in keys:
            bucket = stats.get(key)
            if bucket is None:  # no matching instance: a study document a failed write left behind
                continue
            best = bucket["best"]["hits"]["hits"][0]
            source = best["_source"]
            score = scores[key]
            hits.append(make_hit(request, (source["study_uid"], source["series_uid"], best["_id"]),
                                 source.get("fields") or {}, score=None if score is None else float(score),
                                 instances=int(bucket["doc_count"]),
                                 modalities=[m["key"] for m in bucket["modalities"]["buckets"]]))
        if len(hits) < len(keys):
            stale = [key for key in keys if key not in stats]
            log.warning("study documents without matching instances recomputed", extra={"study_uids": stale})
            try:
                await self.studies.refresh(stale)
            except Exception as exc:  # the answer stands without it (an index refusing writes, say)
                log.warning("study documents not recomputed", extra={"error": type(exc).__name__})
        buckets = study_facet_buckets(request, totals.get("aggregations", {}))
        facets = {facet: tuple(FacetBucket(value, count) for value, count in found) for facet, found in buckets.items()}
        return SearchResult(total=int(totals["hits"]["total"]["value"]), hits=tuple(hits), facets=facets)

    async def _query_instances(self, request: SearchRequest, terms: Sequence[str]) -> SearchResult:
        grouped = request.level is not Level.IMAGE
        group = GROUP_FIELD[request.level]
        totals = totals_body(request, terms)
        # the page (and its groups' counts) and the aggregations at once: latency is the slowest of them
        bodies = split_aggregations(totals) if totals is not None else []
        (page_result, stats), *parts = await asyncio.gather(
            self._page(request, terms), *(self._aggregations(body) for body in bodies)
        )
        aggs = {name: found for part in parts for name, found in part.items()}
        page = page_result["hits"]["hits"]
        total = int(aggs["groups"]["value"] if grouped else page_result["hits"]["total"]["value"])
        hits = []
        for hit in page:
            source = hit["_source"]
            fields = source.get("fields") or {}
            key = hit["_id"] if not grouped else source[group]
            instances, modalities = stats.get(key, (1, list(fields.get("Modality", [])[:1])))
            uids = (source["study_uid"], source["series_uid"], hit["_id"])
            score = hit.get("_score")
            hits.append(make_hit(request, uids, fields, score=None if score is None else float(score),
                                 instances=instances, modalities=modalities))
        facets = {}
        for facet in request.facets:
            buckets = aggs[f"facet_{facet}"]["buckets"]
            facets[facet] = tuple(
                FacetBucket(str(b.get("key_as_string", b["key"])), int(b["groups"]["value"] if grouped else b["doc_count"]))
                for b in buckets
            )
        return SearchResult(total=total, hits=tuple(hits), facets=facets)

    async def _search(self, body: dict[str, Any], index: str | None = None) -> dict[str, Any]:
        """One search request of ``query``."""
        try:
            return dict(await self._call("query", self._client.search(index=index or self.index, body=body)))
        except RequestError as exc:  # e.g. a wildcard too complex to run: the request's fault
            raise InvalidQuery(f"the search index cannot run this query ({exc.error})") from exc

    async def _aggregations(self, body: dict[str, Any]) -> dict[str, Any]:
        return dict((await self._search(body)).get("aggregations", {}))

    async def _page(
        self, request: SearchRequest, terms: Sequence[str]
    ) -> tuple[dict[str, Any], dict[str, tuple[int, list[str]]]]:
        """The page, and for each of its groups the matching instances and their modalities."""
        result = await self._search(page_body(request, terms))
        page = result["hits"]["hits"]
        stats: dict[str, tuple[int, list[str]]] = {}
        if page and request.level is not Level.IMAGE:
            group = GROUP_FIELD[request.level]
            found = await self._aggregations(page_stats_body(request, terms, [hit["_source"][group] for hit in page]))
            for bucket in found["page"]["buckets"]:
                stats[bucket["key"]] = (int(bucket["doc_count"]), [m["key"] for m in bucket["modalities"]["buckets"]])
        return result, stats

    async def count(self) -> int:
        result = await self._call("count", self._client.count(index=self.index))
        return int(result["count"])

    def ids(self) -> AsyncIterator[str]:
        """Every indexed SOP Instance UID, in UID order, one page at a time (search_after)."""
        return ids_in_order(self._call, self._client, self.index, {"match_all": {}}, "sop_instance_uid",
                            self.page_size)
