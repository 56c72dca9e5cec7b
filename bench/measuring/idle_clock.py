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

import re
from dataclasses import dataclass

TIMER_LIST = "/proc/timer_list"
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


def read_idle() -> IdleReading | None:
    """Read /proc/timer_list now; None when it cannot be read (not root) or parsed."""
    try:
        with open(TIMER_LIST) as fh:
            return parse_timer_list(fh.read())
    except OSError:
        return None


def idle_seconds(reading: IdleReading | None, cpu: int, proc_stat_idle_s: float) -> float:
    """CPU `cpu`'s idle plus iowait time (s) at a reading: the larger of two lower bounds, the
    completed periods to the nanosecond and /proc/stat's figure (`proc_stat_idle_s`, read just
    after, running period included, truncated to USER_HZ)."""
    if reading is None or cpu not in reading.sleep_ns:
        return proc_stat_idle_s
    return max(reading.sleep_ns[cpu] / 1e9, proc_stat_idle_s)
