"""The ``dicom-archive`` command."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import textwrap
import time
from pathlib import Path

from archive import logs
from archive.core.errors import ArchiveError, ConfigError
from archive.core.identity import Role
from archive.settings import SETTINGS, Settings


def _width() -> int:
    """Columns for help text: the terminal's, within 60..100."""
    return max(60, min(100, shutil.get_terminal_size((100, 24)).columns))


def _epilog(width: int) -> str:
    """Every setting as VARIABLE=default, then what it means."""
    lines = ["Settings come from ARCHIVE_* environment variables (command-line flags win):"]
    for s in SETTINGS:
        lines.append(f"  {s.env}={s.default_text}" if s.default_text else f"  {s.env} (unset)")
        lines += textwrap.wrap(s.help.replace("`", ""), width=width, initial_indent=" " * 6,
                               subsequent_indent=" " * 6, break_on_hyphens=False)
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    width = _width()
    epilog = _epilog(width - 2)
    parser = argparse.ArgumentParser(
        prog="dicom-archive",
        description="A DICOM archive: receive, store, index, search.",
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help_: str, description: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=textwrap.fill(description, width - 2),
                           epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)
        return p

    serve = add("serve", "run every role in one command (embedded defaults)",
                "Run the DICOM receiver and the query service in this process and the indexer in a "
                "supervised child process, on the embedded backends unless ARCHIVE_* URLs point "
                "elsewhere: every DIMSE service (C-ECHO, C-STORE, C-FIND, C-MOVE, C-GET, Storage "
                "Commitment) on ARCHIVE_DICOM_PORT, and DICOMweb (QIDO-RS, WADO-RS, WADO-URI, "
                "STOW-RS), the search API and /healthz, /readyz, /metrics on ARCHIVE_HTTP_PORT. "
                "Creates what the backends need on start.")
    serve.add_argument("--data-dir", type=Path, help="where embedded backends keep files (ARCHIVE_DATA_DIR)")
    serve.add_argument("--dicom-port", type=int, help="DICOM port (ARCHIVE_DICOM_PORT)")
    serve.add_argument("--http-port", type=int, help="HTTP port (ARCHIVE_HTTP_PORT)")
    serve.add_argument("--aet", help="our AE title (ARCHIVE_AET)")
    serve.add_argument("--workers", type=int, help="SCP processes sharing the DICOM port (ARCHIVE_WORKERS)")

    scp = add("scp", "run the stateless C-STORE receiver",
              "Receive C-ECHO and C-STORE on ARCHIVE_DICOM_PORT; store each instance durably in "
              "the object store and queue it for indexing before answering Success. Serves "
              "/healthz, /readyz, /metrics on the HTTP port.")
    scp.add_argument("--workers", type=int, help="processes sharing the DICOM port via SO_REUSEPORT")
    scp.add_argument("--worker-child", action="store_true", help=argparse.SUPPRESS)
    scp.add_argument("--with-query", action="store_true", help=argparse.SUPPRESS)  # serve's SCP workers

    indexer = add("indexer", "run the indexer",
                  "Consume index messages; write the catalog and the search index; acknowledge after "
                  "both. Serves /healthz, /readyz, /metrics on the HTTP port.")
    indexer.add_argument("--worker-child", action="store_true", help=argparse.SUPPRESS)
    add("query", "run the query service",
        "Serve DICOMweb under /dicom-web (QIDO-RS, WADO-RS, STOW-RS) and WADO-URI at /wado, the "
        "search API under /api, and /healthz, /readyz, /metrics on the HTTP port; and C-ECHO, "
        "C-FIND, C-MOVE, C-GET (Patient Root and Study Root) and Storage Commitment on "
        "ARCHIVE_QUERY_DICOM_PORT.")
    add("migrate", "create or upgrade schema, index template, bucket and queues",
        "Create or upgrade everything the configured backends need: catalog schema, search "
        "index template, bucket, queues and dead-letter queue. Idempotent.")
    verify = add("verify", "check that object store, catalog and search index agree",
                 "Count instances in the object store, the catalog and the search index and list "
                 "discrepancies (missing, orphaned, checksum mismatches). Exit status 0 only when "
                 "all three agree.")
    verify.add_argument("--json", action="store_true", help="print the report as JSON")
    verify.add_argument("--deep", action="store_true", help="re-hash every object instead of trusting recorded checksums")
    verify.add_argument("--repair", action="store_true", help="re-queue orphaned objects for indexing; remove what an interrupted delete left")
    reindex = add("reindex", "rebuild the catalog and the search index from the object store",
                  "Read every stored object and write it to the catalog and the search index as the indexer would, "
                  "while the archive keeps answering and ingesting. Derived data only: the change feed, tombstones, "
                  "the forwarding ledger and API keys are kept, and no change-feed entry, event or forwarding rule "
                  "fires. Resumable: a run started again after a crash continues after the last batch it "
                  "committed. Progress (rate, ETA) on stderr; gauges on ARCHIVE_METRICS_PORT when set. Exit "
                  "status 0 when the rebuild is complete.")
    reindex.add_argument("--restart", action="store_true", help="start from the first object, not where a run left off")
    reindex.add_argument("--state", type=Path, help="the resume file (default: ARCHIVE_DATA_DIR/reindex.json)")
    reindex.add_argument("--batch", type=int, default=100, help="objects written in one catalog transaction")
    reindex.add_argument("--json", action="store_true", help="print the report as JSON")
    delete = add("delete", "delete a study, a series or an instance (object store, catalog, search index)",
                 "Delete what the UIDs name, as DELETE /dicom-web/studies/... does: removed from the "
                 "catalog (a tombstone keeps a late index message from bringing it back, the change "
                 "feed says deleted), then from the search index and the object store; audited as DICOM "
                 "Study Deleted. Exit status 0 when deleted, 1 when nothing matched.")
    delete.add_argument("study", metavar="STUDY", help="Study Instance UID")
    delete.add_argument("series", metavar="SERIES", nargs="?", help="Series Instance UID")
    delete.add_argument("instance", metavar="INSTANCE", nargs="?", help="SOP Instance UID")
    dead = add("dead-letters", "list or replay index messages in the dead-letter queue",
               "List the index messages that could not be indexed within the delivery limit "
               "(UIDs and reasons only; no patient data). They stay in the dead-letter queue "
               "unless --replay moves them back to the queue (oldest first, delivery count from "
               "zero), e.g. once the cause is fixed.")
    dead.add_argument("--limit", type=int, default=100, help="most messages to list or replay")
    dead.add_argument("--replay", action="store_true", help="move them back to the queue for indexing")
    dead.add_argument("--json", action="store_true", help="print JSON")
    dead.add_argument("--destination", metavar="AET",
                      help="the forward jobs of this destination instead of the index messages")
    forwarder = add("forwarder", "run the forwarder (ARCHIVE_ROUTING_RULES)",
                    "Send what the forwarding rules queued to each destination: one consumer per destination, "
                    "each on its own queue, at least once, with a ledger of what went where; retries with "
                    "backoff, dead letters per destination. Serves /healthz, /readyz, /metrics on the HTTP port.")
    forwarder.add_argument("--worker-child", action="store_true", help=argparse.SUPPRESS)
    rules = add("rules", "check a forwarding rules file",
                "Validate a rules file (YAML or JSON) as the indexer and the forwarder would load it: the "
                "conditions, triggers, attribute changes, and that every destination is a configured peer. "
                "Exit status 0 when valid, 1 with the first problem.")
    rules_sub = rules.add_subparsers(dest="rules_command", required=True, metavar="ACTION")
    check = rules_sub.add_parser("check", help="validate FILE and print its rules")
    check.add_argument("file", metavar="FILE")
    check.add_argument("--json", action="store_true", help="print JSON")
    check.add_argument("--no-peers", action="store_true",
                       help="do not check destinations against ARCHIVE_PEERS / ARCHIVE_AE_CONFIG")
    send = add("send", "send a study or a series to a peer (a forward job per instance)",
               "Queue every stored instance of STUDY (or of --series) for DESTINATION, a configured peer; the "
               "forwarder sends them like the jobs of a rule (rule name \"manual\"). Exit status 1 when "
               "nothing matched.")
    send.add_argument("study", metavar="STUDY", help="Study Instance UID")
    send.add_argument("destination", metavar="DESTINATION", help="AE title of a configured peer")
    send.add_argument("--series", help="Series Instance UID: only this series")
    fwd = add("forwards", "what was forwarded where (the forwarding ledger)",
              "List the forwarding ledger, newest first: destination, outcome (sent, failed, gone), instance, "
              "rule, attempts and the peer's status.")
    fwd.add_argument("--study", help="only this Study Instance UID")
    fwd.add_argument("--limit", type=int, default=100)
    fwd.add_argument("--json", action="store_true", help="print JSON")
    keys = add("api-key", "create, list or revoke API keys of the HTTP API",
               "API keys let scripts and integrations that cannot sign in with OpenID Connect call the "
               "HTTP API (Authorization: Bearer <key>), from any address, with one role (reader, writer "
               "or admin). They are stored in the catalog's database as SHA-256 digests: the key is "
               "printed once, by create, and cannot be shown again.")
    key_sub = keys.add_subparsers(dest="key_command", required=True, metavar="ACTION")
    create = key_sub.add_parser("create", help="create a key and print it (once)")
    create.add_argument("name", help="a name for the key (who or what uses it)")
    create.add_argument("--role", required=True, choices=[r.value for r in Role], help="what the key may do")
    listing = key_sub.add_parser("list", help="names, roles, created, last used (never the keys)")
    listing.add_argument("--json", action="store_true", help="print JSON")
    revoke = key_sub.add_parser("revoke", help="delete a key: it stops working at once")
    revoke.add_argument("name")
    return parser


def _when(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(seconds))


def _api_key(settings: Settings, args: argparse.Namespace) -> int:
    from archive.auth import api_keys
    from archive.compose import catalog
    from archive.core.errors import ApiKeyExists
    from archive.core.ports import ApiKeys

    async def go() -> int:
        store = catalog(settings)
        assert isinstance(store, ApiKeys)
        try:
            await store.migrate()
            if args.key_command == "create":
                try:
                    key, stored = await api_keys.create(store, args.name, Role(args.role))
                except (ApiKeyExists, ValueError) as exc:
                    print(f"dicom-archive: {exc}", file=sys.stderr)
                    return 1
                print(key)
                print(f"API key {stored.name!r} ({stored.role.value}) created; it is shown only now: "
                      "send it as Authorization: Bearer <key>", file=sys.stderr)
                return 0
            if args.key_command == "revoke":
                if not await store.revoke_key(args.name):
                    print(f"dicom-archive: no API key named {args.name!r}", file=sys.stderr)
                    return 1
                print(f"revoked {args.name}")
                return 0
            found = await store.list_keys()
        finally:
            await store.close()
        if args.json:
            print(json.dumps([{"name": k.name, "role": k.role.value, "created_at": k.created_at,
                               "last_used_at": k.last_used_at} for k in found], indent=2))
        else:
            for k in found:
                print(f"{k.name}\t{k.role.value}\tcreated {_when(k.created_at)}\tlast used {_when(k.last_used_at)}")
        return 0

    return asyncio.run(go())


def _dead_letters(settings: Settings, args: argparse.Namespace) -> int:
    """The index queue's dead letters, or (``--destination``) a forward queue's."""
    from archive.compose import forward_queue, message_queue
    from archive.core.errors import PoisonMessage
    from archive.core.models import IndexMessage
    from archive.core.routing import ForwardJob

    def ids(body: bytes) -> dict[str, str | None]:
        try:
            if args.destination:
                job = ForwardJob.from_bytes(body)
                return {"sop_instance_uid": job.sop_instance_uid, "study_uid": job.study_uid, "rule": job.rule}
            m = IndexMessage.from_bytes(body)
            return {"sop_instance_uid": m.sop_instance_uid, "study_uid": m.study_uid, "key": m.key}
        except PoisonMessage:
            return {"sop_instance_uid": None, "study_uid": None}

    async def go() -> int:
        queue = forward_queue(settings, args.destination) if args.destination else message_queue(settings)
        try:
            await queue.migrate()
            if args.replay:
                moved = await queue.replay(args.limit)
                depth = await queue.depth()
                if args.json:
                    print(json.dumps({"replayed": moved, "ready": depth.ready, "dead": depth.dead}))
                else:
                    print(f"replayed: {moved}  waiting: {depth.ready}  dead-lettered: {depth.dead}")
                return 0
            depth = await queue.depth()
            letters = await queue.dead_letters(args.limit)
        finally:
            await queue.close()
        rows = [{**ids(letter.body), "delivery_count": letter.delivery_count, "reason": letter.reason}
                for letter in letters]
        if args.json:
            print(json.dumps({"ready": depth.ready, "dead": depth.dead, "messages": rows}, indent=2))
        else:
            print(f"waiting: {depth.ready}  dead-lettered: {depth.dead}")
            for row in rows:
                print(f"{row['sop_instance_uid'] or '<unparseable>'}  deliveries={row['delivery_count']}  {row['reason']}")
        return 0

    return asyncio.run(go())


def _shared_metrics_dir(settings: Settings) -> None:
    """Metrics of all processes of this command in one place (before prometheus_client loads)."""
    path = settings.data_dir / "metrics"
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True, exist_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path)


def _settings(args: argparse.Namespace) -> Settings:
    overrides = {
        "data_dir": getattr(args, "data_dir", None),
        "dicom_port": getattr(args, "dicom_port", None),
        "http_port": getattr(args, "http_port", None),
        "aet": getattr(args, "aet", None),
        "workers": getattr(args, "workers", None),
    }
    return Settings.from_env(**overrides)


def _verify(settings: Settings, args: argparse.Namespace) -> int:
    from archive.compose import Backends
    from archive.ops.verify import verify

    async def go() -> int:
        backends = Backends.from_settings(settings)
        try:
            await backends.migrate()
            report = await verify(backends.store, backends.catalog, backends.search, deep=args.deep,
                                  queue=backends.queue if args.repair else None)
        finally:
            await backends.close()
        if args.json:
            print(json.dumps(report.to_dict(), indent=2))
        else:
            print(f"objects:           {report.objects}")
            print(f"catalog instances: {report.catalog_instances}")
            print(f"search documents:  {report.search_documents}")
            for kind, count in report.counts.items():
                if count:
                    print(f"{kind}: {count} (e.g. {', '.join(getattr(report, kind)[:5])})")
            if args.repair:
                print(f"repaired (orphans re-queued, leftovers of deletes removed): {report.repaired}")
            print("consistent" if report.consistent else "INCONSISTENT")
        return 0 if report.consistent else 1

    return asyncio.run(go())


def _reindex(settings: Settings, args: argparse.Namespace) -> int:
    from archive.compose import Backends
    from archive.ops.reindex import Progress, State, reindex

    if settings.metrics_port is not None:
        from prometheus_client import start_http_server

        start_http_server(settings.metrics_port, addr=settings.bind)
    tty = sys.stderr.isatty()
    last = [0.0]

    def show(p: Progress) -> None:
        now = time.monotonic()
        if not tty and now - last[0] < 10 and p.done < p.total:
            return
        last[0] = now
        eta = (p.total - p.done) / p.rate if p.rate > 0 else float("nan")
        line = (f"reindex: {p.done}/{p.total} objects ({100 * p.done / max(p.total, 1):.1f}%), "
                f"{p.rate:.0f}/s, ETA {eta:.0f} s")
        print(("\r" + line) if tty else line, end="" if tty else "\n", file=sys.stderr, flush=True)

    async def go() -> int:
        backends = Backends.from_settings(settings)
        try:
            for backend in (backends.store, backends.catalog, backends.search):
                await backend.migrate()
            state = State(args.state or settings.data_dir / "reindex.json")
            report = await reindex(backends.store, backends.catalog, backends.search, state, restart=args.restart,
                                   batch=max(1, args.batch), on_progress=show)
        finally:
            await backends.close()
        if tty:
            print(file=sys.stderr)
        if args.json:
            print(json.dumps(report.to_dict(), indent=2))
        else:
            resumed = f" (resumed after {report.resumed_after})" if report.resumed_after else ""
            print(f"reindexed {report.indexed} of {report.objects} objects in {report.seconds} s{resumed}; "
                  f"left alone: {report.tombstoned} tombstoned, {report.unreadable} unreadable")
        return 0

    return asyncio.run(go())


def _delete(settings: Settings, args: argparse.Namespace) -> int:
    import getpass

    from archive.compose import Backends, Events, audit_trail
    from archive.core.changes import Deletion
    from archive.core.identity import Principal, PrincipalKind
    from archive.core.uids import validate_uid
    from archive.ops.delete import DeleteService

    for value, name in ((args.study, "STUDY"), (args.series, "SERIES"), (args.instance, "INSTANCE")):
        if value is not None:
            validate_uid(value, name)
    deletion = Deletion(args.study, args.series, args.instance)

    async def go() -> int:
        backends = Backends.from_settings(settings)
        trail = audit_trail(settings)
        events = Events(settings)
        try:
            await backends.migrate()
            who = Principal(PrincipalKind.LOCAL, getpass.getuser(), "127.0.0.1")
            service = DeleteService(backends.catalog, backends.search, backends.store, trail, events)
            deleted = await service.delete(deletion, who, service="dicom-archive delete")
        finally:
            await events.close()
            await backends.close()
            trail.close()
        if not deleted.instances:
            print("dicom-archive: nothing to delete: no such instances in the catalog", file=sys.stderr)
            return 1
        print(f"deleted {len(deleted.instances)} instance(s)")
        return 0

    return asyncio.run(go())


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = _settings(args)
    except ConfigError as exc:
        print(f"dicom-archive: configuration error: {exc}", file=sys.stderr)
        return 2
    logs.setup(settings.log_level, settings.log_format)
    if args.command == "serve" or (args.command == "scp" and settings.workers > 1 and not args.worker_child):
        _shared_metrics_dir(settings)
    from archive import runtime

    try:
        if args.command == "serve":
            runtime.main(settings, runtime.Roles.serve())
        elif args.command == "scp":
            roles = runtime.Roles.scp(worker_child=args.worker_child, with_query=args.with_query)
            runtime.main(settings, roles)
        elif args.command == "indexer":
            runtime.main(settings, runtime.Roles.indexer(child=args.worker_child))
        elif args.command == "query":
            runtime.main(settings, runtime.Roles.query())
        elif args.command == "forwarder":
            runtime.main(settings, runtime.Roles.forwarder(child=args.worker_child))
        elif args.command in ("rules", "send", "forwards"):
            from archive import cli_forward

            command = {"rules": cli_forward.rules_check, "send": cli_forward.send, "forwards": cli_forward.forwards}
            return command[args.command](settings, args)
        elif args.command == "migrate":
            asyncio.run(runtime.migrate(settings))
            print("migrated")
        elif args.command == "verify":
            return _verify(settings, args)
        elif args.command == "delete":
            return _delete(settings, args)
        elif args.command == "reindex":
            return _reindex(settings, args)
        elif args.command == "dead-letters":
            return _dead_letters(settings, args)
        elif args.command == "api-key":
            return _api_key(settings, args)
    except ConfigError as exc:
        print(f"dicom-archive: configuration error: {exc}", file=sys.stderr)
        return 2
    except ArchiveError as exc:
        print(f"dicom-archive: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
