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
from dataclasses import dataclass

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


def thread_ctx_switches(pid: int) -> tuple[int, int]:
    """Voluntary and involuntary context switches of every thread of a process.

    /proc/PID/status (what psutil reads) counts the main thread only, which would show a
    thread-per-connection server as never switching."""
    vol = invol = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0, 0
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/status") as fh:
                for line in fh:
                    if line.startswith("voluntary_ctxt_switches:"):
                        vol += int(line.split()[1])
                    elif line.startswith("nonvoluntary_ctxt_switches:"):
                        invol += int(line.split()[1])
        except OSError:
            continue
    return vol, invol


def sample_tree(pid: int, with_uss: bool = False, with_ctx: bool = False, with_fds: bool = False) -> TreeSample | None:
    """One reading of the tree, timed at its middle (the processes are read one after another).

    `with_uss` adds the unique and proportional set sizes (reads smaps; summed over a forked
    tree USS counts no shared page and PSS each exactly once, where RSS would count them per
    child), `with_ctx` every thread's context switches, `with_fds` the open descriptors."""
    started = time.monotonic()
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return None
    user = sys_ = 0.0
    rss = threads = fds = vol = invol = uss = pss = 0
    alive = 0
    for proc in procs:
        try:
            with proc.oneshot():
                times = proc.cpu_times()
                user += times.user + times.children_user
                sys_ += times.system + times.children_system
                rss += proc.memory_info().rss
                threads += proc.num_threads()
                if with_fds:
                    fds += proc.num_fds()
                if with_ctx:
                    v, i = thread_ctx_switches(proc.pid)
                    vol += v
                    invol += i
                if with_uss:
                    full = proc.memory_full_info()
                    uss += full.uss
                    pss += full.pss
                alive += 1
        except psutil.Error:
            continue
    at = (started + time.monotonic()) / 2
    if not with_uss:
        return TreeSample(at, user, sys_, rss, threads, fds, alive, vol, invol)
    return TreeSample(at, user, sys_, rss, threads, fds, alive, vol, invol, uss, pss)


@dataclass
class WindowUsage:
    cpu_user_s: float
    cpu_sys_s: float
    peak_rss_bytes: int
    peak_threads: int
    peak_fds: int
    peak_processes: int
    seconds: float
    ctx_voluntary: int | None
    ctx_involuntary: int | None
    uss_bytes: int | None
    pss_bytes: int | None = None


class TreeSampler:
    """Brackets a window: `begin()` at its start, `tick()` during it, `end()` at its close."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.first: TreeSample | None = None
        self.last: TreeSample | None = None
        self.peaks = [0, 0, 0, 0]

    def _take(self, **costly: bool) -> TreeSample | None:
        sample = sample_tree(self.pid, **costly)
        if sample is not None:
            self.peaks = [
                max(self.peaks[0], sample.rss_bytes),
                max(self.peaks[1], sample.threads),
                max(self.peaks[2], sample.fds),
                max(self.peaks[3], sample.processes),
            ]
            self.last = sample
        return sample

    def begin(self) -> None:
        self.first = self._take(with_ctx=True)

    def tick(self) -> None:
        self._take()

    def end(self) -> WindowUsage | None:
        self._take(with_uss=True, with_ctx=True, with_fds=True)
        if self.first is None or self.last is None or self.last is self.first:
            return None
        return WindowUsage(
            cpu_user_s=self.last.cpu_user_s - self.first.cpu_user_s,
            cpu_sys_s=self.last.cpu_sys_s - self.first.cpu_sys_s,
            peak_rss_bytes=self.peaks[0],
            peak_threads=self.peaks[1],
            peak_fds=self.peaks[2],
            peak_processes=self.peaks[3],
            seconds=self.last.at - self.first.at,
            ctx_voluntary=_growth(self.first.ctx_voluntary, self.last.ctx_voluntary),
            ctx_involuntary=_growth(self.first.ctx_involuntary, self.last.ctx_involuntary),
            uss_bytes=self.last.uss_bytes,
            pss_bytes=self.last.pss_bytes,
        )


def _growth(first: int, last: int) -> int | None:
    """A counter's increase over the window, or None when it shrank: threads or children that
    ended took their counts with them, so the difference would be a wrong number."""
    return last - first if last >= first else None


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
