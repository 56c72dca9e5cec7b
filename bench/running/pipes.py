"""Reading a child's stdout as JSON control messages without blocking the harness."""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from typing import IO, Any

from loadgen.control import parse


class MessageReader:
    """Collects JSON lines from a pipe on a thread; keeps the last raw lines for error reports."""

    def __init__(self, stream: IO[str], name: str) -> None:
        self.messages: queue.Queue[dict[str, Any]] = queue.Queue()
        # The stream it reads: whoever closes it must not while the thread is blocked reading it.
        self.stream = stream
        self.tail: deque[str] = deque(maxlen=20)
        self.closed = threading.Event()
        self._thread = threading.Thread(target=self._pump, args=(stream,), name=name, daemon=True)
        self._thread.start()

    def _pump(self, stream: IO[str]) -> None:
        try:
            for line in stream:
                self.tail.append(line.rstrip("\n"))
                message = parse(line)
                if message is not None:
                    self.messages.put(message)
        except (OSError, ValueError):
            pass
        finally:
            self.closed.set()

    def next(self, timeout: float) -> dict[str, Any] | None:
        """The next message, or None when none came within `timeout` seconds."""
        try:
            return self.messages.get(timeout=max(timeout, 0.0))
        except queue.Empty:
            return None

    def wait_closed(self, timeout: float) -> bool:
        return self.closed.wait(timeout)


def deadline_in(seconds: float) -> float:
    return time.monotonic() + seconds


def remaining(deadline: float) -> float:
    return max(0.0, deadline - time.monotonic())
