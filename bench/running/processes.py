"""Starting and ending the harness's children: always by PID, never leaving one behind."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import psutil

from bench.running.pipes import MessageReader, deadline_in, remaining

# Seconds to wait, once a child's tree is gone, for its readers to reach the end of its output:
# a server's exit statistics come after SIGTERM, and a pipe that a process outside the tree still
# holds must not stop the harness for longer.
READ_TO_END_S = 1.0


def spawn_python(module: str, args: list[str]) -> subprocess.Popen:
    """`python -m module args`, started as `spawn` starts a child."""
    return spawn([sys.executable, "-m", module, *args])


def spawn(argv: list[str]) -> subprocess.Popen:
    """A child of the harness (argv + --die-with-parent) in its own session, so a terminal's
    Ctrl-C reaches only bench, which then stops its children in order; its stdin/stdout are
    the control pipes (text)."""
    return subprocess.Popen(
        [*argv, "--die-with-parent"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        cwd=_project_root(),
    )


def _project_root() -> str:
    # The packages are importable from here even when bench runs from a source checkout.
    return str(Path(__file__).resolve().parents[2])


def process_tree(pid: int) -> list[psutil.Process]:
    """The process and its descendants; psutil.Process objects remember their start time,
    so a PID reused later by somebody else's process is never mistaken for ours."""
    try:
        proc = psutil.Process(pid)
        return [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return []


def terminate_tree(
    popen: subprocess.Popen, grace_s: float = 2.0, readers: Sequence[MessageReader] = ()
) -> float | None:
    """SIGTERM the process (it must release its own children), then SIGKILL whatever of its
    tree is still there after `grace_s`; then give the `readers` of its pipes READ_TO_END_S in
    all to read what it printed to the end. Returns how long it took to exit, or None if
    killed."""
    tree = process_tree(popen.pid)
    started = time.monotonic()
    exited_after: float | None = None
    if popen.poll() is None:
        try:
            popen.send_signal(signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            popen.wait(timeout=grace_s)
            exited_after = time.monotonic() - started
        except subprocess.TimeoutExpired:
            pass
    else:
        exited_after = 0.0
    for proc in tree:
        _kill_if_alive(proc)
    if popen.poll() is None:
        popen.kill()
        popen.wait()
    deadline = deadline_in(READ_TO_END_S)
    for reader in readers:
        reader.wait_closed(remaining(deadline))
    # A pipe whose reader did not reach its end is held by a process outside the tree: it is
    # left to that reader, because closing a stream that another thread is blocked reading
    # waits for that read (the buffer's lock), which ends only when the holder lets go.
    _close_pipes(popen, keep=[reader.stream for reader in readers if not reader.closed.is_set()])
    return exited_after


def _kill_if_alive(proc: psutil.Process) -> None:
    try:
        if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
            proc.kill()
            proc.wait(timeout=2)
    except (psutil.NoSuchProcess, psutil.TimeoutExpired, psutil.AccessDenied):
        pass


def _close_pipes(popen: subprocess.Popen, keep: Sequence[object] = ()) -> None:
    for stream in (popen.stdin, popen.stdout, popen.stderr):
        if stream is not None and not any(stream is kept for kept in keep):
            try:
                stream.close()
            except OSError:
                pass
