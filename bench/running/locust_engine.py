"""The Locust engine (`bench run --engine locust`): the built-in engine's points, driven by a Locust
master and its worker processes running the raw-TCP echo user.

LocustWorkers has the interface of bench.running.load_workers.LoadWorkers (start, wait_connected,
schedule, collect, stop, context manager) and returns the same ConnectPhase and LoadResult:

  start()           a master (`locust --master`, headless, or with its web UI on 127.0.0.1 when
                    `ui`) on 127.0.0.1 and a port of its own choosing, then `workers` local
                    `locust --worker` processes, every one pinned to the client CPUs. One Locust
                    user is one connection; all of them are spawned at once.
  wait_connected()  returns when every user holds its connection (the workers report their
                    counts to the master, which tells the bench), or when the count stopped
                    growing: connect errors by kind as the echo user counted them.
  schedule()        the window's absolute CLOCK_MONOTONIC times go to the master on its stdin and
                    from it to every worker as a Locust custom message; each worker opens and
                    closes its tally at those times (loadgen/locust_window.py).
  collect()         every worker's requests, errors, window, CPU and microsecond HdrHistogram,
                    shipped to the master with a custom message and on to the bench as JSON.
  stop()            the master and the workers by PID; nothing is left behind.

Remote workers (expect_remote_workers > 0): the master binds the server's address (`host`, which
the remote hosts must reach anyway) at Locust's usual port 5557 and waits for that many workers
beyond its own before any user starts; `notes` holds the command to run on each remote host
(see loadgen/locust_bench_user.py).

Only the closed loop: Locust's users run as fast as their round trips let them, so the open loop,
idle connections and churn stay with the built-in engine.

Locust is never imported here: it monkey-patches the standard library of whatever imports it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from bench.errors import PointFailed
from bench.running.load_workers import MAX_CONNECTIONS_PER_WORKER, ConnectPhase, LoadPlan, LoadResult
from bench.running.pipes import MessageReader, deadline_in, remaining
from bench.running.processes import terminate_tree
from childproc import format_cpus
from loadgen import control
from loadgen.histogram import encode, new_histogram

PROJECT_ROOT = Path(__file__).resolve().parents[2]
LOCUSTFILE = PROJECT_ROOT / "loadgen" / "locust_bench_user.py"
LOOPBACK = "127.0.0.1"
# Seconds the connect phase waits for remote workers to be started by hand and join.
REMOTE_JOIN_S = 300
# Remote workers must be told the port before the master exists: Locust's own default.
REMOTE_MASTER_PORT = 5557
ALL_INTERFACES = "0.0.0.0"
# Locust's import and the master's socket take a second or two; a loaded host, more.
MASTER_START_TIMEOUT_S = 30.0
# The window's start is this far ahead of the schedule, so that the message reaches every worker
# (stdin -> master -> ZeroMQ) before the warm-up's end, even with a warm-up of 0.
SCHEDULE_LEAD_S = 0.1
MASTER_STOP_GRACE_S = 5.0
WORKER_STOP_GRACE_S = 2.0
LOG_TAIL_BYTES = 8192
EVENTS_FD_ENV = "IOMODEL_BENCH_EVENTS_FD"
CPUS_ENV = "IOMODEL_BENCH_CPUS"
DIE_WITH_PARENT_ENV = "IOMODEL_BENCH_DIE_WITH_PARENT"


def locust_blocker(plan: LoadPlan) -> str | None:
    """Why the Locust engine cannot run this plan, or None; a preflight can make it a skipped row."""
    if plan.workload != "closed":
        return f"the Locust engine runs closed-loop points only, not workload '{plan.workload}'"
    if plan.idle:
        return "the Locust engine holds no idle connections (one Locust user is one active connection)"
    if plan.rate:
        return "the Locust engine has no target rate (closed loop only)"
    if importlib.util.find_spec("locust") is None:
        return "locust is not installed"
    return None


def remote_worker_command(master_host: str, master_port: int = REMOTE_MASTER_PORT) -> str:
    return f"locust -f {LOCUSTFILE} --worker --master-host {master_host} --master-port {master_port}"


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port free on `host` right now (for the web UI, which cannot report one it chose)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class _Process:
    """One Locust process of ours: its Popen and its output, kept in an unnamed file (never a
    pipe, which a chatty Locust could fill and block on)."""

    def __init__(self, name: str, popen: subprocess.Popen, log: IO[bytes]) -> None:
        self.name, self.popen, self.log = name, popen, log

    def tail(self) -> str:
        """The last meaningful line of its output, for a failure's reason."""
        try:
            size = os.fstat(self.log.fileno()).st_size
            # pread: the child shares this file's offset, which a seek would move under it.
            text = os.pread(self.log.fileno(), LOG_TAIL_BYTES, max(size - LOG_TAIL_BYTES, 0)).decode(errors="replace")
        except (OSError, ValueError):
            return ""
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        return lines[-1] if lines else ""

    def exited(self) -> str | None:
        if self.popen.poll() is None:
            return None
        tail = self.tail()
        return f"{self.name} exited with status {self.popen.returncode}" + (f": {tail}" if tail else "")


class LocustWorkers:
    engine = "locust"
    # Locust's worker count is the user's choice (--locust-workers), not adjusted per point.
    can_add_workers = False

    def __init__(
        self,
        host: str,
        port: int,
        plan: LoadPlan,
        cpus: tuple[int, ...],
        workers: int,
        ui: bool = False,
        expect_remote_workers: int = 0,
    ) -> None:
        if (reason := locust_blocker(plan)) is not None:
            raise PointFailed(reason)
        self.host, self.port, self.plan, self.cpus, self.ui = host, port, plan, cpus, ui
        self.remote = max(0, expect_remote_workers)
        # Never a worker without a user (Locust would give it none); at least one on this host.
        self.workers = max(1, min(workers, plan.connections))
        if not self.remote and -(-plan.connections // self.workers) > MAX_CONNECTIONS_PER_WORKER:
            raise PointFailed(
                f"{plan.connections} connections over {self.workers} Locust workers is more than "
                f"{MAX_CONNECTIONS_PER_WORKER} per process (RLIMIT_NOFILE): use more --locust-workers"
            )
        # Remote workers must reach the master from other hosts: then (and only then, on request)
        # it listens on every interface; local workers always use loopback.
        self.master_host = ALL_INTERFACES if self.remote else LOOPBACK
        self.master_port = 0
        self.web_port = 0
        self.notes: list[str] = []
        self.master: _Process | None = None
        self.local: list[_Process] = []
        self.events: MessageReader | None = None
        self._events_stream: IO[str] | None = None
        self.status: dict[str, Any] = {}
        self._stopped = False
        # A person has to start the remote workers; give them time.
        self.extra_connect_timeout_s = REMOTE_JOIN_S if self.remote else 0.0

    @classmethod
    def plan_workers(cls, plan: LoadPlan, client_cpus: int, requested: int = 0) -> int:
        """--locust-workers when given, else one local worker per client CPU."""
        return requested or client_cpus

    # -- start -----------------------------------------------------------------------------------

    def start(self) -> None:
        try:
            self._start_master()
            for wid in range(self.workers):
                args = ["--worker", "--master-host", LOOPBACK, "--master-port", str(self.master_port)]
                self.local.append(self._spawn(f"Locust worker {wid}", args))
        except BaseException:
            self.stop()
            raise

    def _start_master(self) -> None:
        plan = self.plan
        users = str(plan.connections)
        args = [
            "--master", "--master-bind-host", self.master_host,
            "--master-bind-port", str(REMOTE_MASTER_PORT if self.remote else 0),
            "--expect-workers", str(self.workers + self.remote),
            "--host", f"tcp://{self.host}:{self.port}",
            # Every user in Locust's first dispatch: the connect phase is not a ramp.
            "-u", users, "-r", users, "--stop-timeout", "0",
            "--echo-payload", str(plan.payload), "--echo-bench-schedule",
        ]  # fmt: skip
        if self.ui:
            self.web_port = free_port()
            args += ["--autostart", "--web-host", LOOPBACK, "--web-port", str(self.web_port)]
        else:
            args += ["--headless", "--only-summary"]
        read_fd, write_fd = os.pipe()
        try:
            self.master = self._spawn("Locust master", args, stdin=subprocess.PIPE, events_fd=write_fd)
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            # Ours closed, the master's copy is the only writer: its exit is EOF here.
            os.close(write_fd)
        self._events_stream = os.fdopen(read_fd, "r", encoding="utf-8")
        self.events = MessageReader(self._events_stream, "locust-master-events")
        hello = self._await("master", MASTER_START_TIMEOUT_S, check_workers=False)
        self.master_port = int(hello["port"])
        if self.ui:
            self.notes.append(f"Locust web UI: http://{LOOPBACK}:{self.web_port}")
        if self.remote:
            command = remote_worker_command("<address of this host>", self.master_port)
            self.notes.append(f"waiting for {self.remote} remote Locust worker(s): {command}")

    def _spawn(
        self, name: str, args: list[str], stdin: int = subprocess.DEVNULL, events_fd: int | None = None
    ) -> _Process:
        # Locust takes option defaults from LOCUST_* variables: the bench's run is defined by its
        # own arguments alone.
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("LOCUST_")},
            CPUS_ENV: format_cpus(self.cpus),
            DIE_WITH_PARENT_ENV: "1",
            # The loadgen package from this checkout, also where Locust changes sys.path.
            "PYTHONPATH": os.pathsep.join(p for p in (str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")) if p),
        }
        env.pop(EVENTS_FD_ENV, None)
        if events_fd is not None:
            env[EVENTS_FD_ENV] = str(events_fd)
        cmd = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--loglevel", "WARNING", *args]
        log = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the process
        try:
            popen = subprocess.Popen(
                cmd,
                stdin=stdin,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Its own session: a terminal's Ctrl-C reaches only bench, which stops it by PID.
                start_new_session=True,
                cwd=PROJECT_ROOT,
                env=env,
                pass_fds=(events_fd,) if events_fd is not None else (),
                text=True,
            )
        except BaseException:
            log.close()
            raise
        return _Process(name, popen, log)

    # -- events from the master --------------------------------------------------------------------

    def _await(self, event: str, timeout: float, check_workers: bool = True) -> dict[str, Any]:
        assert self.events is not None and self.master is not None
        deadline = deadline_in(timeout)
        while True:
            message = self.events.next(min(remaining(deadline), 0.25))
            if message is not None:
                kind = message["event"]
                if kind == event:
                    return message
                if kind == "failed":
                    raise PointFailed(str(message.get("reason", "Locust master reported a failure")))
                if kind == "status":
                    self.status = message
                continue
            if (reason := self.master.exited()) is not None and self.events.closed.is_set():
                raise PointFailed(reason)
            if check_workers:
                for proc in self.local:
                    if (reason := proc.exited()) is not None:
                        raise PointFailed(reason)
            if remaining(deadline) <= 0:
                raise PointFailed(f"Locust master sent no '{event}' within {timeout:.0f} s ({self._progress()})")

    def _progress(self) -> str:
        s = self.status
        if not s:
            return "no status from the master"
        joined = f"{s['workers_ready']} of {self.workers + self.remote} workers joined"
        if not s.get("started"):
            return joined
        errors = " ".join(f"{k}={v}" for k, v in sorted(s["connect_errors"].items()))
        return f"{joined}, {s['users']} of {s['target']} users connected" + (f", {errors}" if errors else "")

    # -- the LoadWorkers interface -----------------------------------------------------------------

    def wait_connected(self, timeout: float, progress: Callable[[int], None] | None = None) -> ConnectPhase:
        """Locust's users' connections, once all are open (the master reports them together, so
        progress(n) is called once, with the total)."""
        message = self._await("connected", timeout)
        if progress is not None:
            progress(int(message["connected"]))
        notes = []
        if message.get("stalled"):
            notes.append(f"connections stopped growing at {message['connected']} of {message['target']}")
        remote = [w for w in message["workers"] if not w["same_host"]]
        if remote:
            notes.append(f"{len(remote)} Locust worker(s) on other hosts")
        return ConnectPhase(
            connected=int(message["connected"]),
            errors=Counter(message["errors"]),
            seconds=float(message["seconds"]),
            # The echo user does not time its connects.
            histogram=encode(new_histogram()),
            notes=notes,
        )

    def schedule(self, warmup_s: float, duration_s: float) -> tuple[float, float]:
        """The same absolute window on the shared monotonic clock for every worker."""
        assert self.master is not None
        start_at = time.monotonic() + SCHEDULE_LEAD_S
        window = (start_at + warmup_s, start_at + warmup_s + duration_s)
        try:
            control.send(
                {"event": "schedule", "window_start": window[0], "window_end": window[1]}, self.master.popen.stdin
            )
        except (BrokenPipeError, ValueError) as exc:
            raise PointFailed(f"Locust master is gone before the schedule ({exc})") from exc
        # Acknowledged once the master has passed it on to every worker it has.
        self._await("scheduled", 10.0)
        return window

    def collect(self, timeout: float) -> LoadResult:
        message = self._await("result", timeout)
        rows: list[dict[str, Any]] = message["workers"]
        if not rows:
            raise PointFailed("no Locust worker was running when the window was scheduled")
        errors: Counter = Counter()
        for row in rows:
            errors.update(row["errors"])
        worker_cpu = [row["cpu_user_s"] + row["cpu_sys_s"] for row in rows]
        master_cpu = message["master_cpu_user_s"] + message["master_cpu_sys_s"]
        # CPU spent on this host: the master's and the local workers' (a remote worker's CPU is
        # no part of this host's /proc/stat, which the interference check compares it with).
        here = master_cpu + sum(cpu for row, cpu in zip(rows, worker_cpu, strict=True) if row["same_host"])
        requests = sum(row["requests"] for row in rows)
        return LoadResult(
            requests=requests,
            # Closed loop: a send follows every completion, so the sends in the window are the
            # completions (Locust's user does not count sends).
            sent_in_window=requests,
            errors=errors,
            window_start=min(row["window_start"] for row in rows),
            window_end=max(row["window_end"] for row in rows),
            cpu_s=here,
            worker_cpu_s=worker_cpu,
            live_connections=sum(row["users_at_close"] for row in rows),
            histograms=[row["histogram"] for row in rows],
            uncorrected=[],
            connect_histograms=[],
        )

    def pids(self) -> list[int]:
        """The processes this engine started on this host (master first)."""
        return [p.popen.pid for p in ([self.master] if self.master else []) + self.local]

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        # The master first: on SIGTERM Locust sends its workers "quit", and they leave cleanly.
        if self.master is not None:
            terminate_tree(self.master.popen, grace_s=MASTER_STOP_GRACE_S)
        for proc in self.local:
            if proc.popen.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.popen.send_signal(signal.SIGTERM)
        for proc in self.local:
            terminate_tree(proc.popen, grace_s=WORKER_STOP_GRACE_S)
        for proc in [*([self.master] if self.master else []), *self.local]:
            proc.log.close()
        if self.events is not None and self._events_stream is not None:
            # Every writer has exited, so the reader has met EOF (or will at once).
            self.events.wait_closed(1.0)
            self._events_stream.close()

    def __enter__(self) -> LocustWorkers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
