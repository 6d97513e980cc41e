"""Smoke check of the services started by scripts/services.sh.

Usage: .venv/bin/python scripts/services/smoke_check.py [path/to/.services.env]

Reads the ARCHIVE_* settings and, with the project's own client libraries, checks:
PostgreSQL login and a query, a RabbitMQ quorum queue with x-delivery-limit, S3 bucket
put/get and a 12 MiB multipart upload (SeaweedFS, and MinIO from MINIO_OBJECT_STORE), OpenSearch info() plus an index whose keyword
normalizer uses the lowercase and asciifolding filters, and (KEYCLOAK_ISSUER) a Keycloak token
for the archive's audience that the archive's own verifier accepts. Exits non-zero on any failure.
"""

from __future__ import annotations

import asyncio
import io
import os
import sys
import uuid
from pathlib import Path
from urllib.parse import urlsplit


def read_env(path: Path) -> dict[str, str]:
    env: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            env[key] = value
    return env


def check_pg(env: dict[str, str]) -> str:
    import psycopg

    with psycopg.connect(env["ARCHIVE_CATALOG"], connect_timeout=5) as conn:
        version = conn.execute("SHOW server_version").fetchone()[0]
        conn.execute("CREATE TEMP TABLE t (x int)")
        conn.execute("INSERT INTO t VALUES (1)")
        assert conn.execute("SELECT sum(x) FROM t").fetchone()[0] == 1
    if "ARCHIVE_CATALOG_TEST" in env:
        with psycopg.connect(env["ARCHIVE_CATALOG_TEST"], connect_timeout=5) as conn:
            conn.execute("SELECT 1")
    return f"postgres {version}"


async def _check_rabbit(url: str) -> str:
    import aio_pika

    conn = await aio_pika.connect_robust(url, timeout=10)
    async with conn:
        ch = await conn.channel()
        name = f"smoke-{uuid.uuid4().hex[:8]}"
        q = await ch.declare_queue(
            name,
            durable=True,
            arguments={"x-queue-type": "quorum", "x-delivery-limit": 3},
        )
        await ch.default_exchange.publish(aio_pika.Message(b"ping"), routing_key=name)
        msg = None
        for _ in range(50):
            msg = await q.get(no_ack=False, fail=False)
            if msg is not None:
                break
            await asyncio.sleep(0.1)
        assert msg is not None and msg.body == b"ping", "quorum queue lost the message"
        await msg.ack()
        await q.delete(if_unused=False, if_empty=False)
        version = "?"
        if conn.transport is not None:
            version = conn.transport.connection.server_properties.get("version", "?")
    return f"rabbitmq {version} (quorum queue + x-delivery-limit ok)"


def check_rabbit(env: dict[str, str]) -> str:
    return asyncio.run(_check_rabbit(env["ARCHIVE_QUEUE"]))


def check_s3(env: dict[str, str], names: tuple[str, str, str] = (
        "ARCHIVE_OBJECT_STORE", "ARCHIVE_S3_ACCESS_KEY", "ARCHIVE_S3_SECRET_KEY")) -> str:
    from minio import Minio

    url = urlsplit(env[names[0]])
    client = Minio(url.netloc, access_key=env[names[1]], secret_key=env[names[2]], secure=False)
    bucket = url.path.strip("/")
    assert client.bucket_exists(bucket), f"bucket {bucket} missing"
    key = f"smoke/{uuid.uuid4().hex}"
    client.put_object(bucket, key + "-small", io.BytesIO(b"hello"), 5)
    assert client.get_object(bucket, key + "-small").read() == b"hello"
    data = os.urandom(12 * 1024 * 1024)
    client.put_object(bucket, key + "-big", io.BytesIO(data), length=-1, part_size=5 * 1024 * 1024)
    stat = client.stat_object(bucket, key + "-big")
    assert stat.size == len(data), stat.size
    assert client.get_object(bucket, key + "-big").read() == data
    client.remove_object(bucket, key + "-small")
    client.remove_object(bucket, key + "-big")
    return f"s3 ok (multipart etag {stat.etag})"


def check_minio(env: dict[str, str]) -> str:
    return check_s3(env, ("MINIO_OBJECT_STORE", "MINIO_ACCESS_KEY", "MINIO_SECRET_KEY"))


def check_search(env: dict[str, str]) -> str:
    from opensearchpy import OpenSearch

    client = OpenSearch(hosts=[env["ARCHIVE_SEARCH"]], timeout=30)
    info = client.info()
    index = f"smoke-{uuid.uuid4().hex[:8]}"
    client.indices.create(
        index=index,
        body={
            "settings": {
                "number_of_shards": 1,
                "number_of_replicas": 0,
                "analysis": {
                    "normalizer": {
                        "folded": {"type": "custom", "filter": ["lowercase", "asciifolding"]}
                    }
                },
            },
            "mappings": {"properties": {"name": {"type": "keyword", "normalizer": "folded"}}},
        },
    )
    try:
        client.index(index=index, body={"name": "MÜLLER^Hans"}, refresh=True)
        hits = client.search(index=index, body={"query": {"term": {"name": "muller^hans"}}})
        assert hits["hits"]["total"]["value"] == 1, hits
    finally:
        client.indices.delete(index=index)
    return f"opensearch {info['version']['number']} (normalizer ok)"


def check_keycloak(env: dict[str, str]) -> str:
    import json
    import urllib.parse
    import urllib.request

    from archive.auth.oidc import OidcVerifier

    issuer = env["KEYCLOAK_ISSUER"]
    form = urllib.parse.urlencode({"grant_type": "client_credentials", "client_id": "archive-scripts",
                                   "client_secret": "archive-scripts-secret"}).encode()
    with urllib.request.urlopen(f"{issuer}/protocol/openid-connect/token", data=form, timeout=30) as response:
        token = json.loads(response.read())["access_token"]

    async def verify() -> str:
        verifier = OidcVerifier(issuer, "dicom-archive", "realm_access.roles")
        try:
            holder = await verifier.verify(token)
        finally:
            await verifier.close()
        return f"keycloak ok ({holder.name}: {', '.join(sorted(r.value for r in holder.roles))})"

    return asyncio.run(verify())


CHECKS = {
    "ARCHIVE_CATALOG": check_pg,
    "ARCHIVE_QUEUE": check_rabbit,
    "ARCHIVE_OBJECT_STORE": check_s3,
    "MINIO_OBJECT_STORE": check_minio,
    "ARCHIVE_SEARCH": check_search,
    "KEYCLOAK_ISSUER": check_keycloak,
}


def main() -> int:
    path = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parents[2] / ".services.env")
    env = read_env(path)
    failed = 0
    for key, check in CHECKS.items():
        if key not in env:
            print(f"SKIP {key}: not in {path}")
            continue
        try:
            print(f"OK   {key}: {check(env)}")
        except Exception as exc:  # report every service, then fail
            failed += 1
            print(f"FAIL {key}: {type(exc).__name__}: {exc}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
