"""Resource use of the server's process tree, read with psutil.

CPU is taken as two snapshots bracketing the measured window; memory and threads are sampled
through it and their peaks kept. The costly readings run only at the window's ends, because
they run on the load generator's CPUs and, at a million connections, take seconds: context
switches (every thread's status) at both ends, descriptors (listing /proc/PID/fd) and USS
(smaps) at the end. Children that have already been reaped still count, through the parent's
children_user/children_system times.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import psutil


@dataclass
class TreeSample:
    at: float
    cpu_user_s: float
    cpu_sys_s: float
    rss_bytes: int
    threads: int
    fds: int
    processes: int
    ctx_voluntary: int
    ctx_involuntary: int
    uss_bytes: int | None = None
    pss_bytes: int | None = None
    # user + sys to the nanosecond where the kernel allows (task_runtime_s), in seconds.
    cpu_s: float = 0.0
    # tid -> (voluntary, involuntary) context switches, when read (with_ctx).
    ctx_by_tid: dict[int, tuple[int, int]] = field(default_factory=dict)


def task_runtime_s(pid: int, every_thread: bool = False) -> float | None:
    """Seconds a process has run on a CPU, from /proc/PID/schedstat's first field,
    sum_exec_runtime in ns (kernel/sched/stats.c, CONFIG_SCHED_INFO): of its main thread, or
    with `every_thread` summed over /proc/PID/task/*/schedstat (threads that have exited are
    not there); None where it cannot be read.

    /proc/PID/stat's utime and stime are USER_HZ ticks (10 ms), truncated: fork's thousand
    children, each running a millisecond per second, then read as using no CPU at all."""
    paths = [f"/proc/{pid}/schedstat"]
    if every_thread:
        try:
            paths = [f"/proc/{pid}/task/{tid}/schedstat" for tid in os.listdir(f"/proc/{pid}/task")]
        except OSError:
            return None
    total = 0
    for path in paths:
        try:
            with open(path) as fh:
                total += int(fh.read().split()[0])
        except (OSError, ValueError, IndexError):
            if not every_thread:
                return None
    return total / 1e9


def thread_ctx_switches(pid: int) -> dict[int, tuple[int, int]]:
    """Voluntary and involuntary context switches of each thread of a process, by tid, from
    /proc/PID/task/TID/status (man 5 proc).

    /proc/PID/status (what psutil reads) counts the main thread only, which would show a
    thread-per-connection server as never switching."""
    counts: dict[int, tuple[int, int]] = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return counts
    for tid in tids:
        vol = invol = 0
        try:
            with open(f"/proc/{pid}/task/{tid}/status") as fh:
                for line in fh:
                    if line.startswith("voluntary_ctxt_switches:"):
                        vol = int(line.split()[1])
                    elif line.startswith("nonvoluntary_ctxt_switches:"):
                        invol = int(line.split()[1])
        except (OSError, ValueError):
            continue
        counts[int(tid)] = (vol, invol)
    return counts


def sample_tree(
    pid: int,
    with_uss: bool = False,
    with_ctx: bool = False,
    with_fds: bool = False,
    precise_cpu: bool = False,
    then: Callable[[], object] | None = None,
    first: Callable[[], object] | None = None,
) -> TreeSample | None:
    """One reading of the tree, timed at the middle of its CPU-time reads.

    `with_uss` adds the unique and proportional set sizes (reads smaps; summed over a forked
    tree USS counts no shared page and PSS each exactly once, where RSS would count them per
    child), `with_ctx` every thread's context switches, `with_fds` the open descriptors,
    `precise_cpu` every thread's run time to the nanosecond (cpu_s; otherwise a single-threaded
    process's alone, and a multi-threaded one's from ticks, truncated once); `first` is called
    right before the CPU times are read (after the tree is listed), `then` right after them,
    before the costly reads: readings of the host taken there bracket the tree's closely. These
    costly reads come in a second pass: with a thousand threads or children they take tens of
    milliseconds, and timing the CPU times at the middle of everything would shorten or stretch
    the span a CPU share is divided by."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return None
    user = sys_ = total = 0.0
    rss = threads = fds = uss = pss = 0
    by_tid: dict[int, tuple[int, int]] = {}
    if first is not None:
        first()
    started = time.monotonic()
    alive = []
    for proc in procs:
        try:
            times = proc.cpu_times()
            single = proc.num_threads() == 1
        except psutil.Error:
            continue
        user += times.user + times.children_user
        sys_ += times.system + times.children_system
        ticks = times.user + times.system
        # The ticks, truncated, can only be lower; threads that exited are in them alone.
        precise = task_runtime_s(proc.pid) if single else task_runtime_s(proc.pid, True) if precise_cpu else None
        total += max(precise or 0.0, ticks) + times.children_user + times.children_system
        alive.append(proc)
    at = (started + time.monotonic()) / 2
    if then is not None:
        then()
    counted = 0
    for proc in alive:
        try:
            with proc.oneshot():
                rss += proc.memory_info().rss
                threads += proc.num_threads()
                if with_fds:
                    fds += proc.num_fds()
                if with_ctx:
                    by_tid.update(thread_ctx_switches(proc.pid))
                if with_uss:
                    full = proc.memory_full_info()
                    uss += full.uss
                    pss += full.pss
                counted += 1
        except psutil.Error:
            continue
    vol = sum(v for v, _ in by_tid.values())
    invol = sum(i for _, i in by_tid.values())
    sizes = (uss, pss) if with_uss else (None, None)
    return TreeSample(at, user, sys_, rss, threads, fds, counted, vol, invol, *sizes, cpu_s=total, ctx_by_tid=by_tid)


@dataclass
class WindowUsage:
    # user and sys: the precise total split as the ticks split; None when no tick was sampled.
    cpu_user_s: float | None
    cpu_sys_s: float | None
    peak_rss_bytes: int
    peak_threads: int
    peak_fds: int
    peak_processes: int
    seconds: float
    ctx_voluntary: int | None
    ctx_involuntary: int | None
    uss_bytes: int | None
    pss_bytes: int | None = None
    # user + sys, seconds.
    cpu_s: float = 0.0


class TreeSampler:
    """Brackets a window: `begin()` at its start, `tick()` during it, `end()` at its close."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.first: TreeSample | None = None
        self.last: TreeSample | None = None
        self.peaks = [0, 0, 0, 0]

    def _take(
        self, then: Callable[[], object] | None = None, first: Callable[[], object] | None = None, **costly: bool
    ) -> TreeSample | None:
        sample = sample_tree(self.pid, then=then, first=first, **costly)
        if sample is not None:
            self.peaks = [
                max(self.peaks[0], sample.rss_bytes),
                max(self.peaks[1], sample.threads),
                max(self.peaks[2], sample.fds),
                max(self.peaks[3], sample.processes),
            ]
            self.last = sample
        return sample

    def begin(self, first: Callable[[], object] | None = None, then: Callable[[], object] | None = None) -> None:
        """The window's first reading; `first` runs right before its CPU reading, `then` right
        after it (sample_tree)."""
        self.first = self._take(then, first, with_ctx=True, precise_cpu=True)

    def tick(self) -> None:
        self._take()

    def end(
        self, then: Callable[[], object] | None = None, first: Callable[[], object] | None = None
    ) -> WindowUsage | None:
        """The window's usage; `first` runs right before the last CPU reading, `then` right
        after it (sample_tree)."""
        self._take(then, first, with_uss=True, with_ctx=True, with_fds=True, precise_cpu=True)
        if self.first is None or self.last is None or self.last is self.first:
            return None
        total = max(self.last.cpu_s - self.first.cpu_s, 0.0)
        user_ticks = self.last.cpu_user_s - self.first.cpu_user_s
        sys_ticks = self.last.cpu_sys_s - self.first.cpu_sys_s
        ticks = user_ticks + sys_ticks
        user = total * user_ticks / ticks if ticks > 0 else None
        sys_ = total * sys_ticks / ticks if ticks > 0 else None
        return WindowUsage(
            cpu_user_s=user,
            cpu_sys_s=sys_,
            cpu_s=total,
            peak_rss_bytes=self.peaks[0],
            peak_threads=self.peaks[1],
            peak_fds=self.peaks[2],
            peak_processes=self.peaks[3],
            seconds=self.last.at - self.first.at,
            **_ctx_growth(self.first.ctx_by_tid, self.last.ctx_by_tid),
            uss_bytes=self.last.uss_bytes,
            pss_bytes=self.last.pss_bytes,
        )


def _ctx_growth(first: dict[int, tuple[int, int]], last: dict[int, tuple[int, int]]) -> dict[str, int | None]:
    """Context switches over the window, thread by thread: each thread alive at the end, less
    its count at the start (zero for a thread born in the window). A thread that ended during
    the window took its count with it and is left out, where a difference of totals would
    have gone negative (a thread-per-connection server's exited threads made it shrink); None
    when nothing was read."""
    if not last:
        return {"ctx_voluntary": None, "ctx_involuntary": None}
    vol = invol = 0
    for tid, (v, i) in last.items():
        v0, i0 = first.get(tid, (0, 0))
        vol += max(v - v0, 0)
        invol += max(i - i0, 0)
    return {"ctx_voluntary": vol, "ctx_involuntary": invol}


def kernel_slab_bytes(meminfo: str = "/proc/meminfo") -> int | None:
    """The kernel's slab memory (`Slab:` of /proc/meminfo, man 5 proc), in bytes: where socket,
    file, dentry and epoll structures live; None where it cannot be read."""
    try:
        with open(meminfo) as fh:
            for line in fh:
                if line.startswith("Slab:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None
