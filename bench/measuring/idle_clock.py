"""Each CPU's idle time to the nanosecond, from the kernel's tick-sched counters.

/proc/stat prints idle and iowait in USER_HZ units (10 ms), although under NO_HZ the kernel
keeps them to the nanosecond (fs/proc/stat.c get_idle_time -> kernel/time/tick-sched.c
get_cpu_idle_time_us). Over a 2 s window that is up to 0.5% per CPU either way: enough for a
saturated CPU's busy time (the window less its idle) to read below the CPU time of the very
process that kept it busy. /proc/timer_list (kernel/time/timer_list.c, print_cpu) prints the
same counters in nanoseconds, with the clock reading they were taken at:

    now at 35643486706608 nsecs           ktime_get(), CLOCK_MONOTONIC
    cpu: 0
      .idle_sleeptime : ... nsecs         idle time of the completed idle periods
      .iowait_sleeptime: ... nsecs        the same, while a task of this CPU waited on I/O

An idle period still running is added to these sums only when it ends (tick_nohz_stop_idle),
and nothing in the file says reliably whether one is running (idle_exittime moves only when the
tick was stopped). /proc/stat's figure does include it, truncated to 10 ms. Both are therefore
lower bounds of the true idle time at the reading, and `idle_seconds` takes the larger: exact
when the CPU is not idle at the reading (a loaded server's CPU, at a window's edges), within
the running period's length and never worse than /proc/stat's 10 ms when it is. An interrupt
served on an idle CPU ends the idle period for its duration (tick_irq_enter ->
tick_nohz_stop_idle), so that time counts as busy, as in /proc/stat.

The file is readable by root only (mode 0400): elsewhere `read_idle` returns None, and the
idle time is /proc/stat's alone.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass

TIMER_LIST = "/proc/timer_list"
# A read takes about 0.1 ms on this 2-CPU host at rest; with 2,000 threads in time.sleep (4,030
# hrtimers) it took 157 ms (2026-11-30).
MAX_READ_S = 0.002
# About 2.5 ms of reading at this rate (quadratic): beyond it, the file is not read again.
MAX_TIMERS = 500
_NOW = re.compile(r"^now at (\d+) nsecs$", re.MULTILINE)
_CPU = re.compile(r"^cpu: (\d+)$", re.MULTILINE)
_FIELD = re.compile(r"^\s+\.(idle_sleeptime|iowait_sleeptime)\s*: (\d+) nsecs$", re.MULTILINE)


@dataclass(frozen=True)
class IdleReading:
    """One reading of /proc/timer_list: its CLOCK_MONOTONIC time (ns) and, per CPU, the idle
    plus iowait time of the idle periods completed by then (ns)."""

    now_ns: int
    sleep_ns: dict[int, int]


def parse_timer_list(text: str) -> IdleReading | None:
    """The idle reading in the text of /proc/timer_list, or None when it lacks the clock
    reading or a CPU's two sleep times (a kernel without NO_HZ prints none)."""
    now = _NOW.search(text)
    starts = list(_CPU.finditer(text))
    if now is None or not starts:
        return None
    sleep: dict[int, int] = {}
    for i, start in enumerate(starts):
        block = text[start.end() : starts[i + 1].start() if i + 1 < len(starts) else len(text)]
        fields = dict(_FIELD.findall(block))
        if len(fields) != 2:
            return None
        sleep[int(start.group(1))] = int(fields["idle_sleeptime"]) + int(fields["iowait_sleeptime"])
    return IdleReading(int(now.group(1)), sleep)


_too_many_timers = False  # this process reads the file no more


def read_idle(max_read_s: float = MAX_READ_S) -> IdleReading | None:
    """Read /proc/timer_list now; None when it cannot be read (not root) or parsed.

    The kernel takes "now at" first and prints every CPU's figures after it, so a read that
    was slow (preempted, or long) dates other CPUs' figures late: after one that took longer
    than `max_read_s` (s), only the figure of the CPU the thread is pinned to stays (none when
    it is not pinned to one), and /proc/stat's serve for the rest. That CPU cannot have idled
    during the read, with this thread runnable on it all along. The kernel prints every CPU's
    hrtimers too, one lock round with interrupts off per timer (print_active_timers: quadratic
    in their number), so a host with more than MAX_TIMERS of them (as many threads in a timed
    sleep) is not read again by this process: each read would stall its CPUs."""
    global _too_many_timers
    if _too_many_timers:
        return None
    started = time.monotonic()
    try:
        with open(TIMER_LIST) as fh:
            text = fh.read()
    except OSError:
        return None
    took = time.monotonic() - started
    if text.count("\n #") > MAX_TIMERS:
        _too_many_timers = True
    reading = parse_timer_list(text)
    if reading is None or took <= max_read_s:
        return reading
    here = os.sched_getaffinity(0)
    cpu = next(iter(here)) if len(here) == 1 else None
    if cpu not in reading.sleep_ns:
        return None
    return IdleReading(reading.now_ns, {cpu: reading.sleep_ns[cpu]})


def idle_seconds(reading: IdleReading | None, cpu: int, proc_stat_idle_s: float) -> float:
    """CPU `cpu`'s idle plus iowait time (s) at a reading: the larger of two lower bounds, the
    completed periods to the nanosecond and /proc/stat's figure (`proc_stat_idle_s`, read just
    after, running period included, truncated to USER_HZ)."""
    if reading is None or cpu not in reading.sleep_ns:
        return proc_stat_idle_s
    return max(reading.sleep_ns[cpu] / 1e9, proc_stat_idle_s)
