"""Closed loop: every connection sends a payload, waits for the whole echo, verifies it, repeats.

One epoll loop drives all of this worker's connections. Only requests that complete inside
the measured window are counted, and the window's length is what the clock measured, not
what was planned.
"""

from __future__ import annotations

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

RECV_SIZE = 262144
# A request that waits this long for its echo is counted as timed out and its connection closed.
REQUEST_TIMEOUT_S = 2.0


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
    window_start: float
    window_end: float
    cpu_user_s: float
    cpu_sys_s: float
    live_connections: int


class _Conn:
    __slots__ = ("sock", "fd", "cid", "seq", "payload", "sent", "received", "t_send", "writing")

    def __init__(self, sock: socket.socket, cid: int) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.cid = cid
        self.seq = 0
        self.payload = b""
        self.sent = 0
        self.received = bytearray()
        self.t_send = 0.0
        self.writing = False


def run_closed_loop(sockets: list[socket.socket], payload_size: int, window: Window, start_at: float) -> LoopResult:
    ep = select.epoll()
    conns: dict[int, _Conn] = {}
    for cid, sock in enumerate(sockets):
        sock.setblocking(False)
        conn = _Conn(sock, cid)
        conns[conn.fd] = conn
        ep.register(conn.fd, select.EPOLLIN)
    # Microseconds -> count; folded into the HdrHistogram once at the end, because recording
    # into it per request costs more than the rest of the client's Python work per request.
    latency_counts: Counter = Counter()
    errs: Counter = Counter()
    requests = 0
    clock = time.monotonic

    def fail(conn: _Conn, kind: str) -> None:
        errs[kind] += 1
        ep.unregister(conn.fd)
        del conns[conn.fd]
        conn.sock.close()

    def send_next(conn: _Conn) -> None:
        conn.seq += 1
        conn.payload = make_payload(payload_size, conn.cid, conn.seq)
        conn.sent = 0
        conn.received.clear()
        conn.t_send = clock()
        push(conn)

    def push(conn: _Conn) -> None:
        try:
            conn.sent += conn.sock.send(memoryview(conn.payload)[conn.sent :])
        except BlockingIOError:
            pass
        except (ConnectionResetError, BrokenPipeError):
            fail(conn, errors.RESET)
            return
        want_write = conn.sent < len(conn.payload)
        if want_write != conn.writing:
            conn.writing = want_write
            ep.modify(conn.fd, select.EPOLLIN | (select.EPOLLOUT if want_write else 0))

    def expire_stuck(now: float) -> None:
        for conn in [c for c in conns.values() if now - c.t_send > REQUEST_TIMEOUT_S]:
            fail(conn, errors.TIMEOUT)

    _wait_until(start_at)
    for conn in list(conns.values()):
        send_next(conn)

    usage_start = None
    measured_start = measured_end = None
    last_timeout_scan = clock()
    try:
        while conns:
            now = clock()
            if measured_start is None and now >= window.start:
                measured_start = now
                usage_start = resource.getrusage(resource.RUSAGE_SELF)
            if now >= window.end:
                break
            timeout = max(0.0, min(window.end - now, 0.1))
            if measured_start is None:
                timeout = max(0.0, min(window.start - now, timeout))
            for fd, ev in ep.poll(timeout):
                conn = conns.get(fd)
                if conn is None:
                    continue
                if ev & select.EPOLLOUT and conn.writing:
                    push(conn)
                    if fd not in conns:
                        continue
                if not ev & (select.EPOLLIN | select.EPOLLERR | select.EPOLLHUP):
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
                conn.received += data
                if len(conn.received) < len(conn.payload):
                    continue
                if conn.received != conn.payload:
                    fail(conn, errors.MISMATCH)
                    continue
                done = clock()
                if measured_start is not None and done < window.end:
                    requests += 1
                    latency_counts[int((done - conn.t_send) * 1e6)] += 1
                send_next(conn)
            now = clock()
            if now - last_timeout_scan > 0.25:
                last_timeout_scan = now
                expire_stuck(now)
    finally:
        measured_end = clock()
        expire_stuck(measured_end)
        usage_end = resource.getrusage(resource.RUSAGE_SELF)
        live = len(conns)
        for conn in conns.values():
            conn.sock.close()
        ep.close()
    hist = new_histogram()
    record_counts(hist, latency_counts)
    if measured_start is None:
        # Every connection died before the window opened: nothing was measured.
        measured_start = measured_end
        usage_start = usage_end
    return LoopResult(
        requests=requests,
        errors=errs,
        histogram=hist,
        window_start=measured_start,
        window_end=min(measured_end, max(window.end, measured_start)),
        cpu_user_s=usage_end.ru_utime - usage_start.ru_utime,
        cpu_sys_s=usage_end.ru_stime - usage_start.ru_stime,
        live_connections=live,
    )


def _wait_until(when: float) -> None:
    # A scheduled start shared by every worker (CLOCK_MONOTONIC is system-wide), not a pause.
    delay = when - time.monotonic()
    if delay > 0:
        time.sleep(delay)
