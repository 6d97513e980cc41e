"""The one retry policy of the archive: exponential backoff with jitter, run by tenacity.

Every place that tries again states how with a :class:`Backoff` (first delay, cap,
attempts) and gets its loop from tenacity: the indexer while a backend is down, catalog
serialization failures, a search index that is not searchable yet, Storage Commitment
reports to a peer and checks of instances not indexed yet. The delay before retry ``n``
is ``min(cap, first * 2**(n-1))``, times a random factor between 0.5 and 1.5, so that
processes that failed together do not retry together (Orthanc spreads its serialization
retries the same way).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    retry_if_result,
    stop_after_attempt,
    stop_any,
    stop_before_delay,
    stop_never,
)
from tenacity.retry import retry_base
from tenacity.stop import stop_base

ExceptionTypes = type[BaseException] | tuple[type[BaseException], ...]
# (attempt that failed, seconds until the next, its exception or None for an unwanted result)
OnRetry = Callable[[int, float, BaseException | None], None]


@dataclass(frozen=True)
class Backoff:
    first: float  # seconds before the first retry (before jitter)
    cap: float  # longest wait between two attempts (before jitter)
    attempts: int | None = None  # attempts in all, the first included; None: until told to stop
    within: float | None = None  # no attempt starts later than this many seconds after the first

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        return min(self.cap, self.first * 2 ** min(attempt - 1, 30)) * random.uniform(0.5, 1.5)

    def _wait(self, state: RetryCallState) -> float:
        return self.delay(state.attempt_number)

    def _stop(self, give_up: Callable[[], bool] | None) -> stop_base:
        stops: list[stop_base] = [stop_after_attempt(self.attempts) if self.attempts else stop_never]
        if self.within is not None:
            stops.append(stop_before_delay(self.within))
        if give_up is not None:
            stops.append(_StopWhen(give_up))
        return stop_any(*stops)


class _StopWhen(stop_base):
    def __init__(self, condition: Callable[[], bool]) -> None:
        self.condition = condition

    def __call__(self, retry_state: RetryCallState) -> bool:
        return self.condition()


def _condition(on: ExceptionTypes, until_true: bool) -> retry_base:
    condition: retry_base = retry_if_exception_type(on)
    if until_true:  # a falsy result is a failed attempt too
        condition = condition | retry_if_result(lambda result: not result)
    return condition


def _before_sleep(on_retry: OnRetry | None) -> Callable[[RetryCallState], Any] | None:
    if on_retry is None:
        return None

    def report(state: RetryCallState) -> None:
        outcome = state.outcome
        error = outcome.exception() if outcome is not None and outcome.failed else None
        on_retry(state.attempt_number, state.upcoming_sleep, error)

    return report


def _last_result(state: RetryCallState) -> Any:
    """What the last attempt returned (or raised), instead of tenacity's RetryError."""
    assert state.outcome is not None
    return state.outcome.result()


def retrying(policy: Backoff, on: ExceptionTypes, *, give_up: Callable[[], bool] | None = None,
             sleep: Callable[[float], Awaitable[None]] = asyncio.sleep, on_retry: OnRetry | None = None,
             until_true: bool = False) -> AsyncRetrying:
    """``async for attempt in retrying(...): with attempt: ...`` retries the block on ``on``.

    When the attempts run out or ``give_up()`` turns true, the last exception is raised (the
    last result returned, with ``until_true``). ``sleep`` may return early (a stopping worker).
    """
    return AsyncRetrying(retry=_condition(on, until_true), wait=policy._wait, stop=policy._stop(give_up),
                         sleep=sleep, before_sleep=_before_sleep(on_retry), reraise=True,
                         retry_error_callback=_last_result if until_true else None)


def retrying_sync(policy: Backoff, on: ExceptionTypes, *, give_up: Callable[[], bool] | None = None,
                  sleep: Callable[[float], None] = time.sleep, on_retry: OnRetry | None = None,
                  until_true: bool = False) -> Retrying:
    """The same loop for threads (pynetdicom's association threads)."""
    return Retrying(retry=_condition(on, until_true), wait=policy._wait, stop=policy._stop(give_up),
                    sleep=sleep, before_sleep=_before_sleep(on_retry), reraise=True,
                    retry_error_callback=_last_result if until_true else None)


async def pause(stopping: asyncio.Event, seconds: float) -> None:
    """Wait ``seconds``, or less when ``stopping`` is set (a worker's sleep between attempts)."""
    try:
        await asyncio.wait_for(stopping.wait(), timeout=seconds)
    except asyncio.TimeoutError:
        pass
