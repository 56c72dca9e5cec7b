"""Request loops on open connections: closed loop, and open loop at a fixed rate.

Closed loop: every connection sends a payload, waits for the whole echo, verifies it, repeats.
Open loop (as wrk2 does it): every connection has a fixed schedule of intended send times;
latency is measured from the *intended* time, so a server that stalls is charged for the
requests it delayed (coordinated omission corrected); the service time from the actual send
is kept beside it. Idle connections are held open, silent, and watched for unexpected closes.

One epoll loop drives all of this worker's connections. Only requests that complete inside the
measured window are counted, and the window's length is what the clock measured. Every
completion and error from the scheduled start to the window's end is also counted per 100 ms
bin (loadgen.timeline), warm-up included.
"""

from __future__ import annotations

import gc
import heapq
import resource
import select
import socket
import struct
import time
from collections import Counter
from dataclasses import dataclass

from hdrh.histogram import HdrHistogram

from loadgen import errors
from loadgen.histogram import new_histogram, record_counts
from loadgen.precise_timer import PreciseTimer
from loadgen.timeline import Recorder

# 64 KiB: a 256 KiB buffer per recv() costs page faults and ~10 us of system time each, which
# made the load generator, not the server, the bottleneck.
RECV_SIZE = 65536
# A request that waits this long for its echo is counted as timed out and its connection closed
# (wrk's default --timeout); `--request-timeout` changes it.
REQUEST_TIMEOUT_S = 2.0
RAMP_MAX_S = 1.0
_IN, _OUT, _GONE = select.EPOLLIN, select.EPOLLOUT, select.EPOLLERR | select.EPOLLHUP | select.EPOLLRDHUP


def make_payload(size: int, conn_id: int, seq: int) -> bytes:
    """A payload unique to (connection, sequence) so a misrouted or stale echo is caught."""
    stamp = struct.pack("<IIQ", conn_id, seq, 0x5EED_F00D_CAFE_0000 | (seq & 0xFFFF))
    return (stamp * (size // len(stamp) + 1))[:size]


@dataclass
class Window:
    start: float
    end: float


@dataclass
class LoopResult:
    requests: int
    errors: Counter
    histogram: HdrHistogram
    uncorrected: HdrHistogram | None
    window_start: float
    window_end: float
    cpu_user_s: float
    cpu_sys_s: float
    live_connections: int
    sent_in_window: int
    connect_histogram: HdrHistogram | None = None
    # Completions and errors per 100 ms from the scheduled start (loadgen.timeline's format).
    timeline: dict | None = None
    # Connections the server closed or reset before their first echo (a subset of the reset
    # and short_read errors): what a server shedding connections at its descriptor limit
    # looks like from the client (bench.measuring.shed).
    closed_before_echo: int = 0


class _Conn:
    __slots__ = (
        "sock", "fd", "cid", "seq", "payload", "sent", "received", "t_send", "t_intended", "writing", "answered",
    )  # fmt: skip

    def __init__(self, sock: socket.socket, cid: int) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.cid = cid
        self.seq = 0
        self.payload = b""
        self.sent = 0
        self.received = bytearray()
        self.t_send = 0.0
        self.t_intended = 0.0
        self.writing = False
        # An echo of it was verified: a close after that is not a connection turned away.
        self.answered = False


def run_request_loop(
    sockets: list[socket.socket],
    payload_size: int,
    window: Window,
    start_at: float,
    rate: float | None = None,
    idle: list[socket.socket] | None = None,
    request_timeout_s: float = REQUEST_TIMEOUT_S,
    hold: list[socket.socket] | None = None,
) -> LoopResult:
    """Drive `sockets` (closed loop, or open loop at `rate` req/s over all of them) while
    holding `idle` open, from `start_at` (CLOCK_MONOTONIC seconds) to the window's end; return
    what completed inside `window` (a completion at t counts when window.start <= t <
    window.end), and the timeline of every completion and error since `start_at`. The
    connections still open at the end are closed, or appended to `hold` for the caller to
    keep open (loadgen.__main__ holds them until the manager has read the server)."""
    ep = select.epoll()
    conns: dict[int, _Conn] = {}
    for cid, sock in enumerate(sockets):
        sock.setblocking(False)
        conn = _Conn(sock, cid)
        conns[conn.fd] = conn
        ep.register(conn.fd, _IN)
    idle_socks = {s.fileno(): s for s in idle or ()}
    timer = PreciseTimer()
    ep.register(timer.fd, _IN)
    for fd in idle_socks:
        ep.register(fd, _IN | select.EPOLLRDHUP)
    # Microseconds -> count; folded into the HdrHistogram once at the end, because recording
    # into it per request costs more than the rest of the client's Python work per request.
    corrected: Counter = Counter()
    uncorrected: Counter = Counter()
    errs: Counter = Counter()
    requests = sent_in_window = closed_before_echo = 0
    clock = time.monotonic
    win_start, win_end = window.start, window.end
    timeline = Recorder(start_at, win_start, win_end)
    completed, tl_edges, tl_seek = timeline.completed, timeline.edges, timeline.seek
    tl_bin, tl_next = 0, tl_edges[1]
    # Open loop: each connection sends every `interval` seconds, staggered across connections.
    interval = len(sockets) / rate if rate else 0.0
    due: list[tuple[float, int]] = []  # (intended send time, fd) of connections waiting for their turn

    def fail(conn: _Conn, kind: str) -> None:
        nonlocal closed_before_echo
        errs[kind] += 1
        if kind in (errors.RESET, errors.SHORT_READ) and not conn.answered:
            closed_before_echo += 1
        timeline.error(clock())
        ep.unregister(conn.fd)
        del conns[conn.fd]
        conn.sock.close()

    def send_next(conn: _Conn, intended: float) -> None:
        nonlocal sent_in_window
        conn.seq += 1
        conn.payload = make_payload(payload_size, conn.cid, conn.seq)
        conn.sent = 0
        conn.received.clear()
        conn.t_intended = intended
        conn.t_send = clock()
        if window.start <= conn.t_send < window.end:
            sent_in_window += 1
        push(conn)

    def push(conn: _Conn) -> None:
        try:
            # Small payloads go in one send; only a partial write needs the slice.
            conn.sent += conn.sock.send(memoryview(conn.payload)[conn.sent :] if conn.sent else conn.payload)
        except BlockingIOError:
            pass
        except (ConnectionResetError, BrokenPipeError):
            fail(conn, errors.RESET)
            return
        want_write = conn.sent < len(conn.payload)
        if want_write != conn.writing:
            conn.writing = want_write
            ep.modify(conn.fd, _IN | (_OUT if want_write else 0))

    def expire_stuck(now: float) -> None:
        for conn in [c for c in conns.values() if c.fd not in waiting and now - c.t_send > request_timeout_s]:
            fail(conn, errors.TIMEOUT)

    waiting: set[int] = set()
    _wait_until(start_at)
    # The loop makes no reference cycles; a collector pass would be a pause charged to the server.
    gc.disable()
    first = clock()
    # The first sends are staggered: over one interval in the open loop; over the ramp in the
    # closed loop, so that thousands of connections do not all send at the same instant and
    # charge the warm-up's first round of a cold server (accepts, first buffers) to a few.
    spread = interval if rate else closed_loop_ramp(start_at, window.start)
    for i, conn in enumerate(list(conns.values())):
        heapq.heappush(due, (first + spread * i / len(sockets), conn.fd))
        waiting.add(conn.fd)

    usage_start = None
    measured_start = None
    last_timeout_scan = clock()
    try:
        while conns:
            now = clock()
            while due and due[0][0] <= now:
                intended, fd = heapq.heappop(due)
                waiting.discard(fd)
                if fd in conns:
                    send_next(conns[fd], intended)
            if measured_start is None and now >= window.start:
                measured_start = now
                usage_start = resource.getrusage(resource.RUSAGE_SELF)
            if now >= window.end:
                break
            timeout = min(window.end - now, 0.1)
            if measured_start is None:
                timeout = min(window.start - now, timeout)
            if due:
                # The timerfd wakes the loop at the next send time to the microsecond; the
                # (millisecond) poll timeout is only a backstop.
                timer.arm(due[0][0])
            for fd, ev in ep.poll(max(timeout, 0.0)):
                if fd == timer.fd:
                    timer.consume()
                    continue
                conn = conns.get(fd)
                if conn is None:
                    if fd in idle_socks:
                        # An idle connection the server closed or reset: it no longer counts.
                        ep.unregister(fd)
                        idle_socks.pop(fd).close()
                        errs[errors.RESET if ev & select.EPOLLERR else errors.SHORT_READ] += 1
                        closed_before_echo += 1
                        timeline.error(clock())
                    continue
                if ev & _OUT and conn.writing:
                    push(conn)
                    if fd not in conns:
                        continue
                if not ev & (_IN | _GONE):
                    continue
                try:
                    data = conn.sock.recv(RECV_SIZE)
                except BlockingIOError:
                    continue
                except (ConnectionResetError, BrokenPipeError, TimeoutError):
                    fail(conn, errors.RESET)
                    continue
                if not data:
                    fail(conn, errors.SHORT_READ)
                    continue
                if conn.received or len(data) != len(conn.payload):
                    conn.received += data
                    if len(conn.received) < len(conn.payload):
                        continue
                    data = conn.received
                # The whole echo, byte for byte: length and content (connection id, sequence).
                if data != conn.payload:
                    fail(conn, errors.MISMATCH)
                    continue
                conn.answered = True
                done = clock()
                if done >= tl_next:
                    tl_bin = tl_seek(done)
                    tl_next = tl_edges[tl_bin + 1]
                completed[tl_bin] += 1
                # By the completion's own time, as the timeline's bins count it.
                if win_start <= done < win_end:
                    requests += 1
                    corrected[int((done - conn.t_intended) * 1e6)] += 1
                    if rate:
                        uncorrected[int((done - conn.t_send) * 1e6)] += 1
                if rate:
                    # The next send keeps its place on the schedule even when this one was late.
                    intended = conn.t_intended + interval
                    if intended <= done:
                        send_next(conn, intended)
                    else:
                        heapq.heappush(due, (intended, fd))
                        waiting.add(fd)
                else:
                    send_next(conn, done)
            now = clock()
            if now - last_timeout_scan > 0.25:
                last_timeout_scan = now
                expire_stuck(now)
    finally:
        measured_end = clock()
        usage_end = resource.getrusage(resource.RUSAGE_SELF)
        gc.enable()
        expire_stuck(measured_end)
        live = len(conns)
        left = [conn.sock for conn in conns.values()] + list(idle_socks.values())
        if hold is None:
            for sock in left:
                sock.close()
        else:
            hold.extend(left)
        ep.close()
        timer.close()
    if measured_start is None:
        # Every connection died before the window opened: nothing was measured.
        measured_start = measured_end
        usage_start = usage_end
    return LoopResult(
        requests=requests,
        errors=errs,
        histogram=_histogram(corrected),
        uncorrected=_histogram(uncorrected) if rate else None,
        window_start=measured_start,
        window_end=min(measured_end, max(window.end, measured_start)),
        cpu_user_s=usage_end.ru_utime - usage_start.ru_utime,
        cpu_sys_s=usage_end.ru_stime - usage_start.ru_stime,
        live_connections=live,
        sent_in_window=sent_in_window,
        timeline=timeline.message(),
        closed_before_echo=closed_before_echo,
    )


def closed_loop_ramp(start_at: float, window_start: float) -> float:
    """Seconds over which a closed loop's first sends are spread: half the warm-up, at most
    RAMP_MAX_S, none without a warm-up (the compiled worker does the same)."""
    return min(max((window_start - start_at) / 2, 0.0), RAMP_MAX_S)


def _histogram(counts: Counter) -> HdrHistogram:
    hist = new_histogram()
    record_counts(hist, counts)
    return hist


def _wait_until(when: float) -> None:
    # A scheduled start shared by every worker (CLOCK_MONOTONIC is system-wide), not a pause.
    delay = when - time.monotonic()
    if delay > 0:
        time.sleep(delay)
