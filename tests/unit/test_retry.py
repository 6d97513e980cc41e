"""The one retry policy: jittered exponential backoff on tenacity."""

from __future__ import annotations

import pytest

from archive.core.retry import Backoff, retrying, retrying_sync


class Flaky:
    """Fails ``failures`` times with ``error``, then returns ``result``."""

    def __init__(self, failures: int, error: type[Exception] = ConnectionError, result: object = "done") -> None:
        self.failures, self.error, self.result, self.calls = failures, error, result, 0

    def __call__(self) -> object:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error(f"failure {self.calls}")
        return self.result


async def no_sleep(seconds: float) -> None:
    return None


def test_delay_doubles_up_to_the_cap_within_the_jitter() -> None:
    policy = Backoff(first=0.1, cap=1.0)
    for attempt, base in ((1, 0.1), (2, 0.2), (3, 0.4), (4, 0.8), (5, 1.0), (60, 1.0)):
        delays = [policy.delay(attempt) for _ in range(200)]
        assert all(0.5 * base <= d <= 1.5 * base for d in delays), attempt
        assert max(delays) - min(delays) > 0.2 * base  # jittered, not a fixed value


async def test_retries_until_success_and_reports_each_retry() -> None:
    flaky, seen = Flaky(3), []

    async def call() -> object:
        return flaky()

    result = await retrying(Backoff(0.01, 0.1), ConnectionError, sleep=no_sleep,
                            on_retry=lambda n, delay, exc: seen.append((n, type(exc).__name__)))(call)
    assert result == "done" and flaky.calls == 4
    assert seen == [(1, "ConnectionError"), (2, "ConnectionError"), (3, "ConnectionError")]


async def test_gives_up_after_its_attempts_with_the_last_error() -> None:
    flaky = Flaky(10)

    async def call() -> object:
        return flaky()

    with pytest.raises(ConnectionError, match="failure 3"):
        await retrying(Backoff(0.01, 0.1, attempts=3), ConnectionError, sleep=no_sleep)(call)
    assert flaky.calls == 3


async def test_other_errors_are_not_retried() -> None:
    flaky = Flaky(1, error=ValueError)

    async def call() -> object:
        return flaky()

    with pytest.raises(ValueError):
        await retrying(Backoff(0.01, 0.1), ConnectionError, sleep=no_sleep)(call)
    assert flaky.calls == 1


async def test_give_up_stops_an_endless_policy() -> None:
    flaky, stopping = Flaky(100), {"now": False}

    async def call() -> object:
        if flaky.calls == 4:
            stopping["now"] = True  # e.g. SIGTERM while the backend is down
        return flaky()

    with pytest.raises(ConnectionError, match="failure 5"):
        await retrying(Backoff(0.01, 0.1), ConnectionError, give_up=lambda: stopping["now"], sleep=no_sleep)(call)
    assert flaky.calls == 5


def test_sync_until_true_retries_falsy_results_and_returns_the_last() -> None:
    answers = iter([False, False, True])
    assert retrying_sync(Backoff(0.01, 0.1), ConnectionError, sleep=lambda s: None, until_true=True)(
        lambda: next(answers)) is True
    never = Flaky(0, result=False)
    assert retrying_sync(Backoff(0.01, 0.1, attempts=4), ConnectionError, sleep=lambda s: None,
                         until_true=True)(never) is False
    assert never.calls == 4
