"""The bench's hold on a Locust run of the echo user: connect reporting, one shared measured
window, results back to the bench.

loadgen/locust_user.py opens its measured window after --echo-warmup seconds counted from each
process's own test start: good enough for a person at a terminal, but the bench needs every
worker to measure the window it planned on CLOCK_MONOTONIC, as its built-in engine does. With
--echo-bench-schedule (set by bench.running.locust_engine on the master and passed on by Locust to every
worker, remote ones included):

  worker  every few ms, if its count of open connections or connect errors changed, sends
          `bench_status` to the master; on `bench_window` (absolute window times on the master's
          clock) opens and closes the echo user's tally at those times and sends `bench_result`.
  master  writes JSON lines for the bench to the file descriptor named by IOMODEL_BENCH_EVENTS_FD:
          `master` (its port), `status`, `connected` (every user holds its connection, or the
          count stopped growing), `scheduled`, `result` (every scheduled worker's result and
          the master's own CPU over the window), `failed`. It reads the bench's `schedule` lines
          on stdin; EOF there means the bench is gone, and the master shuts down as on SIGTERM.

CLOCK_MONOTONIC is shared by the processes of one boot of one host only. A worker on another
host (another boot_id) converts: it takes the master's clock to be its own plus the offset seen
when the schedule arrived (the message's transit time is the error, well under a millisecond on
a LAN), so every window is reported on the master's clock.

This module imports locust: import it only in Locust's processes (loadgen/locust_bench_user.py).
"""

from __future__ import annotations

import json
import os
import resource
import signal
import socket
import time
from collections import Counter
from typing import Any

import gevent
import gevent.os
from locust import events
from locust.exception import RPCError
from locust.runners import STATE_MISSING, MasterRunner, WorkerRunner

from loadgen import errors
from loadgen.control import parse
from loadgen.locust_user import _tally

EVENTS_FD_ENV = "IOMODEL_BENCH_EVENTS_FD"
STATUS_MESSAGE = "bench_status"
WINDOW_MESSAGE = "bench_window"
RESULT_MESSAGE = "bench_result"
CONNECT_KINDS = (errors.CONNECT_REFUSED, errors.CONNECT_TIMEOUT, errors.CONNECT_OTHER)
# How often a worker looks at its connection count: short, because the connect phase is timed
# from it; the message goes out only when something changed.
STATUS_POLL_S = 0.02
# All users spawned and no new connection for this long: report the connect phase as it stands
# (the built-in engine's connect timeout), so the point fails with its errors instead of a timeout.
CONNECT_STALL_S = 5.0
MASTER_TICK_S = 0.1
STATUS_EVERY_S = 1.0


def boot_id() -> str:
    """Equal in two processes exactly when they share CLOCK_MONOTONIC (same host, same boot)."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return f"unknown-{socket.gethostname()}"


BOOT_ID = boot_id()


def _bench_scheduled(environment: Any) -> bool:
    return bool(getattr(environment.parsed_options, "echo_bench_schedule", False))


@events.init_command_line_parser.add_listener
def _add_options(parser: Any) -> None:
    parser.add_argument(
        "--echo-bench-schedule",
        action="store_true",
        default=False,
        help="the measured window comes from the bench's schedule message, not --echo-warmup/--echo-window",
    )


@events.init.add_listener
def _on_init(environment: Any, runner: Any, **_kw: Any) -> None:
    if isinstance(runner, WorkerRunner):
        runner.register_message(WINDOW_MESSAGE, _on_window)
        gevent.spawn(_report_status, environment)
    elif isinstance(runner, MasterRunner) and os.environ.get(EVENTS_FD_ENV):
        master = _Master(environment, int(os.environ[EVENTS_FD_ENV]))
        runner.register_message(STATUS_MESSAGE, master.on_status)
        runner.register_message(RESULT_MESSAGE, master.on_result)
        environment.events.test_start.add_listener(master.on_test_start)
        master.emit("master", pid=os.getpid(), port=runner.server.port, boot_id=BOOT_ID)
        gevent.spawn(master.read_commands)
        gevent.spawn(master.tick)


@events.test_start.add_listener
def _on_test_start(environment: Any, **_kw: Any) -> None:
    # Registered after locust_user's listener, so this runs after it armed its own window timers:
    # under the bench's schedule those must never open the window.
    if _bench_scheduled(environment):
        for timer in _tally.timers:
            timer.kill(block=False)
        _tally.timers.clear()


# ------------------------------------------------------------------------------------------
# Worker side
# ------------------------------------------------------------------------------------------


def _report_status(environment: Any) -> None:
    last: tuple[int, dict[str, int]] | None = None
    while True:
        connect_errors = {k: v for k, v in _tally.errors_total.items() if k in CONNECT_KINDS and v}
        now = (_tally.users, connect_errors)
        # Only for a bench's master (the flag comes with the first spawn message): another master
        # would log every one of these as an unknown message.
        if now != last and environment.runner is not None and _bench_scheduled(environment):
            try:
                environment.runner.send_message(
                    STATUS_MESSAGE,
                    {"users": now[0], "connect_errors": now[1], "pid": os.getpid(), "boot_id": BOOT_ID},
                )
                last = now
            except RPCError:
                # The master is out of reach for now; Locust reconnects, and this is sent again.
                pass
        gevent.sleep(STATUS_POLL_S)


def _on_window(environment: Any, msg: Any, **_kw: Any) -> None:
    data = dict(msg.data)
    now = time.monotonic()
    # Master's clock minus ours: 0 on the master's host, else estimated at this message's arrival.
    offset = 0.0 if data["boot_id"] == BOOT_ID else data["sent_at"] - now
    for timer in _tally.timers:
        timer.kill(block=False)
    open_in = max(data["window_start"] - offset - now, 0.0)
    close_in = max(data["window_end"] - offset - now, open_in)
    _tally.timers[:] = [
        gevent.spawn_later(open_in, _tally.open),
        gevent.spawn_later(close_in, _close_and_send, environment, offset),
    ]


def _close_and_send(environment: Any, offset: float) -> None:
    if not _tally.close():
        return
    result = _tally.result("worker")
    result.update(
        window_start=result["window_start"] + offset,
        window_end=result["window_end"] + offset,
        clock_offset=offset,
        same_host=offset == 0.0,
        hostname=socket.gethostname(),
    )
    environment.runner.send_message(RESULT_MESSAGE, result)


# ------------------------------------------------------------------------------------------
# Master side
# ------------------------------------------------------------------------------------------


class _Master:
    def __init__(self, environment: Any, events_fd: int) -> None:
        self.environment = environment
        self.runner: MasterRunner = environment.runner
        self.events_fd = events_fd
        gevent.os.make_nonblocking(events_fd)
        self.target = int(getattr(environment.parsed_options, "num_users", 0) or 0)
        self.started_at: float | None = None
        self.status: dict[str, dict[str, Any]] = {}
        self.connected_sent = False
        self.last_count = -1
        self.last_change = time.monotonic()
        self.last_status_event = 0.0
        self.expected: set[str] = set()
        self.results: dict[str, dict[str, Any]] = {}
        self.window: tuple[float, float] | None = None
        self.usage: list[resource.struct_rusage] = []

    # -- to and from the bench ---------------------------------------------------------------

    def emit(self, event: str, **fields: Any) -> None:
        data = (json.dumps({"event": event, **fields}, separators=(",", ":")) + "\n").encode()
        try:
            while data:
                data = data[gevent.os.nb_write(self.events_fd, data) :]
        except OSError:
            # The bench stopped listening: nothing left to run for.
            self._shutdown()

    def read_commands(self) -> None:
        fd = 0
        gevent.os.make_nonblocking(fd)
        buffered = b""
        while True:
            try:
                chunk = gevent.os.nb_read(fd, 65536)
            except OSError:
                chunk = b""
            if not chunk:
                break
            buffered += chunk
            while b"\n" in buffered:
                line, buffered = buffered.split(b"\n", 1)
                message = parse(line.decode(errors="replace"))
                if message is not None and message["event"] == "schedule":
                    self.schedule(float(message["window_start"]), float(message["window_end"]))
        self._shutdown()

    def _shutdown(self) -> None:
        # Locust's own SIGTERM handler: quits the workers, then exits.
        os.kill(os.getpid(), signal.SIGTERM)

    # -- connect phase -------------------------------------------------------------------------

    def on_test_start(self, **_kw: Any) -> None:
        self.started_at = time.monotonic()
        self.last_change = self.started_at

    def on_status(self, environment: Any, msg: Any, **_kw: Any) -> None:
        self.status[str(msg.node_id)] = dict(msg.data)
        self._check_connected()

    def _users(self) -> int:
        return sum(s["users"] for s in self.status.values())

    def _connect_errors(self) -> dict[str, int]:
        total: Counter = Counter()
        for s in self.status.values():
            total.update(s["connect_errors"])
        return dict(total)

    def _check_connected(self) -> None:
        now = time.monotonic()
        users = self._users()
        if users != self.last_count:
            self.last_count, self.last_change = users, now
        if self.connected_sent or self.started_at is None:
            return
        spawned = getattr(self.runner, "spawning_completed", True)
        stalled = spawned and now - self.last_change >= CONNECT_STALL_S
        if users >= self.target or stalled:
            self.connected_sent = True
            self.emit(
                "connected",
                connected=users,
                target=self.target,
                errors=self._connect_errors(),
                seconds=now - self.started_at,
                workers=self._workers(),
                stalled=users < self.target,
            )

    def _workers(self) -> list[dict[str, Any]]:
        return [
            {"node": node, "pid": s["pid"], "users": s["users"], "same_host": s["boot_id"] == BOOT_ID}
            for node, s in sorted(self.status.items())
        ]

    def tick(self) -> None:
        while True:
            self._check_connected()
            now = time.monotonic()
            if now - self.last_status_event >= STATUS_EVERY_S:
                self.last_status_event = now
                self.emit(
                    "status",
                    users=self._users(),
                    target=self.target,
                    workers_ready=self.runner.worker_count,
                    started=self.started_at is not None,
                    connect_errors=self._connect_errors(),
                )
            self._check_results()
            gevent.sleep(MASTER_TICK_S)

    # -- the window ----------------------------------------------------------------------------

    def schedule(self, window_start: float, window_end: float) -> None:
        nodes = [c.id for c in self.runner.clients.all if c.state != STATE_MISSING]
        self.expected = set(nodes)
        self.results.clear()
        self.window = (window_start, window_end)
        data = {"window_start": window_start, "window_end": window_end, "boot_id": BOOT_ID}
        for node in nodes:
            self.runner.send_message(WINDOW_MESSAGE, {**data, "sent_at": time.monotonic()}, client_id=node)
        now = time.monotonic()
        self.usage = []
        gevent.spawn_later(max(window_start - now, 0.0), self._take_usage)
        gevent.spawn_later(max(window_end - now, 0.0), self._take_usage)
        self.emit("scheduled", workers=len(nodes), nodes=sorted(nodes))

    def _take_usage(self) -> None:
        if len(self.usage) < 2:
            self.usage.append(resource.getrusage(resource.RUSAGE_SELF))

    def on_result(self, environment: Any, msg: Any, **_kw: Any) -> None:
        self.results[str(msg.node_id)] = dict(msg.data)
        self._check_results()

    def _check_results(self) -> None:
        if not self.expected or self.window is None:
            return
        if set(self.results) >= self.expected:
            while len(self.usage) < 2:
                self._take_usage()
            start, end = self.usage
            self.emit(
                "result",
                workers=[{**self.results[node], "node": node} for node in sorted(self.expected)],
                master_cpu_user_s=end.ru_utime - start.ru_utime,
                master_cpu_sys_s=end.ru_stime - start.ru_stime,
            )
            self.expected = set()
            return
        if time.monotonic() < self.window[1]:
            return
        for node in sorted(self.expected - set(self.results)):
            client = self.runner.clients.get(node)
            if client is None or client.state == STATE_MISSING:
                state = "quit" if client is None else "stopped answering heartbeats"
                self.emit("failed", reason=f"Locust worker {node} {state} before sending its result")
                self.expected = set()
                return
