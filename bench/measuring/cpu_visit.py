"""Bring the kernel's per-CPU accounting up to date by running on each CPU for a moment.

Two figures the harness reads about another CPU lag behind it while that CPU is busy or idle:
- a running task's CPU time (/proc/PID/schedstat, /proc/PID/stat) is its se.sum_exec_runtime,
  which the scheduler adds to only at its next event on that CPU (kernel/sched/fair.c
  update_curr: a tick, a switch, a wake-up); reading it from elsewhere does not update it
  (kernel/sched/cputime.c thread_group_cputime updates only the reader's own task). With
  HZ=250 that is up to 4 ms behind;
- an idle period still running is not yet in the CPU's idle_sleeptime (kernel/time/tick-sched.c
  tick_nohz_stop_idle, bench.measuring.idle_clock).
Moving the calling thread onto the CPU ends both: once it runs there, the task it displaced
has been switched out (put_prev_task -> update_curr brings its run time up to date), and an
idle CPU has left idle to run it (tick_nohz_idle_exit). While it runs there, neither moves.
After it leaves, the figures lag again, but only by the time since: reading there, or right
after, instead of a tick or a whole idle period behind.

The visit costs the CPU two context switches (tens of µs) each time, and the time of whatever
the thread reads there (a tenth of a millisecond for the host's idle readings, up to about
4 ms for the CPU times of a server of 128 threads): the harness makes it only at a window's
two edges, on the server's pinned CPUs.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable


def arrive(cpus: Iterable[int]) -> tuple[set[int], bool]:
    """Run the calling thread on each of `cpus` in turn (sched_setaffinity(2) returns only once
    the thread runs on an allowed CPU), whatever its own affinity, and stay on the last.
    Returns the affinity to give back (`leave`), and False when there was none to visit or the
    thread may not run on one of them (EINVAL: a cpuset without it; it stays where it was)."""
    affinity = os.sched_getaffinity(0)
    wanted = list(cpus)
    try:
        for cpu in wanted:
            os.sched_setaffinity(0, {cpu})
    except OSError:
        leave(affinity)
        return affinity, False
    return affinity, bool(wanted)


def leave(affinity: set[int]) -> None:
    """Give the calling thread the affinity `arrive` returned."""
    with contextlib.suppress(OSError):
        os.sched_setaffinity(0, affinity)


def visit(cpus: Iterable[int], then: Callable[[], object] | None = None) -> bool:
    """`arrive` on `cpus`, call `then()` there, and `leave`; False as for `arrive` (the CPUs
    not visited then lag, and `then()` runs wherever the thread is).

    Reading on the CPU read about is what makes that CPU's figures exact: it cannot be idle,
    nor run another task, while the reader runs there."""
    affinity, visited = arrive(cpus)
    try:
        if then is not None:
            then()
    finally:
        leave(affinity)
    return visited
