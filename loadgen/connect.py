"""The connect phase: open N non-blocking connections with a bounded number in flight."""

from __future__ import annotations

import errno
import select
import socket
import time
from collections import Counter
from dataclasses import dataclass, field

from hdrh.histogram import HdrHistogram

from loadgen import errors
from loadgen.histogram import new_histogram, record_us
from loadgen.source_addresses import bind_source, source_address


@dataclass
class ConnectResult:
    sockets: list[socket.socket]
    errors: Counter
    histogram: HdrHistogram
    seconds: float
    attempted: int = 0
    notes: list[str] = field(default_factory=list)


def open_connections(
    host: str,
    port: int,
    count: int,
    in_flight: int = 256,
    timeout_s: float = 5.0,
    deadline: float | None = None,
    first_index: int = 0,
    spread: int = 1,
) -> ConnectResult:
    """Connect `count` sockets; failures are counted by kind, never raised. Connection i of
    the point (first_index + local index) takes its source address from `spread` addresses."""
    started = time.monotonic()
    hist = new_histogram()
    errs: Counter = Counter()
    done: list[socket.socket] = []
    pending: dict[int, tuple[socket.socket, float]] = {}
    ep = select.epoll()
    launched = 0
    notes: list[str] = []
    try:
        while len(done) + sum(errs.values()) < count:
            now = time.monotonic()
            if deadline is not None and now > deadline:
                errs[errors.CONNECT_TIMEOUT] += count - len(done) - sum(errs.values())
                break
            while launched < count and len(pending) < in_flight:
                launched += 1
                try:
                    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                except OSError as exc:
                    # Out of descriptors: no later attempt can succeed either.
                    errs[errors.CONNECT_OTHER] += count - launched + 1
                    launched = count
                    notes.append(f"socket(): {exc.strerror}")
                    break
                sock.setblocking(False)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                try:
                    bind_source(sock, source_address(first_index + launched - 1, spread))
                except OSError as exc:
                    sock.close()
                    errs[errors.CONNECT_OTHER] += 1
                    notes.append(f"bind(): {exc.strerror}")
                    continue
                # The clock starts before connect(): on loopback most of the handshake is inside it.
                t0 = time.monotonic()
                code = sock.connect_ex((host, port))
                if code not in (0, errno.EINPROGRESS):
                    sock.close()
                    errs[errors.connect_error_kind(code)] += 1
                    continue
                pending[sock.fileno()] = (sock, t0)
                ep.register(sock.fileno(), select.EPOLLOUT)
            for fd, _ev in ep.poll(0.05):
                sock, t0 = pending.pop(fd)
                ep.unregister(fd)
                code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if code:
                    sock.close()
                    errs[errors.connect_error_kind(code)] += 1
                    continue
                record_us(hist, int((time.monotonic() - t0) * 1e6))
                done.append(sock)
            now = time.monotonic()
            for fd, (sock, t0) in list(pending.items()):
                if now - t0 > timeout_s:
                    del pending[fd]
                    ep.unregister(fd)
                    sock.close()
                    errs[errors.CONNECT_TIMEOUT] += 1
    finally:
        for sock, _t0 in pending.values():
            sock.close()
        ep.close()
    return ConnectResult(done, errs, hist, time.monotonic() - started, launched, list(dict.fromkeys(notes)))
