"""Schedules as declared (`@job(schedule=...)`, `Schedule`), the ticks they fire, and the
durations `trigger --delay/--timeout` take."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import BaseModel

from engine import EngineError, Schedule, durations, job
from engine.schedules import (
    MAX_CATCH_UP,
    SKIP_AFTER,
    due_ticks,
    idempotency_key,
    next_after,
    tick_of,
)


def _t(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def test_bad_cron_or_timezone_is_one_clear_error_at_decoration() -> None:
    with pytest.raises(EngineError, match=r"schedule '\* \* \*' is not valid cron .*five fields"):
        job(id="bad-cron", schedule="* * *")
    with pytest.raises(EngineError, match="is not valid cron"):
        job(id="bad-field", schedule="61 * * * *")
    with pytest.raises(EngineError, match="unknown timezone 'Mars/Olympus'"):
        job(id="bad-zone", schedule="0 9 * * *", timezone="Mars/Olympus")
    with pytest.raises(EngineError, match="timezone= needs a schedule="):
        job(id="zone-alone", timezone="UTC")
    with pytest.raises(EngineError, match="missed='some': use one of latest, all, skip"):
        Schedule("* * * * *", missed="some")  # type: ignore[arg-type]
    with pytest.raises(EngineError, match=r"schedule '\* \* \* \* \*' \(UTC\) is twice"):
        job(id="twice", schedule=["* * * * *", Schedule("*  * * * *")])
    with pytest.raises(EngineError, match="timeout=0: give a duration above 0"):
        job(id="no-time", timeout=0)


def test_a_scheduled_job_must_accept_the_tick_payload() -> None:
    class Order(BaseModel):
        order_id: int

    with pytest.raises(EngineError, match=re.escape("its payload is {'scheduled_at': ISO time}")):

        @job(id="scheduled-order", schedule="0 * * * *", payload=Order)
        async def refuses(payload: Order, io: Any, ctx: Any) -> None:
            return None


def test_several_schedules_each_in_its_timezone() -> None:
    @job(id="multi-schedule", schedule=["0 9 * * 1-5", Schedule("*/5 * * * *", "UTC")],
         timezone="Europe/Paris")  # fmt: skip
    async def multi(payload: Any, io: Any, ctx: Any) -> None:
        return None

    paris, utc = multi.schedules
    assert (paris.cron, paris.timezone, paris.missed) == ("0 9 * * 1-5", "Europe/Paris", "latest")
    assert (utc.cron, utc.timezone) == ("*/5 * * * *", "UTC")
    # 09:00 in Paris is 08:00 UTC in winter and 07:00 UTC in summer.
    assert paris.next_after(_t("2026-12-01T12:00:00")) == _t("2026-12-02T08:00:00")
    assert paris.next_after(_t("2026-06-01T12:00:00")) == _t("2026-06-02T07:00:00")


def test_due_ticks_follow_the_missed_policy() -> None:
    due = _t("2026-01-01T00:00:00")
    now = _t("2026-01-01T01:00:30")
    assert due_ticks("*/15 * * * *", "UTC", due, now, "latest") == [_t("2026-01-01T01:00:00")]
    assert due_ticks("*/15 * * * *", "UTC", due, now, "all") == [due + 900 * i for i in range(5)]
    assert due_ticks("*/15 * * * *", "UTC", due, now, "skip") == []
    # On time: the tick itself, whatever the policy ("skip": up to SKIP_AFTER seconds late).
    for policy in ("latest", "all", "skip"):
        assert due_ticks("*/15 * * * *", "UTC", due, due + 0.2, policy) == [due]
    assert due_ticks("*/15 * * * *", "UTC", due, due + SKIP_AFTER, "skip") == [due]
    assert due_ticks("*/15 * * * *", "UTC", due, due + SKIP_AFTER + 1, "skip") == []
    # A month of minutes is not a month of runs: the latest MAX_CATCH_UP.
    ticks = due_ticks("* * * * *", "UTC", due, due + 30 * 86400, "all")
    assert len(ticks) == MAX_CATCH_UP and ticks[-1] == due + 30 * 86400
    assert next_after("* * * * *", "UTC", due) == due + 60


def test_a_tick_has_a_deterministic_idempotency_key() -> None:
    key = idempotency_key("*/15 * * * *", _t("2026-01-01T09:15:00"))
    assert key == "schedule:*/15 * * * *@2026-01-01T09:15:00.000000+00:00"
    # ctx.scheduled_at is read back from it; any other key is no tick.
    assert tick_of(key) == datetime(2026, 1, 1, 9, 15, tzinfo=UTC)
    for other in (
        None,
        "",
        "order-7",
        "schedule:oops@not a time",
        "schedule:x@2026-01-01T00:00:00",
        "event:schedule:x@y",
    ):
        assert tick_of(other) is None


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("10m", 600), ("2h", 7200), ("1d", 86400), ("1h30m", 5400), ("45", 45)],
)
def test_durations_on_the_command_line(text: str, seconds: float) -> None:
    assert durations.parse(text, "--delay") == seconds


@pytest.mark.parametrize("text", ["soon", "", "10x", "-5m", "0s", "20y"])
def test_bad_durations_say_what_to_give(text: str) -> None:
    with pytest.raises(EngineError, match="--delay"):
        durations.parse(text, "--delay")
