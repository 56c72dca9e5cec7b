"""What the rest of the host did during a window: per-CPU /proc/stat, and CPU not ours.

Process CPU times leave out softirq (where much of loopback TCP is paid) and say nothing of
other tenants: steal from the hypervisor, or other processes on the same CPUs. Both are read
here so that a disturbed point can be flagged instead of silently believed.
"""

from __future__ import annotations

import os
import resource
import time
from dataclasses import dataclass

from bench.measuring.idle_clock import IdleReading, idle_seconds, read_idle

# Columns of a "cpuN" line in /proc/stat, in USER_HZ ticks.
_FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")
# Beyond these, a point is flagged as disturbed.
STEAL_LIMIT_PCT = 2.0
FOREIGN_LIMIT_PCT = 5.0


def _seconds(start: dict[str, int], end: dict[str, int]) -> dict[str, float]:
    """Each /proc/stat field's growth from `start` to `end` (one CPU's ticks), in seconds."""
    return {k: (end.get(k, 0) - start.get(k, 0)) * TICK_S for k in _FIELDS}


def read_cpu_ticks() -> dict[int, dict[str, int]]:
    ticks: dict[int, dict[str, int]] = {}
    with open("/proc/stat") as fh:
        for line in fh:
            if line.startswith("cpu") and line[3].isdigit():
                name, *values = line.split()
                ticks[int(name[3:])] = dict(zip(_FIELDS, map(int, values), strict=False))
    return ticks


def own_cpu_s() -> float:
    """CPU of the harness itself and of every child it has reaped (finished points)."""
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


@dataclass
class HostSnapshot:
    at: float
    ticks: dict[int, dict[str, int]]
    harness_cpu_s: float
    # Idle time to the nanosecond (bench.measuring.idle_clock), when /proc/timer_list is readable.
    idle: IdleReading | None = None


def snapshot(with_idle: bool = False) -> HostSnapshot:
    """/proc/stat and our own CPU; `with_idle` reads /proc/timer_list first (idle to the
    nanosecond, bench.measuring.idle_clock: idle_seconds takes the larger of the two idle
    figures). Only a window's edges need it: the kernel prints that file with interrupts off,
    at a cost that grows with the number of timers on the host."""
    at, idle = time.monotonic(), read_idle() if with_idle else None
    return HostSnapshot(at, read_cpu_ticks(), own_cpu_s(), idle)


@dataclass
class Interference:
    seconds: float
    steal_pct: float
    softirq_pct: float
    busy_pct: float
    foreign_cpu_pct: float
    per_cpu: dict[int, dict[str, float]]

    @property
    def disturbed(self) -> str:
        """Why the window is not to be trusted, or '' when it is."""
        return self.disturbed_by()

    def disturbed_by(self, steal_only: bool = False) -> str:
        why = []
        if self.steal_pct > STEAL_LIMIT_PCT:
            why.append(f"steal {self.steal_pct:.1f}%")
        if not steal_only and self.foreign_cpu_pct > FOREIGN_LIMIT_PCT:
            why.append(f"other processes used {self.foreign_cpu_pct:.1f}% of the CPUs")
        return ", ".join(why)


def compare(before: HostSnapshot, after: HostSnapshot, ours_cpu_s: float) -> Interference:
    """Host CPU between two snapshots; `ours_cpu_s` is what our server and load workers used
    (the harness's own CPU is added here). Percentages are of all the host's CPUs."""
    seconds = max(after.at - before.at, 1e-9)
    per_cpu: dict[int, dict[str, float]] = {}
    totals = dict.fromkeys(_FIELDS, 0.0)
    for cpu, end in after.ticks.items():
        start = before.ticks.get(cpu, end)
        d = _seconds(start, end)
        per_cpu[cpu] = {k: round(100.0 * v / seconds, 1) for k, v in d.items()}
        for k, v in d.items():
            totals[k] += v
    capacity = seconds * max(len(after.ticks), 1)
    process_cpu = totals["user"] + totals["nice"] + totals["system"]
    ours = ours_cpu_s + (after.harness_cpu_s - before.harness_cpu_s)
    busy = process_cpu + totals["irq"] + totals["softirq"]
    return Interference(
        seconds=seconds,
        steal_pct=100.0 * totals["steal"] / capacity,
        softirq_pct=100.0 * totals["softirq"] / capacity,
        busy_pct=100.0 * busy / capacity,
        foreign_cpu_pct=100.0 * max(process_cpu - ours, 0.0) / capacity,
        per_cpu=per_cpu,
    )


@dataclass(frozen=True)
class CpuSplit:
    """Busy seconds of a set of CPUs between two snapshots, by where the time went."""

    user_s: float
    sys_s: float
    softirq_s: float
    seconds: float
    # Busy time on a CPU where no tick landed in user, system, irq or softirq (a short window
    # at low load): it counts in the total, but nothing says how it splits.
    unsplit_s: float = 0.0

    @property
    def busy_s(self) -> float:
        return self.user_s + self.sys_s + self.softirq_s + self.unsplit_s


def _idle_s(snap: HostSnapshot, cpu: int) -> float:
    """Idle plus iowait seconds of `cpu` at `snap`, to the nanosecond where timer_list was read."""
    ticks = snap.ticks[cpu]
    return idle_seconds(snap.idle, cpu, (ticks["idle"] + ticks["iowait"]) * TICK_S)


def cpu_split(before: HostSnapshot, after: HostSnapshot, cpus: tuple[int, ...]) -> CpuSplit:
    """What `cpus` were busy with from `before` to `after`, in seconds, from /proc/stat's per-CPU
    lines (man 5 proc): user = user + nice, sys = system + irq, softirq alone.

    This includes the kernel's network work done in softirq on these CPUs, whoever it was for:
    on loopback a sender's CPU runs the receiver's side of TCP (net/core/dev.c: netif_rx, then
    net_rx_action on the same CPU). Without CONFIG_IRQ_TIME_ACCOUNTING the softirq served in a
    task's context is charged to that task too (kernel/sched/cputime.c), so beside a process
    that keeps these CPUs busy the two figures are close: the difference is what ran beside it.

    The busy total is the interval minus idle and iowait: all the time the CPU was not idle,
    steal included. Steal (the hypervisor running something else while this CPU had work) is
    kept to the nanosecond too, but /proc/stat alone prints it, in 10 ms units: subtracted,
    one such unit arriving in a 1 s window would take up to 10 ms that the server did run off
    the busy time (a task's run time leaves steal out, CONFIG_PARAVIRT_TIME_ACCOUNTING). So
    it stays in, and is reported beside (steal_pct), where it flags the window when large.

    User, system, irq and softirq are sampled one tick at a time (kernel/sched/cputime.c,
    CONFIG_TICK_CPU_ACCOUNTING), a few percent of noise over a 2 s window, while under NO_HZ
    idle and iowait are kept to the nanosecond (kernel/time/tick-sched.c). /proc/stat prints
    them in USER_HZ units (10 ms); /proc/timer_list, read by root, in nanoseconds
    (bench.measuring.idle_clock). So the total comes from idle, exact for a CPU the reading was
    made on (bench.measuring.cpu_visit; 10 ms per CPU at each end without /proc/timer_list),
    and only its split from the sampled fields; the interval is then the span between the two
    timer_list readings, on the clock they were taken with. (cpuidle's per-state residency, in
    µs, would be finer too, but it counts the interrupts and softirqs served while idle as
    idle, and the idle loop's own work as busy.)"""
    seconds = max(after.at - before.at, 0.0)
    if before.idle is not None and after.idle is not None:
        seconds = max(after.idle.now_ns - before.idle.now_ns, 0) / 1e9
    user = sys_ = soft = unsplit = 0.0
    for cpu in cpus:
        end, start = after.ticks.get(cpu), before.ticks.get(cpu)
        if end is None or start is None:
            continue
        d = _seconds(start, end)
        parts = (d["user"] + d["nice"], d["system"] + d["irq"], d["softirq"])
        sampled = sum(parts)
        idle = _idle_s(after, cpu) - _idle_s(before, cpu)
        busy = min(max(seconds - idle, 0.0), seconds)
        if sampled <= 0:
            # Ticks missed a light, bursty load: the total from idle still stands.
            unsplit += busy
            continue
        user += busy * parts[0] / sampled
        sys_ += busy * parts[1] / sampled
        soft += busy * parts[2] / sampled
    return CpuSplit(user, sys_, soft, seconds, unsplit)


def wait_for_quiet(max_wait_s: float, busy_limit_pct: float = 10.0, step_s: float = 0.2) -> tuple[float, float]:
    """Wait (at most `max_wait_s`) until the host's CPUs are mostly idle before a point.

    Returns (seconds waited, busy % of the last step). This is not synchronisation with our
    own processes, none run now: it is waiting out other tenants' load, bounded."""
    started = time.monotonic()
    busy = 100.0
    while True:
        before = snapshot()
        time.sleep(step_s)
        busy = compare(before, snapshot(), 0.0).busy_pct
        waited = time.monotonic() - started
        if busy <= busy_limit_pct or waited >= max_wait_s:
            return waited, busy
