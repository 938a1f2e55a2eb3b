from __future__ import annotations

from typing import Any

import pytest

from engine import EngineError, RetryPolicy
from engine.pollers import PollSchedule, check_http_params


def test_backoff_grows_by_factor_and_stops_at_max_delay() -> None:
    policy = RetryPolicy(max_attempts=10, min_delay=1, max_delay=5, factor=2)
    assert [policy.delay(n) for n in range(1, 6)] == [1, 2, 4, 5, 5]


def test_a_failure_can_ask_for_its_own_delay_within_the_cap() -> None:
    class Limited(Exception):
        retry_after = 2.5

    class Greedy(Exception):
        retry_after = 999

    policy = RetryPolicy(max_attempts=3, min_delay=1, max_delay=30)
    assert policy.delay(1, Limited()) == 2.5
    assert policy.delay(1, Greedy()) == 30


@pytest.mark.parametrize("kwargs", [{"max_attempts": 101}, {"factor": 0.5}, {"max_delay": 10**9}])
def test_retry_policy_bounds(kwargs: dict[str, Any]) -> None:
    with pytest.raises(EngineError):
        RetryPolicy(**kwargs)


def test_poll_schedule_bounds() -> None:
    PollSchedule(0.5, 10, timeout=60)
    with pytest.raises(EngineError, match="interval"):
        PollSchedule(0.001, 10, timeout=60)
    with pytest.raises(EngineError, match="timeout"):
        PollSchedule(1, 10, timeout=0)


def test_poll_schedule_backs_off_to_its_cap_and_round_trips_through_poll_state() -> None:
    schedule = PollSchedule(interval=1, max_interval=5, backoff=2, timeout=60)
    assert [schedule.delay(polls) for polls in range(1, 5)] == [2, 4, 5, 5]
    state = schedule.state(polls=3)
    assert state == {"interval": 1, "max_interval": 5, "backoff": 2, "timeout": 60, "polls": 3}
    assert PollSchedule.from_state(state) == schedule
    # The defaults the scheduler reads from a poll_state that lacks a field.
    assert PollSchedule.from_state({"interval": 2}) == PollSchedule(2, 2, 1.0, 3600)


def test_http_poll_params() -> None:
    check_http_params("https://example.com/x", {"Accept": "application/json"})
    with pytest.raises(EngineError, match="http"):
        check_http_params("ftp://x", None)
    with pytest.raises(EngineError, match="looks secret"):
        check_http_params("https://x", {"X-Api-Key": "k"})


class _RateLimited(Exception):
    def __init__(self, retry_after: float, max_retry_after: float | None, extra: int) -> None:
        super().__init__("429")
        self.retry_after = retry_after
        self.max_retry_after = max_retry_after
        self.extra_attempts = extra


def test_a_failure_with_its_own_bound_waits_past_max_delay() -> None:
    policy = RetryPolicy(max_attempts=3, min_delay=1, max_delay=60)
    assert policy.delay(1, _RateLimited(360.0, 900.0, 0)) == 360.0
    assert policy.delay(1, _RateLimited(7200.0, 900.0, 0)) == 900.0
    assert policy.delay(1, _RateLimited(360.0, None, 0)) == 60.0


def test_a_failure_may_claim_extra_attempts_within_the_cap() -> None:
    policy = RetryPolicy(max_attempts=3)
    assert policy.attempts_for(ValueError()) == 3
    assert policy.attempts_for(_RateLimited(1.0, None, 20)) == 23
    assert policy.attempts_for(_RateLimited(1.0, None, 500)) == 100
