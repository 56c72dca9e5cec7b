"""Reading `strace -f -ttt -T -o FILE` output: one record per system call, with its thread, its
entry time on the wall clock and its duration.

Line shapes (strace(1), "-f", "-ttt", "-T"; strace 6.x):

    PID  SECONDS.USEC name(args) = result <DURATION>
    PID  SECONDS.USEC name(args <unfinished ...>           the call blocked while another
    PID  SECONDS.USEC <... name resumed>args) = result <D>  thread's call was printed
    PID  SECONDS.USEC restart_syscall(<... resuming interrupted X ...>) = result <D>
    PID  SECONDS.USEC name(args <detached ...>              still in the call when strace left
    PID  SECONDS.USEC --- SIGNAME {siginfo} ---             a signal delivered
    PID  SECONDS.USEC +++ exited with N +++

The time on a line is when strace saw the call enter (for a resumed line: when it returned), in
CLOCK_REALTIME, the clock `time.time()` reads, so a client's own timestamps share the axis.
A call's end is its entry time plus its -T duration: the time from strace seeing the call enter
to seeing it return, which includes the ptrace stops around it, not the kernel's time alone.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_LINE = re.compile(r"^(?P<tid>\d+)\s+(?P<ts>\d+\.\d+)\s+(?P<body>.*)$")
_UNFINISHED = re.compile(r"^(?P<name>\w+)\((?P<args>.*?)\s*<unfinished \.\.\.>$")
_RESUMED = re.compile(r"^<\.\.\. (?P<name>\w+) resumed>(?P<rest>.*)$")
_DETACHED = re.compile(r"^(?P<name>\w+)\((?P<args>.*?)\s*<detached \.\.\.>$")
_COMPLETE = re.compile(r"^(?P<name>\w+)\((?P<args>.*)$")
# ") = RESULT <DURATION>" at the end of a finished call; RESULT may be "?" (no return value).
# Anchored on the last ") = ": a string argument may hold one of its own.
_RESULT = re.compile(
    r"^(?P<args>.*)\)\s+=\s+(?P<result>(?:-?\d+|0x[0-9a-fA-F]+|\?)(?:\s.*?)??)(?:\s+<(?P<duration>\d+\.\d+|unavailable)>)?$"
)
_ERRNO = re.compile(r"^-1 (?P<errno>E[A-Z0-9]+)\b")
_SIGNAL = re.compile(r"^--- (?P<signal>SIG\w+) (?P<info>.*) ---$")


@dataclass(frozen=True)
class TracedCall:
    """One system call of one thread. Times in seconds on CLOCK_REALTIME (s since the epoch);
    `duration` is strace -T's time from entry to return, ptrace stops included (s). `retval` is
    the integer result (None for '?' or a call still running at detach); `errno` the error name
    of a failed call."""

    tid: int
    name: str
    start: float
    duration: float
    result: str
    retval: int | None
    errno: str | None
    args: str
    finished: bool = True

    @property
    def end(self) -> float:
        return self.start + self.duration


@dataclass(frozen=True)
class TracedSignal:
    """A signal strace saw delivered to a thread (s on CLOCK_REALTIME)."""

    tid: int
    name: str
    time: float


def parse_trace(text: str) -> tuple[list[TracedCall], list[TracedSignal]]:
    """Every complete call (an unfinished one joined with its resumption) and every delivered
    signal, in entry order. A call strace left unfinished at detach is kept with
    `finished=False` and its duration up to the last time the trace saw. Lines that are none of
    the shapes above (exits, strace's own notes) are skipped."""
    calls: list[TracedCall] = []
    signals: list[TracedSignal] = []
    pending: dict[int, tuple[str, float, str]] = {}
    last_seen = 0.0
    for line in text.splitlines():
        m = _LINE.match(line.strip())
        if m is None:
            continue
        tid, ts, body = int(m["tid"]), float(m["ts"]), m["body"].strip()
        last_seen = max(last_seen, ts)
        if (u := _UNFINISHED.match(body)) is not None:
            pending[tid] = (u["name"], ts, u["args"])
        elif (r := _RESUMED.match(body)) is not None:
            name, start, args = pending.pop(tid, (r["name"], None, ""))
            if "<unfinished ...>" in r["rest"]:
                # Resumed only to be cut short again (a thread killed in the call): no return.
                pending[tid] = (name, ts if start is None else start, args)
                continue
            # Without its entry line (strace attached mid-call), the call began -T before its return.
            call = _finished(tid, name, start, f"{args} {r['rest']}".strip(), resumed_at=ts)
            if call is not None:
                calls.append(call)
        elif (d := _DETACHED.match(body)) is not None:
            pending[tid] = (d["name"], ts, d["args"])
        elif (s := _SIGNAL.match(body)) is not None:
            signals.append(TracedSignal(tid, s["signal"], ts))
        elif body.startswith(("+++", "---")):
            continue
        elif (c := _COMPLETE.match(body)) is not None and (call := _finished(tid, c["name"], ts, c["args"])):
            calls.append(call)
    for tid, (name, start, args) in pending.items():
        calls.append(TracedCall(tid, name, start, max(0.0, last_seen - start), "?", None, None, args, False))
    calls.sort(key=lambda c: (c.start, c.tid))
    return calls, signals


def _finished(tid: int, name: str, start: float | None, rest: str, resumed_at: float = 0.0) -> TracedCall | None:
    r = _RESULT.match(rest)
    if r is None:
        return None
    result = r["result"].strip()
    duration = float(r["duration"]) if r["duration"] and r["duration"] != "unavailable" else 0.0
    if start is None:
        start = resumed_at - duration
    args = r["args"]
    if name == "restart_syscall":
        # The call the tracee was blocked in when strace attached, restarted by the kernel;
        # strace's guess at its name ("resuming interrupted X") is not reliable, so it stays
        # restart_syscall.
        args = ""
    errno = e["errno"] if (e := _ERRNO.match(result)) else None
    return TracedCall(tid, name, start, duration, result, _int_result(result), errno, args)


def _int_result(result: str) -> int | None:
    head = result.split(" ", 1)[0]
    try:
        return int(head, 0)
    except ValueError:
        return None
