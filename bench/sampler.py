"""Resource use of the server's process tree, read with psutil.

CPU is taken as two snapshots bracketing the measured window; memory, threads and
descriptors are sampled through it and their peaks kept. Children that have already been
reaped still count, through the parent's children_user/children_system times.
"""

from __future__ import annotations

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


def sample_tree(pid: int) -> TreeSample | None:
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return None
    user = sys_ = 0.0
    rss = threads = fds = 0
    alive = 0
    for proc in procs:
        try:
            with proc.oneshot():
                times = proc.cpu_times()
                user += times.user + times.children_user
                sys_ += times.system + times.children_system
                rss += proc.memory_info().rss
                threads += proc.num_threads()
                fds += proc.num_fds()
                alive += 1
        except psutil.Error:
            continue
    return TreeSample(time.monotonic(), user, sys_, rss, threads, fds, alive)


@dataclass
class WindowUsage:
    cpu_user_s: float
    cpu_sys_s: float
    peak_rss_bytes: int
    peak_threads: int
    peak_fds: int
    peak_processes: int
    seconds: float


class TreeSampler:
    """Brackets a window: `begin()` at its start, `tick()` during it, `end()` at its close."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.first: TreeSample | None = None
        self.last: TreeSample | None = None
        self.peaks = [0, 0, 0, 0]

    def _take(self) -> TreeSample | None:
        sample = sample_tree(self.pid)
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
        self.first = self._take()

    def tick(self) -> None:
        self._take()

    def end(self) -> WindowUsage | None:
        self._take()
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
        )
