"""Serve the fake OpenAI API: ``python -m integrations.openai.testing --port 0``.

Prints ``fake OpenAI listening on http://HOST:PORT/v1`` once ready and serves until SIGINT or
SIGTERM. Steer it from another process with ``/_fake/stats``, ``/_fake/faults``,
``/_fake/reset``, ``/_fake/hooks``, ``/_fake/hold``, ``/_fake/release``, ``/_fake/limits``,
``/_fake/quota``, ``/_fake/usage`` and ``/_fake/concurrency`` (or with
:class:`integrations.openai.testing.process.FakeOpenAIProcess`, which wraps them).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from types import FrameType

from .server import FakeOpenAI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m integrations.openai.testing",
        description="Serve a stateful fake of the OpenAI API.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--run-seconds", type=float, default=0.2)
    parser.add_argument("--file-seconds", type=float, default=0.1)
    parser.add_argument("--response-seconds", type=float, default=0.2)
    parser.add_argument("--requests-per-minute", type=int, default=None)
    parser.add_argument("--tokens-per-minute", type=int, default=None)
    parser.add_argument(
        "--burst-seconds",
        type=float,
        default=None,
        help="each limit's bucket holds this many seconds' worth, not a minute's",
    )
    parser.add_argument(
        "--latency", type=float, default=0.0, help="seconds every API request takes"
    )
    args = parser.parse_args(argv)

    fake = FakeOpenAI(
        host=args.host,
        port=args.port,
        run_seconds=args.run_seconds,
        file_seconds=args.file_seconds,
        response_seconds=args.response_seconds,
        requests_per_minute=args.requests_per_minute,
        tokens_per_minute=args.tokens_per_minute,
        latency=args.latency,
    )
    if args.burst_seconds is not None:
        fake.set_limits(args.requests_per_minute, args.tokens_per_minute, args.burst_seconds)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    fake.start()
    try:
        print(f"fake OpenAI listening on {fake.base_url}", flush=True)
        while not stop.wait(0.2):
            pass
    finally:
        fake.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
