"""One request's path through a server, read from a timed strace (bench.tracing.strace_log): which call
the server was in when the client sent the request, how it learned that data had arrived,
which call copied it to user space, and which sent the echo.

Stevens (UNP, 3rd ed., §6.2, figures 6.1-6.6) splits an input operation into two phases:
waiting for the data to be ready, then copying it from the kernel to the process. The five I/O
models differ in which phase blocks the process:

- blocking (figure 6.1): one recvfrom blocks through both phases;
- non-blocking (6.2): recvfrom fails with EAGAIN until data is there (busy polling), then copies;
- I/O multiplexing (6.3): select/poll/epoll_wait blocks in the wait, recvfrom copies;
- signal-driven (6.4): the data's arrival raises a signal (here a queued real-time signal,
  taken synchronously with sigwaitinfo, i.e. rt_sigtimedwait), then recvfrom copies;
- asynchronous (6.5): the kernel does both phases and posts a completion (io_uring: the
  process only waits in io_uring_enter; no recvfrom at all).

A request here is one client send and the echo it read back, both stamped with time.time()
(CLOCK_REALTIME), the clock strace -ttt prints. "In progress when the client sent" is the
test for blocking: the call's entry is before the send and its return after it.
"""

from __future__ import annotations

import bisect
import statistics
from dataclasses import asdict, dataclass, field
from typing import Any

from bench.tracing.strace_log import TracedCall

READ_CALLS = frozenset({"read", "readv", "recv", "recvfrom", "recvmsg", "recvmmsg"})
WRITE_CALLS = frozenset({"write", "writev", "send", "sendto", "sendmsg", "sendmmsg"})
READINESS_CALLS = frozenset(
    {"select", "_newselect", "pselect6", "poll", "ppoll", "epoll_wait", "epoll_pwait", "epoll_pwait2"}
)
SIGNAL_WAITS = frozenset({"rt_sigtimedwait", "rt_sigsuspend", "pause", "sigsuspend"})
COMPLETION_WAITS = frozenset({"io_uring_enter"})

# How the process learned that the request's data had arrived (Stevens' figure 6.6 columns).
BLOCKING = "blocking"
BUSY_POLLING = "busy polling"
READINESS = "readiness"
SIGNAL = "signal"
COMPLETION = "completion"
UNEXPLAINED = "unexplained"

# Roles of a call on the request's path.
WAIT = "wait for data"
WAIT_AND_COPY = "wait + copy"
POLL = "poll (EAGAIN)"
COPY = "copy to user"
ECHO = "send echo"
NEXT_WAIT = "waits for the next request"
OTHER = "other"

# Consecutive failed calls of one thread, at least this many, are drawn as one run.
RUN_MIN = 3


@dataclass(frozen=True)
class Exchange:
    """One request as the client saw it: when it began sending and when it had read the whole
    echo (s, CLOCK_REALTIME)."""

    sent: float
    received: float

    @property
    def round_trip_s(self) -> float:
        return self.received - self.sent


@dataclass(frozen=True)
class Step:
    """One call on a request's path, or a run of consecutive failed calls of one thread (drawn
    as one block). Times in s on CLOCK_REALTIME; `calls` counts the calls it stands for and
    `names` their syscall names with counts."""

    tid: int
    start: float
    end: float
    role: str
    label: str
    result: str
    calls: int = 1
    names: dict[str, int] = field(default_factory=dict)
    blocked: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RequestPath:
    """The server's side of one request: its pattern, the calls it took, and its phases.

    `calls` are the calls entered during this request's cycle: after the previous request's
    echo returned, up to this request's echo returning (in a steady exchange, one request's
    worth). `wait_s`: from the entry of the wait (or the first failed poll) until the process
    learned of the data (s); `copy_s`: the call that copied the data (s; None when the copy is
    inside the wait, as in a blocking recvfrom, or done by the kernel, as with io_uring);
    `learned_after_send_s`: from the client's send to that moment (s)."""

    index: int
    exchange: Exchange
    pattern: str
    calls: list[TracedCall]
    steps: list[Step]
    wait_call: str | None
    copy_call: str | None
    echo_call: str | None
    blocked_in: list[str]
    wait_s: float | None
    copy_s: float | None
    learned_after_send_s: float | None
    failed: int
    threads: int

    def summary(self) -> dict[str, Any]:
        """The request's figures, JSON-ready (times in µs)."""
        return {
            "index": self.index,
            "pattern": self.pattern,
            "calls": len(self.calls),
            "failed_calls": self.failed,
            "calls_by_name": _count(self.calls),
            "blocked_in": self.blocked_in,
            "wait_call": self.wait_call,
            "copy_call": self.copy_call,
            "echo_call": self.echo_call,
            "wait_us": _us(self.wait_s),
            "copy_us": _us(self.copy_s),
            "learned_after_send_us": _us(self.learned_after_send_s),
            "round_trip_us": _us(self.exchange.round_trip_s),
            "sent": self.exchange.sent,
            "received": self.exchange.received,
            "threads": self.threads,
        }


def request_paths(calls: list[TracedCall], exchanges: list[Exchange], payload: int | None = None) -> list[RequestPath]:
    """Each exchange's path through the traced calls, in order. `calls` as parse_trace returns
    them (sorted by entry); exchanges in the order the client made them; `payload` the bytes of
    each request, so that a request read or echoed in several calls is booked whole (None: one
    read and one send each). An exchange whose data call or echo cannot be found in the trace
    gets the pattern UNEXPLAINED, and the next one starts after its echo was read."""
    finished = [c for c in calls if c.finished]
    starts = [c.start for c in finished]
    paths: list[RequestPath] = []
    cycle_start = float("-inf")
    for index, exchange in enumerate(exchanges):
        # Only the calls that can belong to this request: entered after the echo before the
        # previous one was read, and before the next request was sent.
        lo = exchanges[index - 2].received if index >= 2 else float("-inf")
        hi = exchanges[index + 1].sent if index + 1 < len(exchanges) else float("inf")
        window = finished[bisect.bisect_right(starts, lo) : bisect.bisect_left(starts, hi)]
        path = _request_path(index, window, exchange, cycle_start, payload)
        paths.append(path)
        cycle_start = max(cycle_start, _echo_end(path))
    return paths


def _echo_end(path: RequestPath) -> float:
    echoes = [s.end for s in path.steps if s.role == ECHO]
    return echoes[-1] if echoes else path.exchange.received


def _request_path(
    index: int, finished: list[TracedCall], ex: Exchange, cycle_start: float, payload: int | None
) -> RequestPath:
    # Blocked: in the kernel across the send and then returned success; a call that failed with
    # EAGAIN was only passing through (non-blocking), even when it was in the kernel then.
    in_progress = [c for c in finished if _blocked(c, ex.sent)]
    data = next((c for c in finished if c.name in READ_CALLS and (c.retval or 0) > 0 and c.end >= ex.sent), None)
    completion = next((c for c in finished if c.name in COMPLETION_WAITS and c.end >= ex.sent), None)
    # Starts, not ends, are compared with the client's stamps: a call's end as strace reports
    # it includes the ptrace stop at its exit, which may come after the client already had the echo.
    if data is not None and data.start <= ex.received:
        learned_by, wait, pattern = _readiness(data, finished, ex)
        reads = _whole(finished, data, READ_CALLS, data.tid, payload)
        sends = _whole(finished, None, WRITE_CALLS, None, payload, after=data.end)
        copies = [] if pattern == BLOCKING else reads
    elif completion is not None and completion.start <= ex.received and not _reads_between(finished, ex):
        # The kernel copied the data before it posted the completion: no copy call at all.
        pattern, wait, learned_by, reads, copies = COMPLETION, completion, completion, [], []
        sends = [c for c in finished if c.name in COMPLETION_WAITS and c.start >= completion.end][:1]
    else:
        return _unexplained(index, ex, in_progress)
    if not sends or sends[-1].start > ex.received:
        return _unexplained(index, ex, in_progress)
    echo = sends[-1]
    if pattern != BLOCKING:
        # A read that returned the data without waiting for it (a turn of a polling loop that
        # strace stamped just before the send) was in the kernel then, but did not block.
        in_progress = [c for c in in_progress if not any(c is r for r in reads)]
    # One request's worth of calls: those entered after the previous echo returned, up to this
    # echo, less any still in the kernel after it (the next request's wait), plus this request's
    # own wait and reads even when they were entered before (a blocking read re-entered at once).
    cycle = [c for c in finished if cycle_start < c.start <= echo.start and c.end <= echo.end]
    own = [c for c in (wait, *reads) if c is not None and c.start <= cycle_start]
    cycle = sorted({id(c): c for c in [*own, *cycle]}.values(), key=lambda c: (c.start, c.tid))
    following = [c for c in finished if cycle_start < c.start <= echo.start and c.end > echo.end]
    shown = sorted({id(c): c for c in [*cycle, *following]}.values(), key=lambda c: (c.start, c.tid))
    roles = _roles(shown, pattern, wait, copies, sends, data, echo)
    if pattern == BUSY_POLLING and data is not None:
        polls = [c for c in cycle if c.errno == "EAGAIN" and c.tid == data.tid and c.end <= data.start]
        wait_s = data.start - polls[0].start if polls else None
    else:
        wait_s = (wait.end - wait.start) if wait is not None else None
    return RequestPath(
        index=index,
        exchange=ex,
        pattern=pattern,
        calls=cycle,
        steps=_steps(shown, roles, in_progress),
        wait_call=wait.name if wait is not None else None,
        copy_call=copies[0].name if copies else None,
        echo_call=echo.name,
        blocked_in=[c.name for c in in_progress],
        wait_s=wait_s,
        copy_s=sum(c.duration for c in copies) if copies else None,
        learned_after_send_s=learned_by.end - ex.sent if learned_by is not None else None,
        failed=sum(1 for c in cycle if c.errno is not None),
        threads=len({c.tid for c in cycle}),
    )


def _blocked(call: TracedCall, sent: float) -> bool:
    return call.start < sent < call.end and call.errno is None


def _whole(
    calls: list[TracedCall],
    first: TracedCall | None,
    names: frozenset[str],
    tid: int | None,
    payload: int | None,
    after: float = float("-inf"),
) -> list[TracedCall]:
    """The successful calls of `names` (on thread `tid`, or any), from `first` (or the first
    entered after `after`) on, until they have moved `payload` bytes (one call when None)."""
    out: list[TracedCall] = []
    moved = 0
    started = first is None
    for c in calls:
        started = started or c is first
        if not started or c.start < after or c.name not in names or (c.retval or 0) <= 0:
            continue
        if tid is not None and c.tid != tid:
            continue
        out.append(c)
        moved += c.retval or 0
        if payload is None or moved >= payload:
            break
    return out


def _readiness(data: TracedCall, calls: list[TracedCall], ex: Exchange) -> tuple[TracedCall, TracedCall | None, str]:
    """(the call whose return told the process, the wait call, pattern) for a request whose
    data a read-type call returned."""
    mine = [c for c in calls if c.tid == data.tid and c.end <= data.start]
    polled = bool(mine) and mine[-1].errno == "EAGAIN" and mine[-1].name in READ_CALLS | {"accept", "accept4"}
    if data.start < ex.sent and not polled:
        return data, data, BLOCKING
    waits = [c for c in mine if c.name in READINESS_CALLS | SIGNAL_WAITS | COMPLETION_WAITS and c.end >= ex.sent]
    if waits and not polled:
        wait = waits[-1]
        pattern = SIGNAL if wait.name in SIGNAL_WAITS else COMPLETION if wait.name in COMPLETION_WAITS else READINESS
        return wait, wait, pattern
    if any(c.errno == "EAGAIN" and c.name in READ_CALLS for c in mine[-RUN_MIN * 2 :]):
        # Entered before the send by strace's clock but not waiting: its thread had just failed
        # with EAGAIN, so this read was one more turn of the polling loop.
        return data, None, BUSY_POLLING
    return data, None, UNEXPLAINED


def _reads_between(calls: list[TracedCall], ex: Exchange) -> bool:
    return any(c.name in READ_CALLS and (c.retval or 0) > 0 and ex.sent <= c.end <= ex.received for c in calls)


def _roles(
    shown: list[TracedCall],
    pattern: str,
    wait: TracedCall | None,
    copies: list[TracedCall],
    sends: list[TracedCall],
    data: TracedCall | None,
    echo: TracedCall,
) -> list[str]:
    roles = []
    for c in shown:
        if c is wait and pattern == BLOCKING:
            roles.append(WAIT_AND_COPY)
        elif c is wait:
            roles.append(WAIT)
        elif any(c is x for x in copies):
            roles.append(COPY)
        elif any(c is x for x in sends):
            roles.append(ECHO)
        elif c.errno == "EAGAIN" and data is not None and c.tid == data.tid and c.end <= data.start:
            roles.append(POLL)
        elif c.end > echo.end and c.start < echo.end:
            # Entered before this echo returned, still in the kernel after: the next request's wait.
            roles.append(NEXT_WAIT)
        else:
            roles.append(OTHER)
    return roles


def _steps(calls: list[TracedCall], roles: list[str], blocked: list[TracedCall]) -> list[Step]:
    """Calls as drawn: consecutive failed calls of one thread (RUN_MIN or more) become one run."""
    steps: list[Step] = []
    i = 0
    while i < len(calls):
        j = i
        while j < len(calls) and calls[j].errno is not None and calls[j].tid == calls[i].tid and roles[j] == roles[i]:
            j += 1
        if j - i >= RUN_MIN:
            run = calls[i:j]
            names = _count(run)
            errnos = sorted({c.errno for c in run if c.errno})
            label = ", ".join(f"{n} ×{k:,}" for n, k in names.items())
            steps.append(
                Step(run[0].tid, run[0].start, run[-1].end, roles[i], label, " ".join(errnos), len(run), names)
            )
            i = j
            continue
        c = calls[i]
        asleep = any(c is b for b in blocked)
        steps.append(Step(c.tid, c.start, c.end, roles[i], c.name, c.result, 1, {c.name: 1}, asleep))
        i += 1
    return steps


def _unexplained(index: int, ex: Exchange, in_progress: list[TracedCall]) -> RequestPath:
    return RequestPath(
        index, ex, UNEXPLAINED, [], [], None, None, None, [c.name for c in in_progress], None, None, None, 0, 0
    )


def _count(calls: list[TracedCall]) -> dict[str, int]:
    out: dict[str, int] = {}
    for c in calls:
        out[c.name] = out.get(c.name, 0) + 1
    return out


def _us(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1e6, 1)


def typical(paths: list[RequestPath]) -> RequestPath | None:
    """The request drawn: among the explained requests of the most frequent pattern, the one
    with the median round trip (the lower of the two middle ones for an even count); None when
    none was explained."""
    explained = [p.pattern for p in paths if p.pattern != UNEXPLAINED]
    if not explained:
        return None
    common = max(dict.fromkeys(explained), key=explained.count)
    chosen = sorted((p for p in paths if p.pattern == common), key=lambda p: p.exchange.round_trip_s)
    return chosen[(len(chosen) - 1) // 2]


def medians(paths: list[RequestPath]) -> dict[str, float | None]:
    """Medians over the explained requests of: calls, failed calls, wait, copy and the time from
    send to the process learning of the data (µs), and the traced round trip (µs)."""
    explained = [p.summary() for p in paths if p.pattern != UNEXPLAINED]
    keys = ("calls", "failed_calls", "wait_us", "copy_us", "learned_after_send_us", "round_trip_us")
    out: dict[str, float | None] = {}
    for key in keys:
        values = [s[key] for s in explained if s[key] is not None]
        out[key] = float(statistics.median(values)) if values else None
    return out
