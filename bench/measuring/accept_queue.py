"""Connections the kernel has completed but the server has not accept()ed yet.

A client's connect() returns once the handshake is done and the connection sits in the
listener's accept queue; a server that accepts slowly (fork: one fork() per accept) may not hold
them yet when the window opens. Their requests would then wait in socket buffers, and the point
would measure the accept loop's backlog instead of the model. For a listening socket, ss(8)'s
Recv-Q is the accept queue's current length (sk_ack_backlog, net/ipv4/tcp_diag.c), read through
netlink sock_diag with the filter applied in the kernel, so it stays cheap at a million sockets.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable

POLL_S = 0.02


def accept_queue(port: int) -> int | None:
    """Connections waiting in the accept queues of every listener on TCP `port` (all of an
    SO_REUSEPORT group); None when ss is missing or says nothing about the port."""
    ss = shutil.which("ss")
    if ss is None:
        return None
    try:
        proc = subprocess.run([ss, "-Hltn", f"sport = :{port}"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    queued, listeners = 0, 0
    for line in proc.stdout.splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[0] == "LISTEN" and fields[1].isdigit():
            queued += int(fields[1])
            listeners += 1
    return queued if proc.returncode == 0 and listeners else None


def wait_accepted(port: int, timeout_s: float, failure: Callable[[], str | None]) -> tuple[float, int | None]:
    """Wait (at most `timeout_s` s) until nothing waits in `port`'s accept queues, or `failure()`
    gives a reason. Returns the seconds waited and what is still queued (0 when all were
    accepted, None when the queue cannot be read here)."""
    started = time.monotonic()
    while True:
        queued = accept_queue(port)
        waited = time.monotonic() - started
        if not queued or waited >= timeout_s or failure() is not None:
            return waited, queued
        # Polling a kernel counter that no event reports, bounded by the timeout.
        time.sleep(POLL_S)
