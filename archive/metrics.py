"""Prometheus metrics of every role. Labels never carry patient data.

When one command runs several processes (`serve`, `scp --workers N`), they share
``PROMETHEUS_MULTIPROC_DIR`` and the parent's /metrics aggregates them all.
"""

from __future__ import annotations

import asyncio
import math
import shutil
from pathlib import Path

from prometheus_client import Counter, Gauge, Histogram

from archive import __version__
from archive.core.ports import MessageQueue

ASSOCIATIONS = Counter(
    "archive_dicom_associations_total", "Association requests by outcome", ["outcome"]
)
ACTIVE_ASSOCIATIONS = Gauge(
    "archive_dicom_active_associations", "Associations in progress", multiprocess_mode="livesum"
)
STORES = Counter("archive_cstore_total", "C-STORE requests by result", ["result"])
STORE_SECONDS = Histogram(
    "archive_cstore_seconds",
    "Time from a C-STORE request being received to its response",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
INGEST_BYTES = Counter("archive_ingest_bytes_total", "Bytes of instances stored")
DUPLICATES = Counter(
    "archive_duplicate_instances_total",
    "Instances received again under an archived SOP Instance UID",
    ["outcome"],  # identical | kept_first | replaced | rejected
)
DELETED = Counter("archive_deleted_instances_total", "Instances deleted (HTTP DELETE, dicom-archive delete)")
INDEXED = Counter("archive_indexed_instances_total", "Instances written to catalog and search index")
INDEX_FAILURES = Counter(
    "archive_index_failures_total", "Index attempts that failed", ["kind"]  # transient | poison
)
INDEX_BATCH_SECONDS = Histogram(
    "archive_index_batch_seconds", "Time to write one batch to catalog and search index"
)
TIME_TO_SEARCHABLE = Histogram(
    "archive_time_to_searchable_seconds",
    "Time from the receiver's Success to the instance being in catalog and search index",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300),
)
QUEUE_READY = Gauge(
    "archive_queue_ready_messages",
    "Index messages waiting (RabbitMQ: ready, plus those this process holds; SQLite: waiting or in flight), "
    "read from the queue when /metrics is scraped; NaN while the queue does not answer",
    multiprocess_mode="mostrecent",
)
QUEUE_DEAD = Gauge(
    "archive_queue_dead_messages",
    "Index messages in the dead-letter queue, read from the queue when /metrics is scraped; NaN while it does not answer",
    multiprocess_mode="mostrecent",
)
QUERIES = Counter("archive_queries_total", "Queries answered", ["interface", "level", "status"])
QUERY_SECONDS = Histogram("archive_query_seconds", "Query latency", ["interface"])
OBJECT_CACHE = Counter("archive_object_cache_total", "Objects the query service read from its local cache", ["result"])
STOW_INSTANCES = Counter("archive_stow_instances_total", "STOW-RS instances (or rejected requests) by result", ["result"])
AUDIT_RECORDS = Counter("archive_audit_records_total", "Audit records written to the local audit file", ["event"])
AUDIT_DROPPED = Counter(
    "archive_audit_records_dropped_total",
    "Audit records the syslog collector did not get (each is in the local audit file)",
    ["reason"],  # buffer_full | collector_down | too_large | shutdown
)
AUDIT_QUEUED = Gauge(
    "archive_audit_records_queued", "Audit records buffered for the syslog collector", multiprocess_mode="livesum"
)
AUDIT_FILE_FAILURES = Counter(
    "archive_audit_file_failures_total", "Audit records that could not be written to the local audit file"
)
HTTP_AUTH = Counter(
    "archive_http_auth_total", "HTTP requests that needed a role, by outcome",
    ["outcome"],  # user | api-key | local | open (let in); unauthenticated | invalid_token | forbidden (401, 403)
)

REINDEX_OBJECTS = Gauge("archive_reindex_objects", "Objects a running reindex found in the object store",
                        multiprocess_mode="mostrecent")
REINDEX_DONE = Gauge("archive_reindex_done", "Objects a running reindex has handled (resumed runs included)",
                     multiprocess_mode="mostrecent")
STUDIES_STABLE = Counter(
    "archive_studies_stable_total", "Studies marked stable (no new instance for ARCHIVE_STUDY_STABLE_SECONDS)")
WEBHOOK_DELIVERIES = Counter(
    "archive_webhook_deliveries_total", "Webhook requests (each up to 100 events) by outcome", ["outcome"])
EVENTS = Counter("archive_events_total", "Events published (topic exchange, webhook queues)", ["type"])
FORWARD_QUEUED = Counter(
    "archive_forward_jobs_queued_total", "Forward jobs the rules queued (after indexing), by destination",
    ["destination"])
FORWARDED = Counter(
    "archive_forwarded_instances_total", "Forward jobs settled, by destination and outcome",
    ["destination", "outcome"],  # sent | already_sent | failed (a failure status) | gone (deleted meanwhile)
)
FORWARD_UNREACHABLE = Counter(
    "archive_forward_unreachable_total",
    "Times a destination could not be reached: an association (or request) that failed, and each failed probe after",
    ["destination"])
FORWARD_SECONDS = Histogram(
    "archive_forward_batch_seconds", "Time to send one batch of instances on one association", ["destination"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
FORWARD_READY = Gauge(
    "archive_forward_queue_ready_messages", "Forward jobs waiting for a destination (read by its forwarder)",
    ["destination"], multiprocess_mode="mostrecent")
FORWARD_DEAD = Gauge(
    "archive_forward_queue_dead_messages", "Forward jobs in a destination's dead-letter queue (read by its forwarder)",
    ["destination"], multiprocess_mode="mostrecent")
FORWARD_OLDEST = Gauge(
    "archive_forward_oldest_job_age_seconds", "Age of the oldest forward job a forwarder last received, per destination",
    ["destination"], multiprocess_mode="mostrecent")
BUILD_INFO = Gauge(
    "archive_build_info", "Always 1; the running version in its label", ["version"], multiprocess_mode="max"
)
BUILD_INFO.labels(__version__).set(1)
FREE_BYTES = Gauge(
    "archive_free_bytes",
    "Free bytes (for an unprivileged user) of the file system holding a directory, read when /metrics is scraped",
    ["volume"],  # data (ARCHIVE_DATA_DIR) | spool (<data>/spool, where receivers spool datasets)
    multiprocess_mode="mostrecent",
)
SIZE_BYTES = Gauge(
    "archive_volume_size_bytes", "Size of the file system holding a directory, read when /metrics is scraped",
    ["volume"], multiprocess_mode="mostrecent",
)

# Series the dashboard and the alerts read exist from the start, at 0: a rate of 0 rather than no data.
STORES.labels("success")
STOW_INSTANCES.labels("success")
for _kind in ("transient", "poison"):
    INDEX_FAILURES.labels(_kind)
for _reason in ("buffer_full", "collector_down", "too_large", "shutdown"):
    AUDIT_DROPPED.labels(_reason)
# The query interfaces (archive.query): without a series before its first query, a rate over a
# window misses that query (Prometheus sees the series start at 1, not rise to it).
QUERY_INTERFACES = ("qido", "search", "cfind", "wado", "wado-metadata", "wado-frames", "wado-rendered",
                    "wado-thumbnail")
for _interface in QUERY_INTERFACES:
    QUERY_SECONDS.labels(_interface)

QUEUE_DEPTH_TIMEOUT = 2.0  # a scrape must not hang on a queue that does not answer


async def record_queue_depth(queue: MessageQueue) -> None:
    """Set the queue gauges from the queue itself; NaN (a gap, not a stale value) when it fails."""
    try:
        depth = await asyncio.wait_for(queue.depth(), QUEUE_DEPTH_TIMEOUT)
    except Exception:
        QUEUE_READY.set(math.nan)
        QUEUE_DEAD.set(math.nan)
        raise
    QUEUE_READY.set(depth.ready)
    QUEUE_DEAD.set(depth.dead)


def record_free_space(data_dir: Path) -> None:
    """Free and total bytes of the data directory's and the spool's file systems (an emptyDir with
    a sizeLimit shows the node's disk: the kubelet evicts a pod over its limit; see docs/deploy.md)."""
    for volume, path in (("data", data_dir), ("spool", data_dir / "spool")):
        try:
            usage = shutil.disk_usage(path)
        except OSError:  # not there (yet): a gap, not a stale value
            FREE_BYTES.labels(volume).set(math.nan)
            SIZE_BYTES.labels(volume).set(math.nan)
            continue
        FREE_BYTES.labels(volume).set(usage.free)
        SIZE_BYTES.labels(volume).set(usage.total)
