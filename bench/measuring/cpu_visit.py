"""Bring the kernel's per-CPU accounting up to date by running on each CPU for a moment.

Two figures the harness reads about another CPU lag behind it while that CPU is busy or idle:
- a running task's CPU time (/proc/PID/schedstat, /proc/PID/stat) is its se.sum_exec_runtime,
  which the scheduler adds to only at its next event on that CPU (kernel/sched/fair.c
  update_curr: a tick, a switch, a wake-up); reading it from elsewhere does not update it
  (kernel/sched/cputime.c thread_group_cputime updates only the reader's own task). With
  HZ=250 that is up to 4 ms behind;
- an idle period still running is not yet in the CPU's idle_sleeptime (kernel/time/tick-sched.c
  tick_nohz_stop_idle, bench.measuring.idle_clock).
Moving the calling thread onto the CPU ends both: the migration enqueues it there (enqueue_entity
calls update_curr for the task it preempts), and an idle CPU leaves idle to run it. After the
visit the figures lag again, but only by the time since it: well under a millisecond for
readings taken right after, instead of a tick or a whole idle period.

The visit costs the CPU two context switches (tens of µs) each time: the harness makes it only
at a window's two edges, on the server's pinned CPUs.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable


def visit(cpus: Iterable[int]) -> bool:
    """Run the calling thread on each of `cpus` in turn (sched_setaffinity(2) returns only once
    the thread runs on an allowed CPU), whatever its own affinity, then give that back. False
    when there is none to visit, or the thread may not run on one of them (EINVAL: a cpuset
    without it): the figures of the CPUs not visited then lag."""
    wanted = list(cpus)
    if not wanted:
        return False
    affinity = os.sched_getaffinity(0)
    try:
        for cpu in wanted:
            os.sched_setaffinity(0, {cpu})
    except OSError:
        return False
    finally:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, affinity)
    return True
