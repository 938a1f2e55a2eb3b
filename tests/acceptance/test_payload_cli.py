"""`engine trigger` and the payload's type: an annotation registered by the worker validates
without the app's code, and a trigger without `--payload` sends `{}`, validated like any other."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow

APPS = Path(__file__).parent / "apps"


def _one_line_error(result: Any) -> str:
    assert result.returncode == 1, str(result)
    assert "Traceback" not in result.stderr, str(result)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), str(result)
    return str(lines[0])


def test_an_annotated_payload_and_an_omitted_one_through_the_cli(procs: Any) -> None:
    url = f"sqlite+aiosqlite:///{procs.cwd / 'engine.db'}"
    # With --app, the annotation validates before anything is written.
    line = _one_line_error(
        procs.cli("trigger", "annotated-order", "--payload", '{"order_id": "x"}',
                  "--app", str(APPS / "annotated.py"), "--database-url", url)
    )  # fmt: skip
    assert "payload for job 'annotated-order' is invalid: order_id" in line
    worker = procs.worker("annotated.py", url)
    # Without --app: the JSON schema the worker registered from the annotation.
    line = _one_line_error(procs.cli("trigger", "annotated-order", "--database-url", url))
    assert line == (
        "error: payload for job 'annotated-order' is invalid: payload: "
        "'order_id' is a required property"
    )
    assert procs.list(url) == []
    typed = procs.trigger(url, "annotated-order", {"order_id": 7})
    untyped = procs.trigger(url, "annotated-any")  # no --payload
    for run_id in (typed, untyped):
        procs.wait_status(url, run_id, "COMPLETED", timeout=60)
    assert procs.show(url, typed)["output"] == {"type": "Order", "order_id": 7, "item": "pen"}
    shown = procs.show(url, untyped)
    assert (shown["payload"], shown["output"]) == ({}, {"payload": {}})
    worker.close()
