"""The manager-worker protocol: JSON lines, worker stdout -> manager, manager -> worker stdin.

Worker: `connected` once its connections are open, then, after the manager's `schedule`,
one `result`. Times are CLOCK_MONOTONIC seconds, which every process on the host shares, so
all workers measure the same window without any sleep-based coordination.

    -> {"event": "connected", "worker": W, "connected": N, "errors": {kind: n}, "seconds": S,
        "histogram": H, "notes": [...]}
    <- {"event": "schedule", "start_at": S, "window_start": A, "window_end": B}
    -> {"event": "result", "worker": W, "requests": N, "sent_in_window": N, "errors": {kind: n},
        "window_start": A', "window_end": B', "cpu_user_s": U, "cpu_sys_s": Y,
        "live_connections": N, "max_rss_bytes": R, "closed_before_echo": N, "histogram": H,
        "uncorrected": H, "connect_histogram": H,
        "timeline": {"start": S, "step_s": 0.1, "completed": [c0, ...], "errors": [e0, ...]}}

The worker starts its load at `start_at`; `requests` are the echoes verified at a time t with
A <= t < B, and A', B' the window as its clock saw it. Histograms are encoded HdrHistograms
(the compiled worker sends `X_counts` bucket lists instead; loadgen.histogram.fold_counts).
After `result` the worker keeps its connections open until its stdin closes: the manager
reads the server's counters at the window's end, and a thread- or process-per-connection
server would lose its exited threads' counts if the connections closed at that moment.
`closed_before_echo` counts the connections the server closed or reset before their first
echo (idle ones included; churn: before the cycle's echo), a subset of the reset and short_read
errors. `timeline` counts verified echoes (churn: verified cycles) and errors of every kind per bin i
= [S + i*0.1, S + (i+1)*0.1) s, from `start_at` to the window's end, warm-up included; an
edge within 1 µs of A or B lies on it, and the last bin ends at B (loadgen.timeline).
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
