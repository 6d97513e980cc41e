"""The forwarding commands of ``dicom-archive``: rules check, send, forwards (``dead-letters
--destination`` is the dead-letters command's)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

from archive.settings import Settings


def rules_check(settings: Settings, args: argparse.Namespace) -> int:
    """Exit 0 and print the rules when FILE is valid and every destination is a configured peer."""
    from archive.core.routing import RulesError, summary
    from archive.forward.rules_file import read
    from archive.runtime import destinations

    try:
        rules = read(args.file, None if args.no_peers else destinations(settings))
    except RulesError as exc:
        print(f"dicom-archive: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({"rules": summary(rules)}, indent=2))
    else:
        for rule in summary(rules):
            print(f"{rule['name']}: {rule['trigger']} -> {', '.join(rule['destinations'])}"
                  f"  match {' '.join(rule['match']) or 'everything'}"
                  + (f"  from {', '.join(rule['calling_aet'])}" if rule["calling_aet"] else ""))
        print(f"{args.file}: {len(rules.rules)} rule(s), valid")
    return 0


async def queue_study(settings: Settings, study: str, series: str | None, destination: str) -> int:
    from archive import ae_config
    from archive.compose import ForwardQueues, catalog
    from archive.core.errors import ConfigError
    from archive.forward.manual import send_study

    from archive.forward.targets import configured

    destination = destination.strip()
    if destination not in configured(ae_config.load(settings)):
        raise ConfigError(f"{destination!r} is not a configured peer (ARCHIVE_PEERS or ARCHIVE_AE_CONFIG)")
    store = catalog(settings)
    queues = ForwardQueues(settings)
    try:
        return await send_study(store, queues, destination, study, series)
    finally:
        await queues.close()
        await store.close()


def send(settings: Settings, args: argparse.Namespace) -> int:
    from archive.core.uids import validate_uid

    validate_uid(args.study, "STUDY")
    if args.series:
        validate_uid(args.series, "--series")
    queued = asyncio.run(queue_study(settings, args.study, args.series, args.destination))
    if not queued:
        print("dicom-archive: nothing to send: no such instances in the catalog", file=sys.stderr)
        return 1
    print(f"queued {queued} instance(s) for {args.destination}; a forwarder sends them "
          "(dicom-archive forwards --study shows the outcome)")
    return 0


def forwards(settings: Settings, args: argparse.Namespace) -> int:
    from archive.compose import Backends

    async def go() -> list[dict[str, object]]:
        backends = Backends.from_settings(settings)
        try:
            await backends.catalog.migrate()
            rows = await backends.ledger.forwards(args.study, args.limit)
        finally:
            await backends.close()
        return [vars(r) for r in rows]

    rows = asyncio.run(go())
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for r in rows:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(float(str(r["at"]))))
            print(f"{when}  {r['destination']}  {r['outcome']}  {r['sop_instance_uid']}  "
                  f"rule={r['rule']}  attempts={r['attempts']}  {r['detail']}")
    return 0
