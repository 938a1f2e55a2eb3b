"""The outage reporter: one line when an outage starts, one when it ends, and one at ERROR when
a permanent error keeps coming back."""

from __future__ import annotations

import logging

import pytest

from engine.exceptions import DatabaseError
from engine.outage import Outage, backoff


def error(message: str, transient: bool) -> DatabaseError:
    return DatabaseError(message, transient=transient)


def test_outage_reports_once_and_escalates_a_repeated_permanent_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="test.outage")
    outage = Outage(logging.getLogger("test.outage"), settle=0.0)
    transient = error("database x: connection is closed", True)
    for _ in range(5):
        outage.failed(transient)
    assert outage.ongoing
    outage.recovered()
    assert not outage.ongoing
    refused = error("database x: permission denied", False)
    for _ in range(5):
        outage.failed(refused)
    outage.recovered()
    messages = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert messages == [
        ("WARNING", "database unavailable: database x: connection is closed; retrying"),
        ("WARNING", "database reachable again after 0.0 s"),
        ("WARNING", "database unavailable: database x: permission denied; retrying"),
        ("ERROR", "database keeps refusing: database x: permission denied; still retrying"),
        ("WARNING", "database reachable again after 0.0 s"),
    ], messages


def test_failures_before_the_database_settled_are_the_same_outage(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="test.outage")
    outage = Outage(logging.getLogger("test.outage"), settle=3600.0)
    outage.failed(error("database x: connection is closed", True))
    outage.recovered()  # answered once, not yet for `settle` seconds
    outage.failed(error("database x: terminating connection", True))
    outage.recovered()
    assert outage.ongoing
    assert [r.getMessage() for r in caplog.records] == [
        "database unavailable: database x: connection is closed; retrying"
    ]


def test_backoff_doubles_to_a_cap_with_jitter() -> None:
    for attempt, ceiling in [(0, 0.1), (1, 0.2), (3, 0.8), (10, 5.0), (1000, 5.0)]:
        delays = {backoff(attempt) for _ in range(50)}
        assert all(ceiling / 2 <= d <= ceiling for d in delays), (attempt, delays)
        assert len(delays) > 1  # jittered


def test_at_start_up_only_a_server_that_never_answered_is_final() -> None:
    import socket

    from engine.outage import never_answered

    assert never_answered(ConnectionRefusedError(111, "Connection refused"))
    assert never_answered(socket.gaierror(-2, "Name or service not known"))
    assert never_answered(TimeoutError("connect timed out"))
    # Accepted, then dropped (a restarting server, or a proxy in front of one): ridden out.
    assert not never_answered(ConnectionError("unexpected connection_lost() call"))
    assert not never_answered(ConnectionResetError(104, "Connection reset by peer"))
