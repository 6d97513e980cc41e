"""A bridge from pynetdicom's association threads to the asyncio backends.

pynetdicom runs one thread per association; the backends are async. The portal
owns an event loop in a background thread and runs coroutines on it for the
calling thread, with a deadline.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class Portal:
    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._own = loop is None
        self.loop = loop or asyncio.new_event_loop()
        self._thread: threading.Thread | None = None

    def start(self) -> "Portal":
        if self._own and self._thread is None:
            self._thread = threading.Thread(target=self.loop.run_forever, name="scp-portal", daemon=True)
            self._thread.start()
        return self

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the portal's loop and wait for it (from another thread)."""
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError(f"backend call exceeded {timeout} s") from None

    def stop(self) -> None:
        if self._own and self._thread is not None:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=10)
            self._thread = None
