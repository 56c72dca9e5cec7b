"""The manager side of the built-in load engines: start workers, wait for their connections,
give them one shared schedule, collect and merge their results.

LoadWorkers is the manager; a subclass says which worker program runs: PythonWorkers
(`python -m loadgen`) or CWorkers (loadgen/native/worker.c, compiled on first use). Both
workers take the same options and speak the same protocol (loadgen/control.py).
"""

from __future__ import annotations

import ipaddress
import os
import resource
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bench.errors import PointFailed, UsageError
from bench.running.pipes import MessageReader, deadline_in, remaining
from bench.running.processes import spawn, terminate_tree
from childproc import format_cpus
from loadgen import control
from loadgen.histogram import fold_counts, merge
from loadgen.source_addresses import CHURN_ADDRESSES, addresses_needed
from loadgen.timeline import merge as merge_timelines

# Descriptors a worker needs besides its connections: stdio, epoll, timerfd, Python's own.
WORKER_FD_MARGIN = 64
# Connections per worker at most, whatever the limit: beyond it one worker's CPU, not its
# descriptors, is what runs out.
WORKER_CONNECTIONS_CAP = 15000


def max_connections_per_worker(nofile: int | None = None) -> int:
    """Connections one load worker may hold: its RLIMIT_NOFILE (inherited from bench) less a
    margin, capped at WORKER_CONNECTIONS_CAP."""
    limit = nofile if nofile is not None else resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return max(1, min(WORKER_CONNECTIONS_CAP, limit - WORKER_FD_MARGIN))


MAX_CONNECTIONS_PER_WORKER = max_connections_per_worker()


@dataclass
class ConnectPhase:
    connected: int
    errors: Counter
    seconds: float
    histogram: str
    notes: list[str] = field(default_factory=list)
    # The C engine's request loop: "io_uring" or "epoll" (several when workers differ); and why
    # a worker ran on epoll where io_uring was wanted. Empty for the other engines.
    io: str = ""
    io_why: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class LoadPlan:
    """What the load generator does at one point, in total over all its workers."""

    workload: str
    connections: int
    payload: int
    idle: int = 0
    rate: float = 0.0
    request_timeout_s: float = 2.0


@dataclass
class LoadResult:
    requests: int
    sent_in_window: int
    errors: Counter
    window_start: float
    window_end: float
    cpu_s: float
    worker_cpu_s: list[float]
    live_connections: int
    histograms: list[str]
    uncorrected: list[str]
    connect_histograms: list[str]
    # Peak resident memory of the load processes, summed (bytes); None when not reported.
    rss_bytes: int | None = None
    # Completions and errors per 100 ms from the scheduled start to the window's end, summed
    # over the workers, with the scheduled window (loadgen.timeline.merge's format); None when
    # the engine keeps none (Locust).
    timeline: dict[str, Any] | None = None
    # Connections the server closed or reset before their first echo, summed over the workers
    # (a subset of the reset and short_read errors; bench.measuring.shed); None when not reported.
    closed_before_echo: int | None = None

    @property
    def duration_s(self) -> float:
        return max(0.0, self.window_end - self.window_start)


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def worker_count(plan: LoadPlan, client_cpus: int) -> int:
    """Workers for `plan`: enough for the descriptors, and one per client CPU once there is
    enough work to share."""
    by_fds = -(-(plan.connections + plan.idle) // MAX_CONNECTIONS_PER_WORKER)
    # One worker per client CPU once there is enough work to share; never idle workers.
    by_cpus = min(client_cpus, plan.connections)
    return max(1, by_fds, by_cpus if plan.connections >= 100 else 1)


def split(total: int, parts: int) -> list[int]:
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


class LoadWorkers:
    """The workers of one point. Subclasses name the worker program (`argv`)."""

    engine = ""
    # More workers can be added when one was the bottleneck (bench.running.point.run_point).
    can_add_workers = True
    # Seconds the connect phase may take beyond the point's own allowance.
    extra_connect_timeout_s = 0.0

    def __init__(self, host: str, port: int, plan: LoadPlan, cpus: tuple[int, ...], workers: int):
        self.host, self.port, self.plan, self.cpus = host, port, plan, cpus
        self.workers = max(1, min(workers, plan.connections))
        self.active = split(plan.connections, self.workers)
        self.idle = split(plan.idle, self.workers)
        self.popens: list[subprocess.Popen] = []
        self.readers: list[MessageReader] = []
        self.errlogs: list[MessageReader] = []
        self.notes: list[str] = []
        # The schedule (CLOCK_MONOTONIC s): start, window start, window end; set by schedule().
        self.scheduled: tuple[float, float, float] | None = None

    @classmethod
    def plan_workers(cls, plan: LoadPlan, client_cpus: int, requested: int = 0) -> int:
        """Workers for `plan` on `client_cpus` CPUs (`requested` is Locust's option, unused here)."""
        return worker_count(plan, client_cpus)

    def argv(self, options: list[str]) -> list[str]:
        """The command line of one worker with these options."""
        raise NotImplementedError

    def start(self) -> None:
        plan = self.plan
        # Source addresses in 127.0.0.0/8 reach only a server on this host; churn rotates over
        # several whatever its count, for the ports its closed connections leave in TIME_WAIT.
        spread = 1
        if is_loopback(self.host):
            churn = plan.workload == "churn"
            spread = CHURN_ADDRESSES if churn else addresses_needed(plan.connections + plan.idle)
        first = 0
        for wid, (active, idle) in enumerate(zip(self.active, self.idle, strict=True)):
            args = ["--host", self.host, "--port", str(self.port), "--workload", plan.workload]
            args += ["--connections", str(active), "--idle", str(idle), "--payload", str(plan.payload)]
            args += ["--worker-id", str(wid), "--first-index", str(first), "--spread", str(spread)]
            args += ["--cpus", format_cpus(self.cpus), "--request-timeout", repr(plan.request_timeout_s)]
            if plan.rate:
                args += ["--rate", repr(plan.rate * active / plan.connections)]
            first += active + idle
            popen = spawn(self.argv(args))
            self.popens.append(popen)
            self.readers.append(MessageReader(popen.stdout, f"loadgen-{wid}"))
            self.errlogs.append(MessageReader(popen.stderr, f"loadgen-{wid}-err"))

    def _await(
        self, event: str, timeout: float, on_message: Callable[[list[dict[str, Any]]], None] | None = None
    ) -> list[dict[str, Any]]:
        """Each worker's next `event` message (in worker order); on_message(the ones so far) after
        each. Raises PointFailed when a worker exits or the timeout (s) passes first."""
        deadline = deadline_in(timeout)
        got: list[dict[str, Any]] = []
        for wid, reader in enumerate(self.readers):
            while True:
                message = reader.next(min(remaining(deadline), 0.25))
                if message is not None and message["event"] == event:
                    got.append(fold_counts(message))
                    if on_message is not None:
                        on_message(got)
                    break
                if message is None and self.popens[wid].poll() is not None and reader.closed.is_set():
                    tail = [line for line in self.errlogs[wid].tail if line.strip()]
                    raise PointFailed(
                        f"load worker {wid} exited with status {self.popens[wid].returncode}"
                        + (f": {tail[-1].strip()}" if tail else "")
                    )
                if remaining(deadline) <= 0:
                    raise PointFailed(f"load worker {wid} sent no '{event}' within {timeout:.0f} s")
        return got

    def wait_connected(self, timeout: float, progress: Callable[[int], None] | None = None) -> ConnectPhase:
        """Every worker's connect phase, merged; progress(connections open so far) as each
        worker reports (a worker reports once all of its connections are open)."""

        def counted(messages: list[dict[str, Any]]) -> None:
            if progress is not None:
                progress(sum(m["connected"] for m in messages))

        messages = self._await("connected", timeout, counted)
        errors: Counter = Counter()
        notes: list[str] = []
        for m in messages:
            errors.update(m["errors"])
            notes += m.get("notes", [])
        return ConnectPhase(
            connected=sum(m["connected"] for m in messages),
            errors=errors,
            seconds=max(m["seconds"] for m in messages),
            histogram=merge([m["histogram"] for m in messages]).encode().decode("ascii"),
            notes=notes,
            io=", ".join(sorted({m["io"] for m in messages if m.get("io")})),
            io_why=sorted({m["io_why"] for m in messages if m.get("io_why")}),
        )

    def schedule(self, warmup_s: float, duration_s: float) -> tuple[float, float]:
        """Every worker gets the same absolute window on the shared monotonic clock."""
        start_at = time.monotonic() + 0.05
        window = (start_at + warmup_s, start_at + warmup_s + duration_s)
        message = {
            "event": "schedule",
            "start_at": start_at,
            "window_start": window[0],
            "window_end": window[1],
        }
        self.scheduled = (start_at, *window)
        for wid, popen in enumerate(self.popens):
            try:
                control.send(message, popen.stdin)
            except (BrokenPipeError, ValueError) as exc:
                raise PointFailed(f"load worker {wid} is gone before its schedule ({exc})") from exc
        return window

    def collect(self, timeout: float) -> LoadResult:
        messages = self._await("result", timeout)
        measured = [m for m in messages if m["window_end"] > m["window_start"]] or messages
        errors: Counter = Counter()
        for m in messages:
            errors.update(m["errors"])
        worker_cpu = [m["cpu_user_s"] + m["cpu_sys_s"] for m in messages]
        return LoadResult(
            requests=sum(m["requests"] for m in messages),
            sent_in_window=sum(m["sent_in_window"] for m in messages),
            errors=errors,
            # A worker whose connections all died before the window reports an empty one at
            # that moment; it must not stretch the others' window back into the warm-up.
            window_start=min(m["window_start"] for m in measured),
            window_end=max(m["window_end"] for m in measured),
            cpu_s=sum(worker_cpu),
            worker_cpu_s=worker_cpu,
            live_connections=sum(m["live_connections"] for m in messages),
            histograms=[m["histogram"] for m in messages],
            uncorrected=[m["uncorrected"] for m in messages if m.get("uncorrected")],
            connect_histograms=[m["connect_histogram"] for m in messages],
            rss_bytes=sum(m["max_rss_bytes"] for m in messages)
            if all(m.get("max_rss_bytes", -1) >= 0 for m in messages)
            else None,
            timeline=self._timeline(messages),
            closed_before_echo=sum(m["closed_before_echo"] for m in messages)
            if all(isinstance(m.get("closed_before_echo"), int) for m in messages)
            else None,
        )

    def _timeline(self, messages: list[dict[str, Any]]) -> dict[str, Any] | None:
        """The workers' timelines summed bin by bin (they share the schedule's start)."""
        if self.scheduled is None:
            return None
        try:
            return merge_timelines([m.get("timeline") for m in messages], *self.scheduled)
        except ValueError as exc:
            # The timeline explains a point; it must not cost the point its measurements (its
            # `stability` stays empty).
            print(f"warning: no timeline for this point: {exc}", file=sys.stderr, flush=True)
            return None

    def pids(self) -> list[int]:
        return [popen.pid for popen in self.popens]

    def stop(self) -> None:
        # EOF on stdin releases a worker that has sent its result (loadgen.control).
        for popen in self.popens:
            try:
                if popen.stdin is not None:
                    popen.stdin.close()
            except OSError:
                pass
        for popen in self.popens:
            terminate_tree(popen, grace_s=1.0)

    def __enter__(self) -> LoadWorkers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class PythonWorkers(LoadWorkers):
    """`--engine python`: `python -m loadgen` workers, the portable engine and a cross-check."""

    engine = "python"

    def argv(self, options: list[str]) -> list[str]:
        return [sys.executable, "-m", "loadgen", *options]


# The C worker's request loop: auto (io_uring where the kernel has it, else epoll), epoll or
# io_uring (a worker that cannot set it up then fails). For comparing the two and for tests.
C_IO_ENV = "IOMODEL_C_IO"
C_IO_CHOICES = ("auto", "epoll", "io_uring")


def c_io_choice() -> str:
    """The C worker's --io, from $IOMODEL_C_IO (default auto). Raises UsageError for another value."""
    io = os.environ.get(C_IO_ENV, "auto")
    if io not in C_IO_CHOICES:
        raise UsageError(f"{C_IO_ENV} is one of {', '.join(C_IO_CHOICES)}, not {io!r}")
    return io


class CWorkers(LoadWorkers):
    """`--engine c`: the compiled worker (loadgen/native/worker.c), built on first use."""

    engine = "c"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        from loadgen.c_worker import worker_binary

        binary, reason = worker_binary()
        if binary is None:
            raise PointFailed(f"the C load engine cannot be built: {reason}")
        self.binary = binary
        super().__init__(*args, **kwargs)

    def argv(self, options: list[str]) -> list[str]:
        return [str(self.binary), *options, "--io", c_io_choice()]
