"""A raw-TCP Locust user for the echo protocol: Locust as the distributed load engine.

    locust -f loadgen/locust_user.py --headless --host tcp://127.0.0.1:PORT -u 100 -r 100 -t 10s \\
        [--processes N] [--echo-payload 64] [--echo-warmup S] [--echo-window S] [--echo-result-file F]

Each user holds one TCP connection, sends a payload made as loadgen.request_loop makes it (unique
to connection and sequence number), reads the whole echo, verifies it byte for byte and fires
Locust's request event (request_type "echo", name "<payload>B"). Failures (mismatch, short read,
reset, timeout, connect errors) are Locust failures, so they land in its stats and exit code.

Locust's stats round response times to whole milliseconds, too coarse for loopback round trips
of tens of microseconds. So every load process also keeps its own HdrHistogram in microseconds
over a measured window: it opens --echo-warmup seconds after the test starts (past the ramp-up)
and closes --echo-window seconds later, or when the test stops if that is 0. At the close each
worker ships its histogram, request and error counts, its measured window (CLOCK_MONOTONIC, shared
by every process on the host) and its own CPU time in the window to the master with a Locust
custom message; the master (or the single process of a local run) merges them and writes
--echo-result-file as JSON. Ship results before --run-time ends (a window shorter than the run):
Locust's master waits only 0.5 s for workers' last words after it sends them "quit".

With --processes, also pass --master-bind-host 127.0.0.1 --master-bind-port P --master-port P:
Locust's master otherwise listens on every interface at the fixed port 5557, which another
Locust on a shared host may already hold.

This module imports locust, which monkey-patches the standard library: import it only in
processes that run Locust, never from bench/ or loadgen/__main__.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import resource
import time
from collections import Counter
from typing import Any
from urllib.parse import urlsplit

import gevent
import gevent.socket
from locust import User, constant, events, task
from locust.runners import LocalRunner, MasterRunner

from loadgen import errors
from loadgen.histogram import encode, merge, new_histogram, record_counts, summarize
from loadgen.request_loop import REQUEST_TIMEOUT_S, make_payload

logger = logging.getLogger(__name__)

RESULT_MESSAGE = "echo_result"
# Pause after a failed connect, so a server that is down is not hammered in a tight loop.
CONNECT_RETRY_S = 0.1


class EchoError(Exception):
    """The echo was wrong; `kind` is one of loadgen.errors' kinds."""

    kind = errors.MISMATCH


class EchoMismatch(EchoError):
    kind = errors.MISMATCH


class ShortRead(EchoError):
    kind = errors.SHORT_READ


def error_kind(exc: BaseException) -> str:
    if isinstance(exc, EchoError):
        return exc.kind
    if isinstance(exc, TimeoutError):
        return errors.TIMEOUT
    # Any other socket error leaves the connection unusable, as a reset does.
    return errors.RESET


def parse_host(host: str | None) -> tuple[str, int]:
    """'tcp://127.0.0.1:PORT' (or '127.0.0.1:PORT') -> ('127.0.0.1', PORT)."""
    if not host:
        raise ValueError("no --host given; use --host tcp://127.0.0.1:PORT")
    parts = urlsplit(host if "://" in host else f"tcp://{host}")
    if parts.scheme != "tcp" or not parts.hostname or not parts.port:
        raise ValueError(f"--host must look like tcp://127.0.0.1:PORT, not {host!r}")
    return parts.hostname, parts.port


class _Tally:
    """This process's measured window: requests, microsecond latencies, errors, own CPU."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        # Microseconds -> count, folded into an HdrHistogram once at the close: recording into
        # it per request would cost more than the rest of the client's work (as in request_loop).
        self.counts: Counter = Counter()
        self.errors: Counter = Counter()  # in the window
        self.errors_total: Counter = Counter()  # the whole test, ramp-up and warm-up included
        self.requests = 0
        self.is_open = False
        self.closed = False
        self.window_start = self.window_end = 0.0
        self.usage_start: resource.struct_rusage | None = None
        self.usage_end: resource.struct_rusage | None = None
        self.users = 0  # live connections in this process
        self.users_at_open = self.users_at_close = 0
        self.timers: list[gevent.Greenlet] = []

    def open(self) -> None:
        if self.is_open or self.closed:
            return
        self.usage_start = resource.getrusage(resource.RUSAGE_SELF)
        self.window_start = time.monotonic()
        self.users_at_open = self.users
        self.is_open = True

    def close(self) -> bool:
        """Close the window; False if it was already closed."""
        if self.closed:
            return False
        if not self.is_open:
            # Stopped before the warm-up ended: an empty window, not a missing one.
            self.open()
        self.window_end = time.monotonic()
        self.usage_end = resource.getrusage(resource.RUSAGE_SELF)
        self.users_at_close = self.users
        self.is_open = False
        self.closed = True
        return True

    def result(self, role: str) -> dict[str, Any]:
        hist = new_histogram()
        record_counts(hist, self.counts)
        start, end = self.usage_start, self.usage_end
        assert start is not None and end is not None
        return {
            "role": role,
            "pid": os.getpid(),
            "window_start": self.window_start,
            "window_end": self.window_end,
            "requests": self.requests,
            "errors": dict(self.errors),
            "errors_total": dict(self.errors_total),
            "cpu_user_s": end.ru_utime - start.ru_utime,
            "cpu_sys_s": end.ru_stime - start.ru_stime,
            "users_at_open": self.users_at_open,
            "users_at_close": self.users_at_close,
            "histogram": encode(hist),
        }


_tally = _Tally()
# Master or local process: the results received so far, by node id.
_received: dict[str, dict[str, Any]] = {}
_master_cpu: dict[str, Any] | None = None


class EchoUser(User):
    """One connection; each task iteration is one verified echo."""

    wait_time = constant(0)
    _ids = itertools.count()
    sock: gevent.socket.socket | None = None  # also when on_start failed before connecting

    def on_start(self) -> None:
        options = self.environment.parsed_options
        self.payload_size: int = options.echo_payload if options else 64
        self.request_name = f"{self.payload_size}B"
        self.address = parse_host(self.host or self.environment.host)
        self.conn_id = next(EchoUser._ids)
        self.seq = 0

    def on_stop(self) -> None:
        self._drop()

    def _connect(self) -> gevent.socket.socket | None:
        start = time.perf_counter()
        try:
            sock = gevent.socket.create_connection(self.address, timeout=REQUEST_TIMEOUT_S)
        except OSError as exc:
            kind = errors.connect_error_kind(exc.errno) if not isinstance(exc, TimeoutError) else errors.CONNECT_TIMEOUT
            self._count_error(kind)
            self.environment.events.request.fire(
                request_type="connect",
                name="connect",
                response_time=(time.perf_counter() - start) * 1000,
                response_length=0,
                exception=exc,
                context={},
            )
            gevent.sleep(CONNECT_RETRY_S)
            return None
        sock.setsockopt(gevent.socket.IPPROTO_TCP, gevent.socket.TCP_NODELAY, 1)
        self.sock = sock
        _tally.users += 1
        return sock

    def _drop(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
            _tally.users -= 1

    @task
    def echo(self) -> None:
        sock = self.sock or self._connect()
        if sock is None:
            return
        self.seq += 1
        payload = make_payload(self.payload_size, self.conn_id, self.seq)
        size = len(payload)
        received = b""
        exc: BaseException | None = None
        start = time.perf_counter()
        try:
            sock.sendall(payload)
            received = sock.recv(size)
            if len(received) < size:
                received = self._read_rest(sock, received, size)
            if received != payload:
                raise EchoMismatch(f"echo differs from the {size} bytes sent (connection {self.conn_id}, #{self.seq})")
        except (EchoError, OSError) as caught:
            exc = caught
        elapsed = time.perf_counter() - start
        if exc is None:
            if _tally.is_open:
                _tally.requests += 1
                _tally.counts[int(elapsed * 1e6)] += 1
        else:
            self._count_error(error_kind(exc))
            # The stream is out of step (or gone): a fresh connection on the next iteration.
            self._drop()
        self.environment.events.request.fire(
            request_type="echo",
            name=self.request_name,
            response_time=elapsed * 1000,  # Locust wants milliseconds
            response_length=len(received),
            exception=exc,
            context={},
        )

    @staticmethod
    def _read_rest(sock: gevent.socket.socket, first: bytes, size: int) -> bytes:
        buf = bytearray(first)
        while len(buf) < size:
            chunk = sock.recv(size - len(buf))
            if not chunk:
                raise ShortRead(f"connection closed after {len(buf)} of {size} echoed bytes")
            buf += chunk
        return bytes(buf)

    @staticmethod
    def _count_error(kind: str) -> None:
        _tally.errors_total[kind] += 1
        if _tally.is_open:
            _tally.errors[kind] += 1


# ------------------------------------------------------------------------------------------
# Locust events: options, the measured window, results shipped to the master
# ------------------------------------------------------------------------------------------


def _payload_size(text: str) -> int:
    size = int(text)
    if size < 1:
        # An empty payload would "echo" without any I/O and count as a verified request.
        raise ValueError(f"--echo-payload must be >= 1, not {size}")
    return size


@events.init_command_line_parser.add_listener
def _add_options(parser: Any) -> None:
    group = parser.add_argument_group("echo user (loadgen.locust_user)")
    group.add_argument("--echo-payload", type=_payload_size, default=64, help="bytes per request (default 64)")
    group.add_argument(
        "--echo-warmup",
        type=float,
        default=0.0,
        help="seconds from the test's start (ramp-up included) to the measured window (default 0)",
    )
    group.add_argument(
        "--echo-window",
        type=float,
        default=0.0,
        help="length of the measured window in seconds; 0 (default): until the test stops",
    )
    group.add_argument(
        "--echo-result-file",
        default="",
        help="the master (or local process) writes the merged microsecond results here, as JSON",
    )


@events.init.add_listener
def _on_init(environment: Any, runner: Any, **_kw: Any) -> None:
    if environment.host:
        # A wrong --host fails here, once, instead of in every user's on_start.
        parse_host(environment.host)
    if isinstance(runner, MasterRunner | LocalRunner):
        runner.register_message(RESULT_MESSAGE, _on_result)


@events.test_start.add_listener
def _on_test_start(environment: Any, **_kw: Any) -> None:
    global _master_cpu
    for timer in _tally.timers:
        timer.kill(block=False)
    _tally.reset()
    _received.clear()
    _master_cpu = None
    options = environment.parsed_options
    warmup = max(getattr(options, "echo_warmup", 0.0), 0.0)
    window = max(getattr(options, "echo_window", 0.0), 0.0)
    _tally.timers.append(gevent.spawn_later(warmup, _tally.open))
    if window > 0:
        _tally.timers.append(gevent.spawn_later(warmup + window, _close_window, environment))


@events.test_stop.add_listener
def _on_test_stop(environment: Any, **_kw: Any) -> None:
    _close_window(environment)


@events.quitting.add_listener
def _on_quitting(environment: Any, **_kw: Any) -> None:
    _close_window(environment)
    if isinstance(environment.runner, MasterRunner | LocalRunner):
        _write_results(environment, final=True)


def _close_window(environment: Any) -> None:
    global _master_cpu
    runner = environment.runner
    if runner is None or not _tally.close():
        return
    if isinstance(runner, MasterRunner):
        # The master runs no users, but its CPU is part of what Locust costs.
        _master_cpu = _tally.result("master")
        _master_cpu.pop("histogram")
        _write_results(environment)
    else:
        # A local runner's send_message calls its own listener, so both paths end in _on_result.
        runner.send_message(RESULT_MESSAGE, _tally.result("local" if isinstance(runner, LocalRunner) else "worker"))


def _on_result(environment: Any, msg: Any, **_kw: Any) -> None:
    _received[str(msg.node_id)] = dict(msg.data)
    _write_results(environment)


def merged_results(workers: dict[str, dict[str, Any]], master: dict[str, Any] | None) -> dict[str, Any]:
    """Sum the load processes' windows: requests over the span of all windows (measured, not
    planned), latency histograms merged, CPU of every process (master included)."""
    rows = list(workers.values())
    out: dict[str, Any] = {"processes": len(rows), "workers": workers, "master": master}
    if not rows:
        return out
    start = min(r["window_start"] for r in rows)
    end = max(r["window_end"] for r in rows)
    requests = sum(r["requests"] for r in rows)
    errs: Counter = Counter()
    errs_total: Counter = Counter()
    for r in rows:
        errs.update(r["errors"])
        errs_total.update(r["errors_total"])
    hist = merge([r["histogram"] for r in rows])
    cpu = sum(r["cpu_user_s"] + r["cpu_sys_s"] for r in rows)
    master_cpu = master["cpu_user_s"] + master["cpu_sys_s"] if master else 0.0
    duration = end - start
    out.update(
        window_start=start,
        window_end=end,
        duration_s=duration,
        requests=requests,
        rps=requests / duration if duration > 0 else None,
        errors=dict(errs),
        errors_total=dict(errs_total),
        users_at_open=sum(r["users_at_open"] for r in rows),
        users_at_close=sum(r["users_at_close"] for r in rows),
        worker_cpu_s=cpu,
        master_cpu_s=master_cpu,
        histogram=encode(hist),
        latency=summarize(hist),
    )
    return out


def _write_results(environment: Any, final: bool = False) -> None:
    """Rewritten at every result received, so a result that comes in late is still kept."""
    results = merged_results(_received, _master_cpu)
    path = getattr(environment.parsed_options, "echo_result_file", "")
    if not path:
        if final and results.get("requests") is not None:
            logger.info(
                "echo: %d verified requests in %.2f s (%s req/s), errors %s, latency %s us",
                results["requests"],
                results["duration_s"],
                f"{results['rps']:,.0f}" if results["rps"] else "-",
                results["errors"] or "none",
                results["latency"],
            )
        return
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "w") as out:
            json.dump(results, out, indent=1)
        os.replace(tmp, path)
    except OSError as exc:
        logger.error("cannot write --echo-result-file %s: %s", path, exc)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
