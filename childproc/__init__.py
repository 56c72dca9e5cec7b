"""What every process the harness starts does first: pin itself, and die with the harness.

Below bench, servers and loadgen, which all import it (and it imports none of them), so that a
server or a load worker never depends on the harness above it. Kept free of heavy imports:
servers and load workers import it at start-up.
"""

from __future__ import annotations

import ctypes
import os
import signal

PR_SET_PDEATHSIG = 1  # linux/prctl.h

try:
    # Looked up once, at import: a forked child (fork's per-connection process, strace before
    # exec) then does no dlopen() work, which is not safe after fork in a threaded parent.
    _PRCTL = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):
    _PRCTL = None


def set_parent_death_signal(parent_pid: int | None = None) -> bool:
    """Ask the kernel to SIGTERM this process when its parent dies (prctl(2) PR_SET_PDEATHSIG).
    Returns False when the parent is already gone: its PID is no longer `parent_pid`, or, with
    None, this process was re-parented to init. Safe in a forked child and in a preexec_fn."""
    if _PRCTL is not None:
        _PRCTL(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    return os.getppid() != 1 if parent_pid is None else os.getppid() == parent_pid


def die_with_parent() -> None:
    """Ask the kernel to SIGTERM this process when the process that started it dies."""
    if not set_parent_death_signal():
        # The parent died before prctl took effect.
        os.kill(os.getpid(), signal.SIGTERM)


def parse_cpus(text: str) -> set[int]:
    """'0,2-3' -> {0, 2, 3}."""
    cpus: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        lo, _, hi = part.partition("-")
        cpus.update(range(int(lo), int(hi or lo) + 1))
    return cpus


def format_cpus(cpus: set[int] | list[int]) -> str:
    """{0, 2, 3} -> '0,2,3' (the form parse_cpus reads)."""
    return ",".join(str(c) for c in sorted(cpus))


def pin_to_cpus(cpus: set[int] | None) -> None:
    """Pin this process to `cpus` (sched_setaffinity(2)); None or empty leaves it as it is."""
    if cpus:
        os.sched_setaffinity(0, cpus)
