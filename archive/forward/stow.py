"""Forwarding to a DICOMweb service: one STOW-RS request per batch (PS3.18 10.5), the instances as
``application/dicom`` parts of a ``multipart/related`` body, streamed from their spool files (read
and changed only when the rule changes attributes), and the per-instance outcome read from the
response's Referenced SOP Sequence (0008,1199) and Failed SOP Sequence (0008,1198)."""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from contextlib import ExitStack
from typing import Any

import aiohttp
from pydicom import dcmread

from archive.core.routing import apply_changes
from archive.forward.send import Item, Result, Unreachable
from archive.forward.targets import Target

log = logging.getLogger(__name__)

REFERENCED_SOP_SEQUENCE = "00081199"
FAILED_SOP_SEQUENCE = "00081198"
REFERENCED_SOP_INSTANCE_UID = "00081155"
FAILURE_REASON = "00081197"
PROCESSING_FAILURE = 0x0110
UNAVAILABLE = (401, 403, 407, 408, 429)  # credentials, rate limits: the service will take it later


def _part(item: Item, stack: ExitStack) -> Any:
    if item.job.set or item.job.prefix:
        dataset = dcmread(item.path)
        apply_changes(dataset, item.job)
        buffer = io.BytesIO()
        dataset.save_as(buffer, enforce_file_format=True)
        return buffer.getvalue()
    return stack.enter_context(open(item.path, "rb"))


def _uids(body: Any, sequence: str) -> dict[str, int]:
    """SOP Instance UID -> failure reason (0 for the referenced ones) of one sequence of the response."""
    out: dict[str, int] = {}
    element = body.get(sequence) if isinstance(body, dict) else None
    for entry in (element or {}).get("Value") or []:
        uid = ((entry.get(REFERENCED_SOP_INSTANCE_UID) or {}).get("Value") or [""])[0]
        reason = ((entry.get(FAILURE_REASON) or {}).get("Value") or [PROCESSING_FAILURE])[0]
        if uid:
            out[str(uid)] = 0 if sequence == REFERENCED_SOP_SEQUENCE else int(reason)
    return out


class WebSender:
    def __init__(self, target: Target, timeout: float) -> None:
        self.target = target
        self.timeout = aiohttp.ClientTimeout(total=None, sock_connect=min(timeout, 30.0), sock_read=timeout)
        self._session: aiohttp.ClientSession | None = None

    def _headers(self, **extra: str) -> dict[str, str]:
        headers = {"Accept": "application/dicom+json", **extra}
        if self.target.authorization:
            headers["Authorization"] = self.target.authorization
        return headers

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self.timeout)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def send(self, items: Sequence[Item]) -> list[Result]:
        with ExitStack() as stack:
            writer = aiohttp.MultipartWriter("related")
            for item in items:
                writer.append(_part(item, stack), {"Content-Type": "application/dicom"})
            content_type = f'multipart/related; type="application/dicom"; boundary="{writer.boundary}"'
            writer.headers["Content-Type"] = content_type
            try:
                async with self.session().post(f"{self.target.url}/studies", data=writer,
                                               headers=self._headers(**{"Content-Type": content_type})) as response:
                    status = response.status
                    try:
                        body = await response.json(content_type=None)
                    except (ValueError, aiohttp.ContentTypeError):
                        body = None
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                raise Unreachable(f"STOW-RS to {self.target.url}: {type(exc).__name__}: {exc}") from None
        if status >= 500 or status in UNAVAILABLE:
            raise Unreachable(f"STOW-RS to {self.target.url}: HTTP {status}")
        stored = _uids(body, REFERENCED_SOP_SEQUENCE)
        failed = _uids(body, FAILED_SOP_SEQUENCE)
        results = []
        for item in items:
            uid = item.job.sop_instance_uid
            if uid in failed:
                results.append(Result(item.job, failed[uid] or PROCESSING_FAILURE,
                                      f"HTTP {status}, failure reason 0x{failed[uid]:04X}"))
            elif uid in stored or (status == 200 and not failed):
                results.append(Result(item.job, 0x0000, f"HTTP {status}"))
            else:
                results.append(Result(item.job, PROCESSING_FAILURE, f"HTTP {status}: not in the response"))
        return results

    async def reachable(self) -> bool:
        try:
            async with self.session().get(f"{self.target.url}/studies?limit=1", headers=self._headers()) as response:
                return response.status < 500 and response.status not in UNAVAILABLE
        except (aiohttp.ClientError, TimeoutError, OSError):
            return False
