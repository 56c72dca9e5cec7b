"""Churn: each of N concurrent slots connects, sends one request, verifies the echo, closes,
and starts again. What it measures is the cost of accept() and connection set-up in each model.

Latency is the whole cycle, connect() to verified echo; the connect time alone goes in a
second histogram. Source addresses rotate so TIME_WAIT ports do not run out. The timeline
(loadgen.timeline) counts verified cycles and errors per 100 ms from the scheduled start.
"""

from __future__ import annotations

import errno
import resource
import select
import socket
import time
from collections import Counter

from loadgen import errors
from loadgen.histogram import new_histogram, record_counts
from loadgen.request_loop import RECV_SIZE, REQUEST_TIMEOUT_S, LoopResult, Window, _wait_until, make_payload
from loadgen.source_addresses import CHURN_ADDRESSES, bind_source, source_address
from loadgen.timeline import Recorder

_IN, _OUT = select.EPOLLIN, select.EPOLLOUT


class _Slot:
    __slots__ = ("sock", "payload", "received", "t_start", "t_connected", "connecting")


def run_churn(
    host: str,
    port: int,
    concurrency: int,
    payload_size: int,
    window: Window,
    start_at: float,
    worker_id: int = 0,
    request_timeout_s: float = REQUEST_TIMEOUT_S,
    spread: int = CHURN_ADDRESSES,
) -> LoopResult:
    """`concurrency` slots connecting, sending one request and closing, again and again, from
    `start_at` (CLOCK_MONOTONIC seconds) to the window's end; source addresses rotate over
    `spread` (1: the kernel's choice, for a server on another host). A cycle counts in the
    window when its echo was verified at t with window.start <= t < window.end."""
    ep = select.epoll()
    slots: dict[int, _Slot] = {}
    cycle_us: Counter = Counter()
    connect_us: Counter = Counter()
    errs: Counter = Counter()
    clock = time.monotonic
    win_start, win_end = window.start, window.end
    timeline = Recorder(start_at, win_start, win_end)
    completed, tl_edges, tl_seek = timeline.completed, timeline.edges, timeline.seek
    tl_bin, tl_next = 0, tl_edges[1]
    cycles = 0
    started = 0
    # A churn connection has one request: any close or reset of it is before its echo.
    closed_before_echo = 0
    # Slots whose start failed before connect() was under way: started again at the next
    # timeout scan, not at once, which would spin on a lasting error (out of descriptors).
    deferred = 0

    def count_error(kind: str) -> None:
        errs[kind] += 1
        timeline.error(clock())

    def begin() -> None:
        nonlocal started, deferred
        slot = _Slot()
        started += 1
        try:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        except OSError:
            count_error(errors.CONNECT_OTHER)
            deferred += 1
            return
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            bind_source(sock, source_address(worker_id * 7919 + started, spread))
        except OSError:
            sock.close()
            count_error(errors.CONNECT_OTHER)
            deferred += 1
            return
        slot.sock = sock
        slot.payload = make_payload(payload_size, worker_id, started)
        slot.received = bytearray()
        slot.connecting = True
        slot.t_start = clock()
        code = sock.connect_ex((host, port))
        if code not in (0, errno.EINPROGRESS):
            sock.close()
            count_error(errors.connect_error_kind(code))
            deferred += 1
            return
        slots[sock.fileno()] = slot
        ep.register(sock.fileno(), _OUT)

    def finish(fd: int, kind: str | None) -> None:
        nonlocal closed_before_echo
        slot = slots.pop(fd)
        ep.unregister(fd)
        slot.sock.close()
        if kind:
            count_error(kind)
        if kind in (errors.RESET, errors.SHORT_READ):
            closed_before_echo += 1

    _wait_until(start_at)
    for _ in range(concurrency):
        begin()
    measured_start = None
    usage_start = None
    last_timeout_scan = clock()
    try:
        while True:
            now = clock()
            if measured_start is None and now >= window.start:
                measured_start, usage_start = now, resource.getrusage(resource.RUSAGE_SELF)
            if now >= window.end:
                break
            timeout = min(window.end - now, 0.1)
            if measured_start is None:
                timeout = min(window.start - now, timeout)
            for fd, _ev in ep.poll(max(timeout, 0.0)):
                slot = slots.get(fd)
                if slot is None:
                    continue
                if slot.connecting:
                    code = slot.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if code:
                        finish(fd, errors.connect_error_kind(code))
                        begin()
                        continue
                    slot.connecting = False
                    slot.t_connected = clock()
                    try:
                        sent = slot.sock.send(slot.payload)
                    except OSError:
                        finish(fd, errors.RESET)
                        begin()
                        continue
                    # One small request: a short send here would mean a payload beyond the
                    # socket buffer, which churn does not use.
                    if sent < len(slot.payload):
                        finish(fd, errors.SHORT_READ)
                        begin()
                        continue
                    ep.modify(fd, _IN)
                    continue
                try:
                    data = slot.sock.recv(RECV_SIZE)
                except BlockingIOError:
                    continue
                except OSError:
                    finish(fd, errors.RESET)
                    begin()
                    continue
                if not data:
                    finish(fd, errors.SHORT_READ)
                    begin()
                    continue
                slot.received += data
                if len(slot.received) < len(slot.payload):
                    continue
                kind = None if slot.received == slot.payload else errors.MISMATCH
                done = clock()
                if kind is None:
                    if done >= tl_next:
                        tl_bin = tl_seek(done)
                        tl_next = tl_edges[tl_bin + 1]
                    completed[tl_bin] += 1
                    # By the cycle's own time, as the timeline's bins count it.
                    if win_start <= done < win_end:
                        cycles += 1
                        cycle_us[int((done - slot.t_start) * 1e6)] += 1
                        connect_us[int((slot.t_connected - slot.t_start) * 1e6)] += 1
                finish(fd, kind)
                begin()
            now = clock()
            if now - last_timeout_scan > 0.25:
                last_timeout_scan = now
                for fd in [fd for fd, s in slots.items() if now - s.t_start > request_timeout_s]:
                    finish(fd, errors.CONNECT_TIMEOUT if slots[fd].connecting else errors.TIMEOUT)
                    begin()
                retry, deferred = deferred, 0
                for _ in range(retry):
                    begin()
    finally:
        measured_end = clock()
        usage_end = resource.getrusage(resource.RUSAGE_SELF)
        for slot in slots.values():
            slot.sock.close()
        ep.close()
    if measured_start is None:
        measured_start, usage_start = measured_end, usage_end
    hist, connect_hist = new_histogram(), new_histogram()
    record_counts(hist, cycle_us)
    record_counts(connect_hist, connect_us)
    return LoopResult(
        requests=cycles,
        errors=errs,
        histogram=hist,
        uncorrected=None,
        window_start=measured_start,
        window_end=min(measured_end, max(window.end, measured_start)),
        cpu_user_s=usage_end.ru_utime - usage_start.ru_utime,
        cpu_sys_s=usage_end.ru_stime - usage_start.ru_stime,
        live_connections=0,
        sent_in_window=cycles,
        connect_histogram=connect_hist,
        timeline=timeline.message(),
        closed_before_echo=closed_before_echo,
    )
