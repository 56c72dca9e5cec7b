"""The timeline of a point: completions and errors per 100 ms, from the scheduled start to the
window's end, warm-up included.

It lives in loadgen because it is the workers' wire format, like loadgen.histogram: the Python
worker records it with Recorder, the compiled worker (loadgen/native/worker.c) writes the same
JSON, and the manager (bench.running.load_workers) merges the workers' timelines with `merge`. What a
timeline says about the point (its stability) is judged in bench.measuring.stability.

Format (one worker's, in its `result` message):

    {"start": S, "step_s": 0.1, "completed": [c0, c1, ...], "errors": [e0, e1, ...]}

The merged one (the point's, stored in histograms.jsonl under "timeline") adds the measured
window in seconds from S: "window": [warm-up, warm-up + duration].

S is the schedule's `start_at` (CLOCK_MONOTONIC seconds, shared by every process). Bin i covers
[S + i*step_s, S + (i+1)*step_s), with two adjustments: an edge within SNAP_S of the window's
start or end is moved onto it exactly, so that a window whose warm-up and length are whole
multiples of step_s starts and ends on bin edges (then the completions in its bins are exactly
the requests the worker counted in the window); and the last bin ends at the window's end, so
it is shorter when the window is not a multiple of step_s. `completed` counts verified echoes
(churn: verified cycles, connect to echo) by the time their echo was complete; `errors` counts
errors of every kind by the time they were counted. Anything after the window's end is left
out. A span beyond MAX_BINS bins keeps its first MAX_BINS.
"""

from __future__ import annotations

import bisect
import math
from typing import Any

# 100 ms: short enough to show a stall of a few hundred ms, long enough that a bin of a point at
# a few thousand req/s holds hundreds of completions (counting noise, see bench.measuring.stability).
STEP_S = 0.1
# Window edges are computed by the manager as start_at + warm-up: float rounding puts them
# nanoseconds off a bin edge even when the warm-up is a whole number of bins.
SNAP_S = 1e-6
# An hour of 100 ms bins (two arrays of 36,000 integers per worker); a longer point keeps its
# first hour.
MAX_BINS = 36_000


def bin_count(start: float, end: float, step: float = STEP_S) -> int:
    """Bins from `start` to `end` (seconds): ceil((end - start) / step), where a remainder
    under SNAP_S does not make a bin of its own; at least 1, at most MAX_BINS."""
    return max(1, min(MAX_BINS, math.ceil((end - start - SNAP_S) / step)))


class Recorder:
    """One worker's timeline. `edges[i]` is bin i's start, `edges[n]` the timeline's end and
    `edges[n + 1]` infinity, so that `seek` of any time gives a valid bin: bin n collects what
    came after the end and is never reported.

    The request loops keep the current bin and the next edge in locals and call `seek` only
    when a completion crosses that edge: a comparison and an increment per completion."""

    def __init__(self, start: float, window_start: float, window_end: float, step: float = STEP_S) -> None:
        n = bin_count(start, window_end, step)
        edges = [start + i * step for i in range(n)]
        for i, t in enumerate(edges):
            if abs(t - window_start) <= SNAP_S:
                edges[i] = window_start
        edges.append(window_end if n < MAX_BINS else start + n * step)
        edges.append(math.inf)
        self.start, self.step, self.n = start, step, n
        self.edges = edges
        self.completed = [0] * (n + 1)
        self.errors = [0] * (n + 1)

    def seek(self, t: float) -> int:
        """The bin holding time `t` (seconds, CLOCK_MONOTONIC); 0 before the start, n after the end."""
        return max(0, bisect.bisect_right(self.edges, t) - 1)

    def error(self, t: float) -> None:
        """Count one error at time `t`."""
        self.errors[self.seek(t)] += 1

    def message(self) -> dict[str, Any]:
        """The `timeline` of the worker's result message (the format above)."""
        return {
            "start": self.start,
            "step_s": self.step,
            "completed": self.completed[: self.n],
            "errors": self.errors[: self.n],
        }


def merge(
    timelines: list[dict[str, Any] | None], start: float, window_start: float, window_end: float
) -> dict[str, Any] | None:
    """The point's timeline: the workers' bins summed element-wise (shorter ones padded with
    zeros), with the schedule's `start` and its window (`window_start`, `window_end`: CLOCK_MONOTONIC
    seconds) as "window": [from, to] in seconds from `start`. None when a worker sent none (a
    worker from before timelines) or the list is empty: a partial sum would read as a drop in
    throughput.

    Raises ValueError when the workers' bins do not line up (another start or step: they were
    not given the same schedule)."""
    if not timelines or any(t is None for t in timelines):
        return None
    step = timelines[0]["step_s"]
    n = max(len(t["completed"]) for t in timelines)
    completed, errors = [0] * n, [0] * n
    for t in timelines:
        if abs(t["start"] - start) > SNAP_S or t["step_s"] != step:
            raise ValueError(
                f"timelines do not line up: start {t['start']:.6f} s, step {t['step_s']} s; "
                f"expected {start:.6f} s, {step} s"
            )
        for i, c in enumerate(t["completed"]):
            completed[i] += c
        for i, e in enumerate(t["errors"]):
            errors[i] += e
    return {
        "start": start,
        "step_s": step,
        "window": [window_start - start, window_end - start],
        "completed": completed,
        "errors": errors,
    }


def window_bins(timeline: dict[str, Any]) -> range:
    """Indices of the bins lying wholly inside the merged timeline's window (as Recorder places
    its edges: within SNAP_S of a window edge counts as on it)."""
    step = timeline["step_s"]
    window_from, window_to = timeline["window"]
    first = math.ceil((window_from - SNAP_S) / step)
    stop = math.floor((window_to + SNAP_S) / step)
    return range(max(first, 0), min(stop, len(timeline["completed"])))
