"""Events other services subscribe to (UIDs and counts only, never patient data).

Published to the RabbitMQ topic exchange ``archive.events`` with the type as routing key
(distributed form) and to the configured webhooks (both forms), at least once:

- ``instance.stored``: an instance was indexed (``action``: created; updated for new content
  under a known SOP Instance UID; unchanged for the same object again: a re-send, or a redelivery)
- ``study.stable``: no new instance of the study for ARCHIVE_STUDY_STABLE_SECONDS
- ``study.deleted``: instances of a study were deleted (``series``/``instance`` when one was named)
- ``forward.succeeded``, ``forward.failed``: a forwarder's batch to ``destination``, per study
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from enum import Enum
from typing import Any, Protocol


class EventType(str, Enum):
    INSTANCE_STORED = "instance.stored"
    STUDY_STABLE = "study.stable"
    STUDY_DELETED = "study.deleted"
    FORWARD_SUCCEEDED = "forward.succeeded"
    FORWARD_FAILED = "forward.failed"


EXCHANGE = "archive.events"


@dataclass(frozen=True)
class Event:
    type: EventType
    at: float
    study: str
    series: str = ""
    instance: str = ""
    action: str = ""  # instance.stored: created | updated | unchanged
    destination: str = ""  # forward.*
    instances: int = 0  # study.deleted, forward.*: how many

    def to_dict(self) -> dict[str, Any]:
        when = datetime.fromtimestamp(self.at, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        out: dict[str, Any] = {"type": self.type.value, "time": when, "study": self.study}
        for key in ("series", "instance", "action", "destination"):
            if value := getattr(self, key):
                out[key] = value
        if self.instances:
            out["instances"] = self.instances
        return out

    def to_bytes(self) -> bytes:
        return json.dumps(self.to_dict(), separators=(",", ":")).encode("utf-8")


class EventSink(Protocol):
    """Where roles send events; ``publish`` returns once they are durable (broker confirm, queue
    commit) and raises BackendUnavailable when they are not."""

    async def publish(self, events: Sequence[Event]) -> None: ...


class NoEvents:
    async def publish(self, events: Sequence[Event]) -> None:
        pass
