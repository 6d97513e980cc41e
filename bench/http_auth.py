"""What checking a token adds to a QIDO-RS request: p50/p99 with an access token, with an API key,
and from loopback without authentication, in one run.

    .venv/bin/python bench/http_auth.py [--rounds 3000] [--warmup 300] [--out results.json]

Needs Keycloak (scripts/services.sh start; KEYCLOAK_ISSUER in .services.env). One embedded ``serve``
stores 100 small CT instances (20 patients, STOW-RS) and stops; then two ``query`` processes read
the same catalog: one with the loopback default (no token), one with ARCHIVE_OIDC_ISSUER (Keycloak's
realm). Each round sends the same QIDO-RS query (``/dicom-web/studies?PatientID=PAT-n``, one match)
three ways, interleaved: loopback without a token, with a reader's access token (RS256; the same
token every time, as a client's session sends it: verified once, then from the verifier's cache),
with a reader API key (one SHA-256 and one catalog lookup per request); one keep-alive connection
each (http.client). Also times ``OidcVerifier.verify`` alone, in this process: the full check
(signature and claims) and a cache hit.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from _report import machine  # noqa: E402

from archive.auth.oidc import OidcVerifier  # noqa: E402
from tests.conftest import free_port  # noqa: E402
from tests.e2e.auth_client import AUDIENCE, call, keycloak_issuer, user_token  # noqa: E402
from tests.e2e.harness import ArchiveProcess, serve, wait_until  # noqa: E402
from tests.factories import make_ct, new_uid, write_part10  # noqa: E402
from tests.stow_client import multipart  # noqa: E402

PATIENTS, PER_STUDY = 20, 5


def populate(workdir: Path) -> dict[str, str]:
    archive = serve(workdir).start()
    try:
        for p in range(PATIENTS):
            study, series = new_uid(), new_uid()
            parts = [write_part10(make_ct(study_uid=study, series_uid=series, instance_number=i + 1, seed=i,
                                          patient_id=f"PAT-{p}"), workdir / f"{p}-{i}.dcm").read_bytes()
                     for i in range(PER_STUDY)]
            body, content_type = multipart(parts)
            status, _, answer = call(f"{archive.http}/dicom-web/studies", method="POST", body=body,
                                     headers={"Content-Type": content_type})
            assert status == 200, answer
        wait_until(lambda: len(call(f"{archive.http}/dicom-web/instances?limit=1000")[2] or [])
                   == PATIENTS * PER_STUDY, timeout=120)
    finally:
        archive.stop()
    return archive.env


def query_process(workdir: Path, env: dict[str, str], name: str, **extra: str) -> ArchiveProcess:
    proc = ArchiveProcess("query", {**env, "ARCHIVE_QUERY_DICOM_PORT": str(free_port()), **extra},
                          workdir / f"{name}.log", free_port(), free_port())
    return proc.start()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def summary(values: list[float]) -> dict[str, float]:
    return {"p50_ms": round(percentile(values, 0.5), 3), "p90_ms": round(percentile(values, 0.9), 3),
            "p99_ms": round(percentile(values, 0.99), 3), "mean_ms": round(statistics.fmean(values), 3),
            "n": len(values)}


def measure(targets: dict[str, tuple[int, str | None]], rounds: int, warmup: int) -> dict[str, list[float]]:
    connections = {name: http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                   for name, (port, _) in targets.items()}
    results: dict[str, list[float]] = {name: [] for name in targets}
    for i in range(warmup + rounds):
        path = f"/dicom-web/studies?PatientID=PAT-{i % PATIENTS}"
        for name, (_, token) in targets.items():
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            started = time.perf_counter()
            connections[name].request("GET", path, headers=headers)
            response = connections[name].getresponse()
            body = response.read()
            elapsed = (time.perf_counter() - started) * 1e3
            assert response.status == 200 and body.count(b'"0020000D"') == 1, (name, response.status, body[:200])
            if i >= warmup:
                results[name].append(elapsed)
    for connection in connections.values():
        connection.close()
    return results


def verify_alone(issuer: str, token: str, count: int = 3000, cache_seconds: float = 0.0) -> float:
    """Microseconds per ``verify`` call (``cache_seconds`` 0: the full check every time)."""
    async def go() -> float:
        verifier = OidcVerifier(issuer, AUDIENCE, "realm_access.roles", cache_seconds=cache_seconds)
        await verifier.verify(token)  # loads the keys
        started = time.perf_counter()
        for _ in range(count):
            await verifier.verify(token)
        elapsed = (time.perf_counter() - started) / count * 1e6
        await verifier.close()
        return elapsed

    return asyncio.run(go())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3000)
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    issuer = keycloak_issuer()
    report: dict[str, Any] = {"machine": machine(), "rounds": args.rounds}
    with tempfile.TemporaryDirectory(prefix="bench-auth-") as tmp:
        workdir = Path(tmp)
        env = populate(workdir)
        env = {k: v for k, v in env.items() if k != "ARCHIVE_FSYNC"}
        open_ = query_process(workdir, env, "loopback")
        signed = query_process(workdir, env, "oidc", ARCHIVE_OIDC_ISSUER=issuer, ARCHIVE_OIDC_AUDIENCE=AUDIENCE)
        try:
            key = subprocess.run([sys.executable, "-m", "archive.cli", "api-key", "create", "bench", "--role",
                                  "reader"], env={**os.environ, **env}, capture_output=True, text=True,
                                 check=True, cwd=ROOT).stdout.strip()
            token = user_token(issuer, "reader")
            results = measure({"loopback, no token": (open_.http_port, None),
                               "access token (JWT, RS256)": (signed.http_port, token),
                               "API key": (signed.http_port, key)}, args.rounds, args.warmup)
        finally:
            open_.stop()
            signed.stop()
        report["qido"] = {name: summary(values) for name, values in results.items()}
        token = user_token(issuer, "reader")
        report["verify_us"] = {"full check": round(verify_alone(issuer, token), 1),
                               "cached (the same token again)": round(verify_alone(issuer, token, cache_seconds=60), 2)}
    print(json.dumps(report, indent=2))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
