"""The manager-worker protocol: JSON lines, worker stdout -> manager, manager -> worker stdin.

Worker: `connected` once its connections are open, then, after the manager's `schedule`,
one `result`. Times are CLOCK_MONOTONIC seconds, which every process on the host shares, so
all workers measure the same window without any sleep-based coordination.
"""

from __future__ import annotations

import json
import sys
from typing import IO, Any


def send(message: dict[str, Any], stream: IO[str] | None = None) -> None:
    stream = stream or sys.stdout
    stream.write(json.dumps(message, separators=(",", ":")) + "\n")
    stream.flush()


def parse(line: str) -> dict[str, Any] | None:
    """A control message, or None for a line that is not one (stray output is ignored)."""
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        message = json.loads(line)
    except json.JSONDecodeError:
        return None
    return message if isinstance(message, dict) and "event" in message else None
